--! keys: due delayed jobs active unknown accounts parked_since tokens
--! args: now budget lead_us lease_us promote_max wait_prefix parked_prefix probe_prefix probe_ttl_ms claim_ttl
--! uses: clock gcra schedule record
-- Hand out up to `budget` jobs that may run now, round-robin between accounts in the order of
-- their next permitted time. Each gets, in this step, the lease of its run (an `active` member
-- "id|token", renewed by its node), and the permit of its account's limit for its task (the
-- run sleeps to the slot, at most `lead_us` away). A paused account's waiting jobs are parked;
-- when its probe is due one job is handed out as the probe. Each account's limits and next
-- probe come from the accounts hash (worker/dispatch/registry.py, lua/circuit_trip.lua).
-- Returns {now (µs), µs until something is next due (-1: nothing, or the budget is spent), then
-- ten items per job:
-- id, token, slot (µs on Redis's clock; 0: no limit), lost, probe ('1' or ''), the id of the
-- job holding its chat ('' when it holds it itself), account, task, mark, body}.
local now = clock_us(ARG.now)
local lead, lease = tonumber(ARG.lead_us), tonumber(ARG.lease_us)
-- The first write is one a full Redis refuses (maxmemory: INCR is denied, LPOP and ZREM are not,
-- and a script that has written once runs on to its end): a full Redis then refuses the whole
-- dispatch, and no job starts whose ending could not be recorded.
local token_base = redis.call('INCR', KEY.tokens)

-- The delayed set is one entry of the schedule, '@delayed', at its earliest job's time: delayed
-- jobs whose time has come (within the lead) go to the front of their account's wait list, as
-- they have waited their turn already. So a dispatch looks at the delayed set only when it is
-- due, not on every call.
local function promote_delayed()
  local ripe = redis.call('ZRANGE', KEY.delayed, '-inf', now + lead, 'BYSCORE', 'LIMIT', 0,
                          tonumber(ARG.promote_max))
  for _, member in ipairs(ripe) do
    local cut = string.find(member, '|', 1, true)
    local account = string.sub(member, 1, cut - 1)
    redis.call('ZREM', KEY.delayed, member)
    redis.call('LPUSH', ARG.wait_prefix .. account, string.sub(member, cut + 1))
    schedule_account(account, now, KEY.due, KEY.unknown, KEY.accounts)
  end
  local earliest = redis.call('ZRANGE', KEY.delayed, 0, 0, 'WITHSCORES')
  if #earliest > 0 then
    redis.call('ZADD', KEY.due, earliest[2], DELAYED)
  else
    redis.call('ZREM', KEY.due, DELAYED)
  end
end

local out = {}
local handed = 0
local budget = tonumber(ARG.budget)
local confs = {}

local function conf_of(account)
  if confs[account] == nil then
    local text = redis.call('HGET', KEY.accounts, account)
    confs[account] = text and cjson.decode(text) or false
  end
  return confs[account]
end

-- Move the waiting jobs of a paused account to its parked list, a thousand at a time. One that
-- was parked before (a probe whose run was lost) goes back to the head: the list stays oldest
-- first, as the janitor's maximum-pause check reads it.
local function park_waiting(account, wait_key)
  local parked_key = ARG.parked_prefix .. account
  for _ = 1, 1000 do
    local id = redis.call('LPOP', wait_key)
    if not id then break end
    if redis.call('HEXISTS', KEY.jobs, id) == 1 then
      if redis.call('HSETNX', KEY.parked_since, id, string.format('%d', now)) == 1 then
        redis.call('RPUSH', parked_key, id)
      else
        redis.call('LPUSH', parked_key, id)
      end
    end
  end
end

-- Lease and pending mark for the job `id` (its record already popped from a list, its permit
-- taken). A mark written '?mark' was held by another job when this one was stored: it is claimed
-- now, or found still held (the run ends as a duplicate).
local function hand_out(id, record, slot, probe)
  local account, task, mark, lost, body = record_parts(record)
  local token = token_base .. '.' .. (handed + 1)
  redis.call('ZADD', KEY.active, now + lease, id .. '|' .. token)
  local holder = ''
  if string.sub(mark, 1, 1) == '?' then
    mark = string.sub(mark, 2)
    local owner = redis.call('SET', mark, id, 'NX', 'GET', 'EX', ARG.claim_ttl)
    if owner and owner ~= id then holder = owner end
  end
  handed = handed + 1
  out[#out + 1] = id
  out[#out + 1] = token
  out[#out + 1] = string.format('%d', slot)
  out[#out + 1] = string.format('%d', lost)
  out[#out + 1] = probe and '1' or ''
  out[#out + 1] = holder
  out[#out + 1] = account
  out[#out + 1] = task
  out[#out + 1] = mark
  out[#out + 1] = body
end

-- The permit of the limit of the job's task on its account, if the account has one: granted,
-- slot (0 without a limit), and when the limit's next slot is (nil without a limit).
local function permit(conf, record)
  local _, task = record_parts(record)
  local limit = conf and conf.l[task]
  if not limit then return true, 0, nil end
  return gcra_acquire(limit[1], tonumber(limit[2]), tonumber(limit[3]), lead, now)
end

-- The next job of a list whose record still exists (an id can outlive its job: a job the
-- janitor dead-lettered while its id waited).
local function next_job(list_key)
  while true do
    local id = redis.call('LPOP', list_key)
    if not id then return nil end
    local record = redis.call('HGET', KEY.jobs, id)
    if record then return id, record end
  end
end

local steps = 0
local head = nil  -- the due set's first entry, when the loop stopped on it (not due yet)
while handed < budget and steps < 1000 do
  steps = steps + 1
  local top = redis.call('ZRANGE', KEY.due, 0, 0, 'WITHSCORES')
  if #top == 0 or tonumber(top[2]) > now + lead then
    head = top
    break
  end
  local account = top[1]
  local wait_key = ARG.wait_prefix .. account
  local conf = false
  if account ~= '*' and account ~= DELAYED then conf = conf_of(account) end
  if account == DELAYED then
    promote_delayed()
  elseif account ~= '*' and not conf then
    -- No worker knows this account (any more): its jobs wait among the unknown ones.
    redis.call('ZREM', KEY.due, account)
    redis.call('ZADD', KEY.unknown, 'NX', now, account)
  elseif conf and conf.p then
    -- Its circuit is open. Its waiting jobs are parked; when the probe is due and no probe
    -- runs, the oldest parked job is handed out as the probe. The account is looked at again at
    -- its next probe, or when a lost probe's claim has run out; with nothing parked it leaves
    -- the schedule until a job arrives.
    park_waiting(account, wait_key)
    local again = tonumber(conf.p)
    local probe_key = ARG.probe_prefix .. account
    -- Due within the lead counts as due: the account is not put back where this loop would
    -- take it again at once.
    if now + lead >= again then
      again = now + tonumber(ARG.probe_ttl_ms) * 1000
      if redis.call('EXISTS', probe_key) == 0 then
        local parked_key = ARG.parked_prefix .. account
        local id, record = next_job(parked_key)
        if not id then
          again = nil
        else
          local granted, slot = permit(conf, record)
          if granted then
            redis.call('SET', probe_key, id, 'PX', ARG.probe_ttl_ms)
            hand_out(id, record, slot, true)
          else
            redis.call('LPUSH', parked_key, id)
            again = slot
          end
        end
      end
    end
    if again then
      redis.call('ZADD', KEY.due, again, account)
    else
      redis.call('ZREM', KEY.due, account)
    end
  else
    local id, record = next_job(wait_key)
    if not id then
      redis.call('ZREM', KEY.due, account)
    else
      local granted, slot, following = permit(conf, record)
      if not granted then
        redis.call('LPUSH', wait_key, id)
        redis.call('ZADD', KEY.due, slot, account)  -- back when its next permit is near
      else
        hand_out(id, record, slot, false)
        if redis.call('LLEN', wait_key) == 0 then
          redis.call('ZREM', KEY.due, account)
        elseif following then
          redis.call('ZADD', KEY.due, following, account)
        end
      end
    end
  end
end

-- When to look again: at the next due account or delayed job (less the lead); -1 when nothing is
-- due, or when the budget stopped us (the caller is full: a freed slot will wake it).
local next_in = -1
if handed < budget or budget == 0 then
  local first = head or redis.call('ZRANGE', KEY.due, 0, 0, 'WITHSCORES')
  if #first > 0 then next_in = math.max(0, tonumber(first[2]) - lead - now) end
end
table.insert(out, 1, string.format('%d', next_in))
table.insert(out, 1, string.format('%d', now))
return out
