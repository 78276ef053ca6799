"""Writes recorded now, made later inside one of our Lua scripts, atomically with it.

Stores describe their writes by calling redis-py pipeline methods (``dead_letters.queue_add(pipe,
entry)``). Given a :class:`Writes` instead of a pipeline, those calls are recorded as commands,
and a script such as close.lua runs them (lua/lib/writes.lua) only if the run it closes still
holds its job: a dead letter or an outcome is then written exactly once, even when a lost reply
makes redis-py send the script again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Writes:
    """The subset of redis-py's pipeline API our stores use, recorded."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def _add(self, *command: Any) -> Writes:
        self.commands.append(command)
        return self

    def hset(self, name: str, key: str, value: Any) -> Writes:
        return self._add("HSET", name, key, value)

    def hincrby(self, name: str, key: str, amount: int = 1) -> Writes:
        return self._add("HINCRBY", name, key, amount)

    def hincrbyfloat(self, name: str, key: str, amount: float = 1.0) -> Writes:
        return self._add("HINCRBYFLOAT", name, key, repr(float(amount)))

    def zadd(self, name: str, mapping: Mapping[str, float]) -> Writes:
        pairs: list[Any] = []
        for member, score in mapping.items():
            pairs += [repr(float(score)), member]
        return self._add("ZADD", name, *pairs)

    def sadd(self, name: str, *members: str) -> Writes:
        return self._add("SADD", name, *members)

    def expire(self, name: str, seconds: int) -> Writes:
        return self._add("EXPIRE", name, int(seconds))

    def flat(self) -> list[Any]:
        """The form lua/lib/writes.lua reads: count, then each command's length and words."""
        out: list[Any] = [len(self.commands)]
        for command in self.commands:
            out.append(len(command))
            out.extend(command)
        return out
