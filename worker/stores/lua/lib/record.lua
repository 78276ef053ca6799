-- A job store record (worker/stores/jobs.py): "account\ntask\nmark\nlost\nbody". `mark` is the
-- key of the chat's pending mark ('' for sweeps), `lost` how many of its runs began and never
-- ended (their lease ran out), `body` the job as JSON (keyword arguments, history), which no
-- script reads.
local function record_parts(record)
  local parts, from = {}, 1
  for _ = 1, 4 do
    local cut = string.find(record, '\n', from, true)
    parts[#parts + 1] = string.sub(record, from, cut - 1)
    from = cut + 1
  end
  return parts[1], parts[2], parts[3], tonumber(parts[4]), string.sub(record, from)
end

local function record_of(account, task, mark, lost, body)
  return table.concat({account, task, mark, string.format('%d', lost), body}, '\n')
end
