--! keys: circuit probe chain paused
--! args: now account reason detail cooldown cooldown_max probing token
--! uses: clock
-- An account answered an account problem (worker/stores/circuit.py). Opens a closed circuit and marks a
-- probe chain as started (the caller sends its first task); a failed probe (`probing` '1') keeps
-- it open and doubles the cooldown (the chain that released the probe wakes up in time for the
-- next). Jobs that were already in flight when it opened change nothing. Returns the seconds to
-- the next probe and whether the caller must start the chain (1/0). Times in the hash: seconds.
local now = clock_us(ARG.now) / 1000000
local open = redis.call('HGET', KEY.circuit, 'state')
if open and ARG.probing ~= '1' then
  local wait = tonumber(redis.call('HGET', KEY.circuit, 'probe_at')) - now
  return {tostring(math.max(wait, 0)), 0}
end
local trips = redis.call('HINCRBY', KEY.circuit, 'trips', 1)
local cooldown = math.min(tonumber(ARG.cooldown) * 2 ^ (trips - 1), tonumber(ARG.cooldown_max))
redis.call('HSET', KEY.circuit, 'state', 'open', 'reason', ARG.reason, 'detail', ARG.detail,
           'probe_at', string.format('%.6f', now + cooldown))
redis.call('DEL', KEY.probe)
if open then return {tostring(cooldown), 0} end
redis.call('HSET', KEY.circuit, 'opened_at', string.format('%.6f', now))
redis.call('ZADD', KEY.paused, now, ARG.account)
redis.call('SET', KEY.chain, ARG.token, 'PX', math.floor((cooldown + 60) * 1000))
return {tostring(cooldown), 1}
