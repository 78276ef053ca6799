--! keys: chat
--! args: id
--! uses: release
return release(KEY.chat, ARG.id)
