--! keys: routing
--! args: limit
--! rest: queues
-- The router takes up to `limit` messages from the intake queue's lists (kombu's priority
-- lists, highest priority first; kombu pushes on the left and consumers pop on the right, so
-- the oldest are at the right), moving them into its node's routing list in the same step: a
-- node killed now loses nothing (the janitor gives a dead node's routing list back). Returns
-- everything the routing list holds, oldest first (left over from an earlier try included).
local room = tonumber(ARG.limit)
for _, queue in ipairs(REST) do
  if room <= 0 then break end
  local taken = redis.call('LRANGE', queue, -room, -1)
  if #taken > 0 then
    redis.call('LTRIM', queue, 0, -#taken - 1)
    redis.call('LPUSH', KEY.routing, unpack(taken))
    room = room - #taken
  end
end
return redis.call('LRANGE', KEY.routing, 0, -1)
