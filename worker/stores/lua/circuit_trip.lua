--! keys: circuit probe paused accounts due
--! args: now account reason detail cooldown cooldown_max probing
--! uses: clock
-- An account answered an account problem (worker/stores/circuit.py): its circuit opens, or a
-- failed probe (`probing` '1') keeps it open and doubles the cooldown. The next probe's time goes
-- into the account's entry of the accounts hash, where the dispatcher reads it with its limits,
-- and the account is due then. Jobs already in flight when it opened change nothing. Returns the
-- seconds to the next probe. Times in the circuit hash: seconds. The account is due at once, so
-- that the dispatcher parks its waiting jobs, and then again at the probe.
local now = clock_us(ARG.now) / 1000000
local open = redis.call('HGET', KEY.circuit, 'state')
local text = redis.call('HGET', KEY.accounts, ARG.account)
local conf = text and cjson.decode(text)
if open and ARG.probing ~= '1' then
  local probe_at = tonumber(redis.call('HGET', KEY.circuit, 'probe_at'))
  if conf and not conf.p then
    -- Its entry was published again while it was paused (withdrawn and re-added): the
    -- dispatcher must know it is paused.
    conf.p = math.floor(probe_at * 1000000)
    redis.call('HSET', KEY.accounts, ARG.account, cjson.encode(conf))
  end
  return tostring(math.max(probe_at - now, 0))
end
local trips = redis.call('HINCRBY', KEY.circuit, 'trips', 1)
local cooldown = math.min(tonumber(ARG.cooldown) * 2 ^ (trips - 1), tonumber(ARG.cooldown_max))
local probe_at = now + cooldown
redis.call('HSET', KEY.circuit, 'state', 'open', 'reason', ARG.reason, 'detail', ARG.detail,
           'probe_at', string.format('%.6f', probe_at))
if not open then
  redis.call('HSET', KEY.circuit, 'opened_at', string.format('%.6f', now))
  redis.call('ZADD', KEY.paused, now, ARG.account)
end
redis.call('DEL', KEY.probe)
if conf then
  conf.p = math.floor(probe_at * 1000000)
  redis.call('HSET', KEY.accounts, ARG.account, cjson.encode(conf))
  redis.call('ZADD', KEY.due, math.floor(now * 1000000), ARG.account)
end
return tostring(cooldown)
