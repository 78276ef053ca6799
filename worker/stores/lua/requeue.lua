--! keys: active jobs runs permits due unknown accounts
--! args: now wait_prefix limit
--! uses: clock schedule record
-- The janitor: jobs whose lease has run out belong to runs that died (a killed node, a lost
-- message) and go back to the front of their account's wait list. Returns their ids.
local now = clock_us(ARG.now)
local expired = redis.call('ZRANGE', KEY.active, '-inf', now, 'BYSCORE', 'LIMIT', 0,
                           tonumber(ARG.limit))
for _, id in ipairs(expired) do
  redis.call('ZREM', KEY.active, id)
  redis.call('HDEL', KEY.runs, id)
  redis.call('HDEL', KEY.permits, id)
  local record = redis.call('HGET', KEY.jobs, id)
  if record then
    local account = record_parts(record)
    redis.call('LPUSH', ARG.wait_prefix .. account, id)
    schedule_account(account, now, KEY.due, KEY.unknown, KEY.accounts)
  end
end
return expired
