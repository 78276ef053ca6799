-- An account has a job waiting: make sure the dispatcher looks at it. Due `now` when a worker
-- knows the account (its entry in the accounts hash) or when the job waits for no account
-- ('*', worker/contract/tasks.py UNPACED); otherwise the account joins the unknown ones, and its
-- jobs wait there until a worker's accounts file names it. 'NX' keeps a later due time the account
-- already has (its rate limit's, or its paused circuit's next probe).
local function schedule_account(account, now, due, unknown, accounts)
  if account == '*' or redis.call('HEXISTS', accounts, account) == 1 then
    redis.call('ZADD', due, 'NX', now, account)
  else
    redis.call('ZADD', unknown, 'NX', now, account)
  end
end

-- The delayed set's entry in the schedule (no account key looks like it): due at its earliest job.
local DELAYED = '@delayed'

-- A job waits in the delayed set until `at` (µs): the set's entry comes forward if it is earlier.
local function schedule_delayed(delayed, due, account, id, at)
  redis.call('ZADD', delayed, at, account .. '|' .. id)
  redis.call('ZADD', due, 'LT', at, DELAYED)
end
