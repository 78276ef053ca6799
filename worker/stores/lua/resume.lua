--! keys: circuit probe paused accounts due unknown parked parked_since
--! args: now account wait_prefix wake
--! uses: clock schedule
-- An account answers again (worker/stores/circuit.py): its circuit closes and every parked job
-- goes back to the front of its wait list, oldest first, forgetting when it was parked (a later
-- pause counts from zero). Returns how many were released.
local now = clock_us(ARG.now)
redis.call('DEL', KEY.circuit, KEY.probe)
redis.call('ZREM', KEY.paused, ARG.account)
local text = redis.call('HGET', KEY.accounts, ARG.account)
if text then
  local conf = cjson.decode(text)
  if conf.p then
    conf.p = nil
    redis.call('HSET', KEY.accounts, ARG.account, cjson.encode(conf))
  end
end
local ids = redis.call('LRANGE', KEY.parked, 0, -1)
redis.call('DEL', KEY.parked)
local wait_key = ARG.wait_prefix .. ARG.account
for i = #ids, 1, -1 do redis.call('LPUSH', wait_key, ids[i]) end
for _, id in ipairs(ids) do redis.call('HDEL', KEY.parked_since, id) end
if redis.call('LLEN', wait_key) > 0 then
  redis.call('ZREM', KEY.due, ARG.account)
  schedule_account(ARG.account, now, KEY.due, KEY.unknown, KEY.accounts)
  redis.call('PUBLISH', ARG.wake, '1')
end
return #ids
