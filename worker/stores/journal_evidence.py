"""What sweeps have seen of a GREEN-API instance's journal settings: the evidence that its journals
were complete over a sweep's window (tasks/sweep/journals.py judges it).

    {p}:journals:{provider}:{account}   hash
        on_since      when a sweep first saw every setting the journals need on, in the current
                      unbroken run of sightings (removed when a sweep sees one off)
        off_at        when a sweep last saw one off
        off_settings  which ones were off then

Kept without expiry: it is one small hash per GREEN-API account, and forgetting it would only
restart the wait.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from worker.stores.keys import Keys


@dataclass(frozen=True)
class Sightings:
    on_since: float | None
    off_at: float | None
    off_settings: str | None


class JournalEvidence:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys

    def saw_on(self, account: str, now: float) -> Sightings:
        """Every setting was on: the streak starts now unless it had already."""
        key = self._keys.journals(account)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hsetnx(key, "on_since", repr(now))
        pipe.hmget(key, "on_since", "off_at", "off_settings")
        _, (on_since, off_at, off_settings) = pipe.execute()
        return Sightings(_float(on_since), _float(off_at), _text(off_settings))

    def saw_off(self, account: str, now: float, settings: list[str]) -> None:
        """A setting was off: whatever was seen before proves nothing any more."""
        key = self._keys.journals(account)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(key, "on_since")
        pipe.hset(key, mapping={"off_at": repr(now), "off_settings": ", ".join(settings)})
        pipe.execute()


def _float(value: object) -> float | None:
    return None if value is None else float(str(value))


def _text(value: object) -> str | None:
    return None if value is None else str(value)
