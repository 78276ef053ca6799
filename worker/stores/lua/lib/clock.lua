-- The time in µs: pinned by the caller (tests: worker/stores/clock.py), else Redis's own clock,
-- which every host agrees on.
local function clock_us(pinned)
  if pinned ~= nil and pinned ~= '' then return tonumber(pinned) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
