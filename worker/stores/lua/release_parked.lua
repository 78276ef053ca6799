--! keys: parked parked_since due unknown accounts
--! args: now wait_prefix account count afresh
--! uses: clock schedule
-- Parked jobs go back to the front of their account's wait list, oldest first, and the account
-- is due now: `count` of them (a probe: 1) or all (`count` 0: the circuit has closed, and with
-- `afresh` '1' their parked time is forgotten, so a later pause counts from zero). Returns ids.
local now = clock_us(ARG.now)
local count = tonumber(ARG.count)
local ids = redis.call('LRANGE', KEY.parked, 0, count - 1)
if #ids == 0 then return ids end
redis.call('LTRIM', KEY.parked, #ids, -1)
local wait_key = ARG.wait_prefix .. ARG.account
for i = #ids, 1, -1 do redis.call('LPUSH', wait_key, ids[i]) end
if ARG.afresh == '1' then
  for _, id in ipairs(ids) do redis.call('HDEL', KEY.parked_since, id) end
end
schedule_account(ARG.account, now, KEY.due, KEY.unknown, KEY.accounts, 'LT')
return ids
