--! keys: tat stats
--! args: now shift_us
--! uses: clock
-- A call went out late (its worker was held up past its slot): the limit's later slots move by
-- `shift_us`, so that no window of the provider holds the late call and a full period of calls
-- after it. Returns µs until the next slot.
local now = clock_us(ARG.now)
local tat = tonumber(redis.call('GET', KEY.tat) or now)
if tat < now then tat = now end
tat = tat + tonumber(ARG.shift_us)
redis.call('SET', KEY.tat, string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 60000)
redis.call('HINCRBY', KEY.stats, 'late', 1)
return string.format('%d', tat - now)
