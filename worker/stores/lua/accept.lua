--! keys: jobs due delayed unknown accounts
--! args: now wait_prefix
--! rest: items
--! uses: clock schedule
-- The router stores jobs it read from the intake queue (worker/dispatch/router.py). Items come
-- four at a time: task id, account, message, not-before (µs; 0: now). A job whose id is already
-- stored is not stored twice (a producer that published it again, a message restored after it
-- was stored): its id comes back in the reply so the router can say so.
local now = clock_us(ARG.now)
local accepted, duplicates = 0, {}
for i = 1, #REST, 4 do
  local id, account, message = REST[i], REST[i + 1], REST[i + 2]
  local not_before = tonumber(REST[i + 3])
  if redis.call('HSETNX', KEY.jobs, id, account .. '\n' .. message) == 1 then
    if not_before > now then
      redis.call('ZADD', KEY.delayed, not_before, account .. '|' .. id)
    else
      redis.call('RPUSH', ARG.wait_prefix .. account, id)
      schedule_account(account, now, KEY.due, KEY.unknown, KEY.accounts)
    end
    accepted = accepted + 1
  else
    duplicates[#duplicates + 1] = id
  end
end
return {accepted, duplicates}
