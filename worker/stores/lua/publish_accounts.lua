--! keys: accounts due unknown
--! args: now wait_prefix
--! rest: entries
--! uses: clock
-- A worker publishes the accounts its file names (worker/dispatch/registry.py): pairs of account
-- and JSON (its limit and its key names, for dispatch.lua); an empty JSON withdraws the account.
-- An account that had jobs waiting as unknown becomes due.
local now = clock_us(ARG.now)
for i = 1, #REST, 2 do
  local account, conf = REST[i], REST[i + 1]
  if conf == '' then
    redis.call('HDEL', KEY.accounts, account)
  else
    redis.call('HSET', KEY.accounts, account, conf)
    redis.call('ZREM', KEY.unknown, account)
    if redis.call('LLEN', ARG.wait_prefix .. account) > 0 then
      redis.call('ZADD', KEY.due, 'NX', now, account)
    end
  end
end
return #REST / 2
