-- Forget a chat's pending mark if `task_id` holds it (an empty key name: nothing to release).
local function release(key, task_id)
  if key ~= '' and redis.call('GET', key) == task_id then redis.call('DEL', key) end
end
