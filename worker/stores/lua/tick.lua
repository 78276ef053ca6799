--! keys: active nodes janitor jobs due unknown accounts paused
--! args: now node lease_us silence_us janitor_ms node_timeout_us unknown_grace_us wait_prefix
--! args: limit wake
--! rest: members
--! uses: clock schedule record
-- A node's housekeeping, one step every few seconds (worker/dispatch/service.py): it renews the
-- leases of the runs it holds (`members`, "id|token"; only those still active), says it is alive,
-- and tries to take the janitor's turn (one node per interval). The janitor puts jobs whose lease
-- ran out (their run died: a killed node, a message lost on the way) back at the front of their
-- wait list, one more run counted lost, and reports what Python does next: nodes that stopped
-- saying they are alive, accounts no worker has named for the grace period, paused accounts.
-- Returns {janitor turn (0/1), {requeued ids}, {dead nodes}, {unknown accounts}, {paused}, µs
-- of the fleet's silence that made this tick hold the janitor back (0: none)}.
local now = clock_us(ARG.now)
local deadline = now + tonumber(ARG.lease_us)
for _, member in ipairs(REST) do
  redis.call('ZADD', KEY.active, 'XX', 'GT', deadline, member)
end
-- The fleet's latest heartbeat before this one. A longer silence than `silence_us` (Redis away
-- or refusing writes, or no node alive; less than the least a live node's lease has left at its
-- node's last renewal) may have let leases run out while their runs lived on: no node takes the
-- janitor's turn for a whole lease, time for every live node to renew its own.
local held = 0
local latest = redis.call('ZRANGE', KEY.nodes, 0, 0, 'REV', 'WITHSCORES')
if #latest > 0 and now - tonumber(latest[2]) > tonumber(ARG.silence_us) then
  held = now - tonumber(latest[2])
  redis.call('SET', KEY.janitor, '', 'PX', math.floor(tonumber(ARG.lease_us) / 1000))
end
redis.call('ZADD', KEY.nodes, now, ARG.node)
-- janitor_ms 0: renewals and the heartbeat only.
if tonumber(ARG.janitor_ms) == 0
   or not redis.call('SET', KEY.janitor, ARG.node, 'NX', 'PX', ARG.janitor_ms) then
  return {0, {}, {}, {}, {}, string.format('%d', held)}
end
local requeued = {}
local expired = redis.call('ZRANGE', KEY.active, '-inf', now, 'BYSCORE', 'LIMIT', 0,
                           tonumber(ARG.limit))
for _, member in ipairs(expired) do
  redis.call('ZREM', KEY.active, member)
  local id = string.sub(member, 1, string.find(member, '|', 1, true) - 1)
  local record = redis.call('HGET', KEY.jobs, id)
  if record then
    local account, task, mark, lost, body = record_parts(record)
    redis.call('HSET', KEY.jobs, id, record_of(account, task, mark, lost + 1, body))
    redis.call('LPUSH', ARG.wait_prefix .. account, id)
    schedule_account(account, now, KEY.due, KEY.unknown, KEY.accounts)
    requeued[#requeued + 1] = id
  end
end
if #requeued > 0 then redis.call('PUBLISH', ARG.wake, '1') end
local dead = redis.call('ZRANGE', KEY.nodes, '-inf', now - tonumber(ARG.node_timeout_us),
                        'BYSCORE')
local unknown = redis.call('ZRANGE', KEY.unknown, '-inf', now - tonumber(ARG.unknown_grace_us),
                           'BYSCORE')
return {1, requeued, dead, unknown, redis.call('ZRANGE', KEY.paused, 0, -1), '0'}
