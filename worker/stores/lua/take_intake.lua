--! keys: routing
--! args: limit
--! rest: queues
-- The router takes up to `limit` messages from the intake queue's lists (kombu's priority
-- lists, highest priority first), moving each into its node's routing list in the same step:
-- a node killed now loses nothing (the janitor gives a dead node's routing list back). Returns
-- everything the routing list holds, newest first (left over from an earlier try included).
local moved = 0
for _, queue in ipairs(REST) do
  while moved < tonumber(ARG.limit) do
    if not redis.call('LMOVE', queue, KEY.routing, 'RIGHT', 'LEFT') then break end
    moved = moved + 1
  end
end
return redis.call('LRANGE', KEY.routing, 0, -1)
