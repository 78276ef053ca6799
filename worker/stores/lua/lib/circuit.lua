-- The account circuit breaker (worker/stores/circuit.py): 'call' (closed), 'park' (open, no probe due
-- or one already running) or 'probe' (open and a probe is due: this caller takes the probe claim
-- and calls the provider to see). probe_at is in seconds.
local function circuit_check(circuit_key, probe_key, probe_ttl_ms, now)
  local state = redis.call('HGET', circuit_key, 'state')
  if not state then return 'call' end
  if now / 1000000 < tonumber(redis.call('HGET', circuit_key, 'probe_at') or '0') then
    return 'park'
  end
  if redis.call('SET', probe_key, '1', 'NX', 'PX', probe_ttl_ms) then return 'probe' end
  return 'park'
end

-- For the dispatcher: true while the account's jobs must not be dispatched (open, and no probe
-- is due or one is running). A due probe lets one job through, which takes the probe claim.
local function circuit_paused(circuit_key, probe_key, now)
  local state = redis.call('HMGET', circuit_key, 'state', 'probe_at')
  if not state[1] then return false end
  if now / 1000000 < tonumber(state[2] or '0') then return true end
  return redis.call('EXISTS', probe_key) == 1
end
