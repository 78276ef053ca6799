--! keys: tat stats
--! args: now shift_us
--! uses: clock
-- A call is going out later than its slot allows (worker/stores/limiter.py, push_back): every
-- slot not yet reserved moves `shift_us` later. The TAT is at least the late call's slot plus
-- one interval, so the call a full period after it moves too. Not clamped to now: an idle
-- limit's next slot is max(TAT, now) anyway.
local now = clock_us(ARG.now)
local shift = tonumber(ARG.shift_us)
-- No TAT at all (it expires a minute after the last slot; or Redis lost it): the next slot
-- would be now; push it from there.
local tat = tonumber(redis.call('GET', KEY.tat) or now) + shift
redis.call('SET', KEY.tat, string.format('%d', tat), 'PX', math.floor(math.max(0, tat - now) / 1000) + 60000)
redis.call('HINCRBY', KEY.stats, 'late', 1)
redis.call('HINCRBY', KEY.stats, 'pushed_us', shift)
return 1
