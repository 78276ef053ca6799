-- GCRA, the generic cell rate algorithm (worker/stores/limiter.py explains the choice). The key
-- holds the limit's theoretical arrival time (TAT): when its next call may go. A permit reserves
-- the slot at TAT and moves TAT one interval on; a slot further than `max_wait` away is not
-- reserved. A limit that was idle gets its slot now, and TAT moves `gap` further: the call
-- reaches the provider some milliseconds after its slot, and the gap keeps the next call a whole
-- interval behind it. Returns granted (boolean), the slot in µs (the reserved one, or the next
-- free one) and the TAT after it.
local function gcra_acquire(tat_key, interval, gap, max_wait, now)
  local tat = tonumber(redis.call('GET', tat_key) or '0')
  local next_tat
  if tat <= now then
    tat = now
    next_tat = now + interval + gap
  elseif tat - now > max_wait then
    return false, tat, tat
  else
    next_tat = tat + interval
  end
  redis.call('SET', tat_key, string.format('%d', next_tat), 'PX',
             math.floor((next_tat - now) / 1000) + 60000)
  return true, tat, next_tat
end
