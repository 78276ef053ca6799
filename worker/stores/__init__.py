"""What chat-archiver keeps in Redis: one key registry (keys.py), the Lua that changes it (lua/,
loaded by scripts.py), and one store class per concern."""
