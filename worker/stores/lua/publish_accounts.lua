--! keys: accounts due unknown
--! args: now wait_prefix wake
--! rest: entries
--! uses: clock
-- A worker publishes the accounts its file names (worker/dispatch/registry.py): pairs of account
-- and JSON (its limits, for dispatch.lua); an empty JSON withdraws the account. A paused
-- account keeps its next probe time (`p`, written by circuit_trip.lua). An account that had jobs
-- waiting as unknown becomes due.
local now = clock_us(ARG.now)
local woken = false
for i = 1, #REST, 2 do
  local account, conf = REST[i], REST[i + 1]
  if conf == '' then
    redis.call('HDEL', KEY.accounts, account)
  else
    local before = redis.call('HGET', KEY.accounts, account)
    if before then
      local paused = cjson.decode(before).p
      if paused then
        local merged = cjson.decode(conf)
        merged.p = paused
        conf = cjson.encode(merged)
      end
    end
    redis.call('HSET', KEY.accounts, account, conf)
    if redis.call('ZREM', KEY.unknown, account) == 1 then
      if redis.call('LLEN', ARG.wait_prefix .. account) > 0 then
        redis.call('ZADD', KEY.due, 'NX', now, account)
        woken = true
      end
    end
  end
end
if woken then redis.call('PUBLISH', ARG.wake, '1') end
return #REST / 2
