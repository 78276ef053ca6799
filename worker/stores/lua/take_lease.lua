--! keys: jobs active runs deliveries
--! args: now id run lease_us deliveries_ttl
--! uses: clock lease
-- A run of a sweep or a probe takes its job's lease (archive jobs do it in admit.lua). Returns
-- {'ok' | 'stale' | 'busy', runs begun and not ended}.
local now = clock_us(ARG.now)
local status = take_lease(KEY.jobs, KEY.active, KEY.runs, ARG.id, ARG.run, now, ARG.lease_us)
if status ~= 'ok' then return {status, 0} end
redis.call('HSET', KEY.deliveries, ARG.run, 1)
redis.call('EXPIRE', KEY.deliveries, ARG.deliveries_ttl)
return {status, redis.call('HLEN', KEY.deliveries)}
