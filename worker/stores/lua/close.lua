--! keys: jobs active delayed due unknown accounts parked parked_since chat from result
--! args: now id member ending account record delay_us front parked wait_prefix result result_ttl wake
--! rest: writes
--! uses: clock schedule release writes
-- A run of a job ends (worker/stores/endings.py), in one step with the job's result for Celery's
-- result backend (`result` at the key `result`, published like Celery's own backend does) and
-- whatever the caller writes beside it (`writes`: metrics, a dead letter), and only once: a run
-- whose lease member is no longer active (this very call retried after a lost reply, or a run
-- whose lease ran out and was given to another) changes nothing and returns 0. `member` empty:
-- no run ends it (the janitor ending a job that waits), which it may only if the job is still in
-- the list `from`, where it waited.
--   ending 'final': the job is over: it leaves the store and releases its chat (`chat`), and a
--                   job that was parked (`parked` '1') its parked time;
--   ending 'wait':  it waits again as `record` (its history updated): after `delay_us` in the
--                   delayed set, or at the front (`front` '1') or back of its account's wait list;
--   ending 'park':  it waits behind its account's open circuit (at the front: a probe).
if ARG.member ~= '' then
  if redis.call('ZREM', KEY.active, ARG.member) == 0 then return 0 end
elseif redis.call('LREM', KEY.from, 1, ARG.id) == 0 then
  return 0
end
if ARG.ending == 'final' then
  redis.call('HDEL', KEY.jobs, ARG.id)
  if ARG.parked == '1' then redis.call('HDEL', KEY.parked_since, ARG.id) end
  release(KEY.chat, ARG.id)
else
  local now = clock_us(ARG.now)
  redis.call('HSET', KEY.jobs, ARG.id, ARG.record)
  if ARG.ending == 'park' then
    redis.call('HSETNX', KEY.parked_since, ARG.id, string.format('%d', now))
    redis.call(ARG.front == '1' and 'LPUSH' or 'RPUSH', KEY.parked, ARG.id)
  elseif tonumber(ARG.delay_us) > 0 then
    schedule_delayed(KEY.delayed, KEY.due, ARG.account, ARG.id, now + tonumber(ARG.delay_us))
  else
    redis.call(ARG.front == '1' and 'LPUSH' or 'RPUSH', ARG.wait_prefix .. ARG.account, ARG.id)
    schedule_account(ARG.account, now, KEY.due, KEY.unknown, KEY.accounts)
    redis.call('PUBLISH', ARG.wake, '1')
  end
end
if ARG.result ~= '' then
  redis.call('SET', KEY.result, ARG.result, 'EX', ARG.result_ttl)
  redis.call('PUBLISH', KEY.result, ARG.result)
end
apply_writes(REST)
return 1
