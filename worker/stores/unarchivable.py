"""Chats a provider refused to archive because they have no incoming message.

GREEN-API archives only chats with an incoming message. A business that sends notifications to
customers who never reply has many such chats, all inactive: without a memory of them, every
nightly sweep would select them again and dead-letter each one again. A job that ends with
``no_messages`` records its chat here; sweeps skip chats recorded within their
``inactive_after`` window (a chat that gets an incoming message since is active anyway, and its
record ages out before it is inactive again). The first refusal is still a dead letter.

    {prefix}:unarchivable:{provider}:{account}   zset  chat id, scored by when it was refused
"""

from __future__ import annotations

import time

import redis
from redis.client import Pipeline

from worker.stores.keys import Keys
from worker.stores.writes import Writes


class UnarchivableChats:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self._keys = Keys(prefix)

    def key(self, provider: str, account: str) -> str:
        return self._keys.unarchivable(f"{provider}:{account}")

    def queue_add(self, pipe: Pipeline | Writes, provider: str, account: str, chat_id: str) -> None:
        pipe.zadd(self.key(provider, account), {chat_id: time.time()})

    def since(self, provider: str, account: str, cutoff: float) -> set[str]:
        """The chats refused after ``cutoff``; older records are dropped on the way."""
        key = self.key(provider, account)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", f"({cutoff}")
        pipe.zrange(key, 0, -1)
        _, chats = pipe.execute()
        return set(chats)
