--! keys: jobs due delayed unknown accounts routing
--! args: now wait_prefix claim_ttl wake held check_results results_prefix
--! rest: items
--! uses: clock schedule record
-- Jobs enter the job store (worker/stores/jobs.py), from a producer or from the intake queue
-- through a node's router, six items each: task id, account, task, mark (its chat's pending-mark
-- key, '' for none), body (JSON), not-before (µs; 0: now). In one step, for each job:
--   one stored already (a copy of a job that waits or runs) is not stored again: 'stored'; with
--   `check_results` '1' (ids the caller did not make: a resend, a raw message), neither is one
--   that has a result already (a copy of a job that ended): 'done';
--   its chat's mark is claimed for it; held by another job, `held` 'skip' leaves it out and
--   returns the holder's id (a producer reports "already pending"), 'keep' stores it anyway with
--   its mark written '?mark', which its dispatch claims again (or finds held: its run ends as a
--   duplicate without a call);
--   otherwise it waits in its account's wait list (or the delayed set until not-before): 'new'.
-- `routing` (not ''): the router's list of this batch, deleted in the same step. A wake-up is
-- published once when an account became due. Returns one status per job.
local now = clock_us(ARG.now)
local statuses, scheduled, woken = {}, {}, false
for i = 1, #REST, 6 do
  local id, account, task, mark = REST[i], REST[i + 1], REST[i + 2], REST[i + 3]
  local body, not_before = REST[i + 4], tonumber(REST[i + 5])
  local status = 'new'
  if ARG.check_results == '1' and redis.call('HEXISTS', KEY.jobs, id) == 0
     and redis.call('EXISTS', ARG.results_prefix .. id) == 1 then
    status = 'done'  -- it has a result and is not stored: it ended (a waiting job has RETRY)
  elseif redis.call('HSETNX', KEY.jobs, id, record_of(account, task, mark, 0, body)) == 0 then
    status = 'stored'
  elseif mark ~= '' then
    local owner = redis.call('SET', mark, id, 'NX', 'GET', 'EX', ARG.claim_ttl)
    if owner and owner ~= id then
      if ARG.held == 'skip' then
        redis.call('HDEL', KEY.jobs, id)
        status = owner
      else
        redis.call('HSET', KEY.jobs, id, record_of(account, task, '?' .. mark, 0, body))
      end
    end
  end
  if status == 'new' then
    if not_before > now then
      schedule_delayed(KEY.delayed, KEY.due, account, id, not_before)
    else
      redis.call('RPUSH', ARG.wait_prefix .. account, id)
      if not scheduled[account] then
        schedule_account(account, now, KEY.due, KEY.unknown, KEY.accounts)
        scheduled[account] = true
      end
      woken = true
    end
  end
  statuses[#statuses + 1] = status
end
if KEY.routing ~= '' then redis.call('DEL', KEY.routing) end
if woken then redis.call('PUBLISH', ARG.wake, '1') end
return statuses
