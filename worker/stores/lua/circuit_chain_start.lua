--! keys: circuit chain
--! args: now token
--! uses: clock
-- A job has just parked (or the janitor looks after a paused account): start a probe chain
-- unless one runs, so a lost chain is replaced and two never run side by side. Returns the
-- seconds to the probe when the caller must send the chain's first task, else -1.
local probe_at = redis.call('HGET', KEY.circuit, 'probe_at')
if not probe_at then return '-1' end
local wait = math.max(tonumber(probe_at) - clock_us(ARG.now) / 1000000, 0)
if redis.call('SET', KEY.chain, ARG.token, 'NX', 'PX', math.floor((wait + 60) * 1000)) then
  return tostring(wait)
end
return '-1'
