-- Commands a caller wants made in the same atomic step (a dead letter, metrics), flattened as:
-- their count, then for each command the number of its words followed by the words
-- (worker/stores/writes.py). Returns the index after the last word read.
local function apply_writes(items, first)
  local i = first
  local count = tonumber(items[i] or '0')
  i = i + 1
  for _ = 1, count do
    local n = tonumber(items[i])
    redis.call(unpack(items, i + 1, i + n))
    i = i + n + 1
  end
  return i
end
