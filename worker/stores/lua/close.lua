--! keys: jobs active runs permits deliveries delayed due unknown accounts parked parked_since chat
--! args: now id run ending account message at front wait_prefix
--! rest: writes
--! uses: clock schedule release writes
-- A run of a job ends (tasks/archive/endings.py), in one step with whatever the caller writes
-- beside it (`writes`: the outcome's metrics, a dead letter), and only once: a run that no
-- longer holds the job's lease (this very call retried after a lost reply, or a run whose lease
-- another one took over) changes nothing. `run` empty: no run ends it (the janitor or a probe
-- ending a job that waits), which only happens while no live run holds it.
--   ending 'final': the job is over: it leaves the store and releases its chat;
--   ending 'wait':  it waits again, with `message` (its history updated): at the front (`front`
--                   '1') or back of its account's wait list, or until `at` (µs) in the delayed set;
--   ending 'park':  it waits behind its account's open circuit (at the front: a probe).
local now = clock_us(ARG.now)
local owner = redis.call('HGET', KEY.runs, ARG.id)
if ARG.run ~= '' then
  if owner ~= ARG.run then return 0 end
else
  if redis.call('HEXISTS', KEY.jobs, ARG.id) == 0 then return 0 end
  if owner and tonumber(redis.call('ZSCORE', KEY.active, ARG.id) or '0') > now then return 0 end
end
redis.call('HDEL', KEY.runs, ARG.id)
redis.call('ZREM', KEY.active, ARG.id)
redis.call('HDEL', KEY.permits, ARG.id)
if ARG.ending == 'final' then
  redis.call('HDEL', KEY.jobs, ARG.id)
  redis.call('HDEL', KEY.parked_since, ARG.id)
  redis.call('DEL', KEY.deliveries)
  release(KEY.chat, ARG.id)
else
  if ARG.run ~= '' then redis.call('HDEL', KEY.deliveries, ARG.run) end
  redis.call('HSET', KEY.jobs, ARG.id, ARG.account .. '\n' .. ARG.message)
  if ARG.ending == 'park' then
    redis.call('HSETNX', KEY.parked_since, ARG.id, string.format('%d', now))
    if ARG.front == '1' then
      redis.call('LPUSH', KEY.parked, ARG.id)
    else
      redis.call('RPUSH', KEY.parked, ARG.id)
    end
  elseif tonumber(ARG.at) > now then
    redis.call('ZADD', KEY.delayed, ARG.at, ARG.account .. '|' .. ARG.id)
  else
    if ARG.front == '1' then
      redis.call('LPUSH', ARG.wait_prefix .. ARG.account, ARG.id)
    else
      redis.call('RPUSH', ARG.wait_prefix .. ARG.account, ARG.id)
    end
    schedule_account(ARG.account, now, KEY.due, KEY.unknown, KEY.accounts)
  end
end
apply_writes(REST, 1)
return 1
