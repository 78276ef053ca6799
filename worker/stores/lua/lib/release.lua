-- Forget a chat's pending mark if `task_id` holds it (an empty key name: nothing to release).
local function release(key, task_id)
  if key ~= '' and redis.call('GET', key) == task_id then
    return redis.call('DEL', key)
  end
  return 0
end
