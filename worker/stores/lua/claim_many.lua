--! keys: *chats
--! args: ttl
--! rest: pairs
--! uses: claim
-- Each chat once, for a batch (worker/stores/pending.py): KEY.chats are the chats' pending marks, REST
-- their task ids in the same order. A bulk enqueue claims 500 chats in one call instead of 500, and
-- hears back only about the chats another job holds: {position, owner, position, owner, ...}.
local held = {}
for i = 1, #KEY.chats do
  local owner = claim(KEY.chats[i], REST[i], ARG.ttl)
  if owner ~= 1 then held[#held + 1] = i; held[#held + 1] = owner end
end
return held
