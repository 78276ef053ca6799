-- A job store record is "account\nmessage" (worker/stores/jobs.py).
local function record_parts(record)
  local cut = string.find(record, '\n', 1, true)
  return string.sub(record, 1, cut - 1), string.sub(record, cut + 1)
end
