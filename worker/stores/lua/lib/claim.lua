-- Each chat once (worker/stores/pending.py): 1 when `task_id` owns the chat's mark (now or already),
-- else the id of the job that owns it.
local function claim(key, task_id, ttl)
  local owner = redis.call('GET', key)
  if not owner then
    redis.call('SET', key, task_id, 'EX', ttl)
    return 1
  end
  if owner == task_id then
    redis.call('EXPIRE', key, ttl)
    return 1
  end
  return owner
end
