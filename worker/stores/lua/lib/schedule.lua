-- An account has a job waiting: make sure the dispatcher looks at it. Due `now` when a worker
-- knows the account (its entry in the accounts hash) or when the job waits for no account
-- ('*', worker/contract/tasks.py UNPACED); otherwise the account joins the unknown ones, and
-- its jobs wait there until a worker's accounts file names it. `mode`: 'NX' keeps a later due
-- time the account already has (its rate limit's), 'LT' brings it forward (a probe).
local function schedule_account(account, now, due, unknown, accounts, mode)
  if account == '*' or redis.call('HEXISTS', accounts, account) == 1 then
    redis.call('ZADD', due, mode or 'NX', now, account)
  else
    redis.call('ZADD', unknown, 'NX', now, account)
  end
end
