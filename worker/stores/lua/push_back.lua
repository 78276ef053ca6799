--! keys: tat stats
--! args: now slot_us allowance_us interval_us
--! uses: clock
-- A call is about to go out on the slot `slot_us` (worker/stores/limiter.py, keep_distance). Its
-- lateness is read here, on Redis's clock, just before the send: beyond `allowance_us`, every slot
-- not yet reserved moves back by the excess, at most one interval (moving the later slots one
-- interval takes one call out of every window after them, as many as a late call can add). The
-- TAT is at least the late call's slot plus one interval, so the call a period after it moves
-- too, as long as slots are reserved less than a period ahead (the dispatch lead and the
-- limiter's max wait are a fraction of a second). Returns the µs pushed.
local now = clock_us(ARG.now)
local shift = math.min(now - tonumber(ARG.slot_us) - tonumber(ARG.allowance_us),
                       tonumber(ARG.interval_us))
if shift <= 0 then return 0 end
-- No TAT at all (it expires a minute after the last slot; or Redis lost it): the next slot
-- would be now; push it from there.
local tat = tonumber(redis.call('GET', KEY.tat) or now) + shift
redis.call('SET', KEY.tat, string.format('%d', tat), 'PX', math.floor(math.max(0, tat - now) / 1000) + 60000)
redis.call('HINCRBY', KEY.stats, 'late', 1)
redis.call('HINCRBY', KEY.stats, 'pushed_us', shift)
return shift
