--! keys: tat stats
--! args: now delay_us
--! uses: clock
-- The provider answered 429: push the limit's next slot at least `delay_us` away. Returns µs
-- until the next slot (further than the delay if others had booked beyond it).
local now = clock_us(ARG.now)
local not_before = now + tonumber(ARG.delay_us)
local tat = tonumber(redis.call('GET', KEY.tat) or now)
if tat < not_before then
  redis.call('SET', KEY.tat, string.format('%d', not_before), 'PX',
             math.floor(tonumber(ARG.delay_us) / 1000) + 60000)
  tat = not_before
end
redis.call('HINCRBY', KEY.stats, 'rate_limited', 1)
redis.call('HSET', KEY.stats, 'last_rate_limited_at', string.format('%d', now))
return string.format('%d', tat - now)
