--! keys: tat stats
--! args: now interval_us gap_us max_wait_us
--! uses: clock gcra
-- One permit of a limit (worker/stores/limiter.py), for a call no dispatch reserved (a retry, a
-- sweep's listing call): {granted (0/1), µs to its slot (to the next free slot when refused),
-- the slot itself (µs, Redis's clock)}.
local now = clock_us(ARG.now)
local granted, slot = gcra_acquire(KEY.tat, tonumber(ARG.interval_us), tonumber(ARG.gap_us),
                                   tonumber(ARG.max_wait_us), now)
if not granted then redis.call('HINCRBY', KEY.stats, 'deferred', 1) end
return {granted and 1 or 0, string.format('%d', slot - now), string.format('%d', slot)}
