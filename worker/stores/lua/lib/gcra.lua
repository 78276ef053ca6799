-- GCRA, the generic cell rate algorithm (worker/stores/limiter.py explains the choice). One key holds
-- the limit's theoretical arrival time (TAT): the moment its next call may go. A permit reserves
-- the slot at TAT and moves TAT one interval on. A slot further away than max_wait is not
-- reserved. Returns granted (boolean) and the slot in µs: the reserved one, or the next free one.
local function gcra_acquire(tat_key, stats_key, recent_key, interval, max_wait, window, now)
  interval, max_wait, window = tonumber(interval), tonumber(max_wait), tonumber(window)
  local tat = tonumber(redis.call('GET', tat_key) or now)
  if tat < now then tat = now end
  if tat - now > max_wait then
    redis.call('HINCRBY', stats_key, 'deferred', 1)
    return false, tat
  end
  local next_tat = tat + interval
  redis.call('SET', tat_key, string.format('%d', next_tat), 'PX',
             math.floor((next_tat - now) / 1000) + 60000)
  redis.call('HINCRBY', stats_key, 'granted', 1)
  redis.call('HINCRBY', stats_key, 'waited_us', tat - now)
  redis.call('ZADD', recent_key, tat, string.format('%d', tat))
  redis.call('ZREMRANGEBYSCORE', recent_key, '-inf', now - window)
  redis.call('PEXPIRE', recent_key, math.floor(window / 1000) * 2 + 60000)
  return true, tat
end
