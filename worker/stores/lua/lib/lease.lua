-- A run of a job takes the job's lease. Returns 'ok', or why not: 'stale' (the job has ended or
-- was never stored: this message is a leftover, e.g. redelivered after its job finished) or
-- 'busy' (another run holds a live lease: a duplicate delivery while the first run is alive).
-- A lease whose deadline has passed belongs to a run that died: the caller takes over.
local function take_lease(jobs, active, runs, id, run, now, lease_us)
  if redis.call('HEXISTS', jobs, id) == 0 then return 'stale' end
  local owner = redis.call('HGET', runs, id)
  if owner and owner ~= run then
    if tonumber(redis.call('ZSCORE', active, id) or '0') > now then return 'busy' end
  end
  redis.call('HSET', runs, id, run)
  redis.call('ZADD', active, now + tonumber(lease_us), id)
  return 'ok'
end
