--! keys: accounts due unknown
--! args: now wait_prefix limiter_prefix wake
--! rest: entries
--! uses: clock
-- A worker publishes the accounts its file names (worker/dispatch/registry.py): pairs of JSON
-- (limits, for dispatch.lua, each naming its provider method) and the accounts that have them,
-- one name a line; an empty JSON withdraws the accounts. Each account's entry is stored with its
-- limits' keys in place of the methods (Keys.limiter's names), as dispatch.lua reads them. A
-- paused account keeps its next probe time (`p`, written by circuit_trip.lua). An account that
-- had jobs waiting as unknown becomes due.
local now = clock_us(ARG.now)
local woken = false
-- No account waits as unknown, as a rule: then each new account costs one command.
local unknown = redis.call('ZCARD', KEY.unknown) > 0
local function publish(account, conf)
  if conf == '' then
    redis.call('HDEL', KEY.accounts, account)
    return
  end
  if redis.call('HSETNX', KEY.accounts, account, conf) == 0 then
    local before = redis.call('HGET', KEY.accounts, account)
    if before ~= conf then
      local paused = cjson.decode(before).p
      if paused then
        local merged = cjson.decode(conf)
        merged.p = paused
        conf = cjson.encode(merged)
      end
      redis.call('HSET', KEY.accounts, account, conf)
    end
  end
  if unknown and redis.call('ZREM', KEY.unknown, account) == 1 then
    if redis.call('LLEN', ARG.wait_prefix .. account) > 0 then
      redis.call('ZADD', KEY.due, 'NX', now, account)
      woken = true
    end
  end
end
for i = 1, #REST, 2 do
  local entry, methods = nil, {}
  if REST[i] ~= '' then
    entry = cjson.decode(REST[i])
    for task, limit in pairs(entry.l) do methods[task] = limit[1] end
  end
  for account in string.gmatch(REST[i + 1], '[^\n]+') do
    local conf = ''
    if entry then
      for task, limit in pairs(entry.l) do
        limit[1] = ARG.limiter_prefix .. account .. ':' .. methods[task]
      end
      conf = cjson.encode(entry)
    end
    publish(account, conf)
  end
end
if woken then redis.call('PUBLISH', ARG.wake, '1') end
