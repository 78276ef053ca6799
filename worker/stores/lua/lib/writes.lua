-- Commands a caller wants made in the same atomic step (a dead letter, metrics), flattened as:
-- their count, then for each command the number of its words followed by the words
-- (worker/stores/writes.py).
local function apply_writes(items)
  local i = 2
  for _ = 1, tonumber(items[1] or '0') do
    local n = tonumber(items[i])
    redis.call(unpack(items, i + 1, i + n))
    i = i + n + 1
  end
end
