--! keys: jobs active runs permits deliveries chat circuit probe tat stats recent
--! args: now id run lease_us deliveries_ttl claim_ttl probe_ttl_ms interval_us max_wait_us window_us max_deliveries
--! uses: clock lease claim circuit gcra
-- Everything a run of an archive job must know before it may call the provider, in one step,
-- each check made only if the ones before it let the run go on (a run that will not call takes
-- no permit and no probe claim):
--   the job's lease ('stale' / 'busy': this run ends quietly),
--   how many runs of it began and never ended (past the cap: worker_lost),
--   the chat's pending mark (held by another job: duplicate),
--   the account's circuit ('park', 'probe' or 'call'),
--   a permit: the one its dispatch reserved unless it passed more than an interval ago, else a
--   new one.
-- Returns {lease, deliveries, claim, decision, granted (0/1), µs to the slot: to wait, to the
-- next slot if not granted, negative if the reserved slot has passed (the call is that late),
-- the slot itself (µs, Redis's clock; 0 when no permit was looked at)}.
local now = clock_us(ARG.now)
local status = take_lease(KEY.jobs, KEY.active, KEY.runs, ARG.id, ARG.run, now, ARG.lease_us)
if status ~= 'ok' then return {status, 0, 0, 'call', 0, '0', '0'} end
redis.call('HSET', KEY.deliveries, ARG.run, 1)
redis.call('EXPIRE', KEY.deliveries, ARG.deliveries_ttl)
local deliveries = redis.call('HLEN', KEY.deliveries)
if deliveries > tonumber(ARG.max_deliveries) then
  return {status, deliveries, 1, 'call', 0, '0', '0'}
end
local claimed = claim(KEY.chat, ARG.id, ARG.claim_ttl)
if claimed ~= 1 then return {status, deliveries, claimed, 'call', 0, '0', '0'} end
local decision = circuit_check(KEY.circuit, KEY.probe, ARG.probe_ttl_ms, now)
if decision == 'park' then return {status, deliveries, claimed, decision, 0, '0', '0'} end
local reserved = redis.call('HGET', KEY.permits, ARG.id)
redis.call('HDEL', KEY.permits, ARG.id)
-- A reserved slot that has passed is still used if it passed by less than an interval: the run
-- pushes the later slots back by its lateness (worker/stores/limiter.py), which costs the account
-- less than the interval a new permit would leave unused. Later than that: a new permit.
if reserved and tonumber(reserved) + tonumber(ARG.interval_us) >= now then
  return {status, deliveries, claimed, decision, 1, string.format('%d', tonumber(reserved) - now),
          reserved}
end
local granted, slot = gcra_acquire(KEY.tat, KEY.stats, KEY.recent, ARG.interval_us,
                                   ARG.max_wait_us, ARG.window_us, now)
return {status, deliveries, claimed, decision, granted and 1 or 0, string.format('%d', slot - now),
        string.format('%d', slot)}
