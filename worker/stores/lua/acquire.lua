--! keys: tat stats recent
--! args: now interval_us max_wait_us window_us
--! uses: clock gcra
-- One permit of a limit (worker/stores/limiter.py): {granted (0/1), µs to its slot (to the next free
-- slot when refused), the slot itself (µs, Redis's clock)}.
local now = clock_us(ARG.now)
local granted, slot = gcra_acquire(KEY.tat, KEY.stats, KEY.recent, ARG.interval_us,
                                   ARG.max_wait_us, ARG.window_us, now)
return {granted and 1 or 0, string.format('%d', slot - now), string.format('%d', slot)}
