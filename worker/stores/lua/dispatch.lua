--! keys: due delayed jobs active runs permits unknown accounts parked_since ready
--! args: now budget lead_us lease_us window_us wait_prefix parked_prefix promote_max
--! uses: clock gcra schedule record circuit
-- Hand out up to `budget` jobs that may run now, round-robin between accounts in the order of
-- their next permitted time, each behind a permit of its account's limiter (reserved here, used
-- by the run: the `permits` hash). `ready` set (the broker is this Redis): the free slots of
-- the caller's node less what already waits there, and the messages are pushed here, in the same
-- step. Otherwise the caller pushes the returned messages itself.
-- Returns {dispatched, µs until something is next due (-1: nothing), messages...}.
local now = clock_us(ARG.now)
local lead, lease = tonumber(ARG.lead_us), tonumber(ARG.lease_us)

-- Delayed jobs whose time has come go to the front of their account's wait list: they have
-- waited their turn already.
local ripe = redis.call('ZRANGE', KEY.delayed, '-inf', now, 'BYSCORE', 'LIMIT', 0,
                        tonumber(ARG.promote_max))
for _, member in ipairs(ripe) do
  local cut = string.find(member, '|', 1, true)
  local account = string.sub(member, 1, cut - 1)
  redis.call('ZREM', KEY.delayed, member)
  redis.call('LPUSH', ARG.wait_prefix .. account, string.sub(member, cut + 1))
  schedule_account(account, now, KEY.due, KEY.unknown, KEY.accounts)
end

local budget = tonumber(ARG.budget)
if KEY.ready ~= '' then budget = budget - redis.call('LLEN', KEY.ready) end

-- The next id of a wait list that can run, dropping leftovers: ids whose job has ended, or that
-- a live run or a dispatch already holds.
local function next_runnable(wait_key)
  while true do
    local id = redis.call('LINDEX', wait_key, 0)
    if not id then return nil end
    if redis.call('HEXISTS', KEY.jobs, id) == 1
       and tonumber(redis.call('ZSCORE', KEY.active, id) or '0') <= now then
      return id
    end
    redis.call('LPOP', wait_key)
  end
end

local messages = {}
local steps = 0
while #messages < budget and steps < 1000 do
  steps = steps + 1
  local top = redis.call('ZRANGE', KEY.due, 0, 0, 'WITHSCORES')
  if #top == 0 or tonumber(top[2]) > now + lead then break end
  local account = top[1]
  local wait_key = ARG.wait_prefix .. account
  local conf = nil
  if account ~= '*' then
    local text = redis.call('HGET', KEY.accounts, account)
    if text then conf = cjson.decode(text) end
  end
  if account ~= '*' and not conf then
    -- No worker knows this account (any more): its jobs wait among the unknown ones.
    redis.call('ZREM', KEY.due, account)
    redis.call('ZADD', KEY.unknown, 'NX', now, account)
  elseif conf and circuit_paused(conf.circuit, conf.probe, now) then
    -- Its circuit is open: the waiting jobs join the parked ones (a probe releases them), a
    -- thousand at a time so that no call of this script runs long.
    local parked_key = ARG.parked_prefix .. account
    for _ = 1, 1000 do
      local id = redis.call('LPOP', wait_key)
      if not id then break end
      if redis.call('HEXISTS', KEY.jobs, id) == 1 then
        redis.call('RPUSH', parked_key, id)
        redis.call('HSETNX', KEY.parked_since, id, string.format('%d', now))
      end
    end
    if redis.call('LLEN', wait_key) == 0 then redis.call('ZREM', KEY.due, account) end
  else
    local id = next_runnable(wait_key)
    if not id then
      redis.call('ZREM', KEY.due, account)
    else
      local granted, slot = true, now
      if conf then
        granted, slot = gcra_acquire(conf.tat, conf.stats, conf.recent, conf.interval, lead,
                                     tonumber(ARG.window_us), now)
      end
      if not granted then
        redis.call('ZADD', KEY.due, slot, account)  -- back when its next permit is near
      else
        redis.call('LPOP', wait_key)
        local _, message = record_parts(redis.call('HGET', KEY.jobs, id))
        -- A fresh delivery tag for each dispatch: kombu keys its unacknowledged messages by it.
        local a, b = string.find(message, '"@TAG@"', 1, true)
        if a then
          message = string.sub(message, 1, a) .. id .. '.' .. string.format('%d', now)
                    .. string.sub(message, b)
        end
        redis.call('ZADD', KEY.active, now + lease, id)
        redis.call('HDEL', KEY.runs, id)
        if conf then redis.call('HSET', KEY.permits, id, string.format('%d', slot)) end
        messages[#messages + 1] = message
        if redis.call('LLEN', wait_key) > 0 then
          local next_due = now
          if conf then next_due = slot + tonumber(conf.interval) end
          redis.call('ZADD', KEY.due, next_due, account)
        else
          redis.call('ZREM', KEY.due, account)
        end
      end
    end
  end
end

-- When to look again: now if work is due and only the budget stopped us, else at the next due
-- account (less the lead) or the next delayed job.
local next_in = -1
local first = redis.call('ZRANGE', KEY.due, 0, 0, 'WITHSCORES')
if #first > 0 then next_in = math.max(0, tonumber(first[2]) - lead - now) end
local delayed = redis.call('ZRANGE', KEY.delayed, 0, 0, 'WITHSCORES')
if #delayed > 0 then
  local wait = math.max(0, tonumber(delayed[2]) - now)
  if next_in < 0 or wait < next_in then next_in = wait end
end
if KEY.ready ~= '' then
  for _, message in ipairs(messages) do redis.call('LPUSH', KEY.ready, message) end
  return {#messages, next_in}
end
return {#messages, next_in, unpack(messages)}
