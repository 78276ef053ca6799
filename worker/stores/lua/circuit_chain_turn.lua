--! keys: chain parked
--! args: token next_turn_ms
-- A turn of the probe chain goes on unless another chain has taken over, and ends when no job is
-- parked: in one script, so a job parking meanwhile either is seen here or finds the mark gone
-- and starts a new chain. Returns 'continue', 'ended' or 'superseded'.
local mark = redis.call('GET', KEY.chain)
if mark and mark ~= ARG.token then return 'superseded' end
if redis.call('LLEN', KEY.parked) == 0 then
  if mark then redis.call('DEL', KEY.chain) end
  return 'ended'
end
redis.call('SET', KEY.chain, ARG.token, 'PX', ARG.next_turn_ms)
return 'continue'
