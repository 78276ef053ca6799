"""The time our Lua scripts work with, in microseconds since the epoch.

In production Redis's own clock decides (``TIME`` inside the script), so every host agrees on it
whatever their clocks say. Tests pin it: every script takes ``now`` as an argument, and an empty
string means "ask Redis".
"""

from __future__ import annotations

from typing import Any

MICROS = 1_000_000


class RedisClock:
    """Let each script read ``TIME``."""

    def arg(self) -> str:
        return ""

    def now(self, client: Any) -> float:
        """The time in seconds, for reads made outside a script (Redis's clock too)."""
        seconds, micros = client.time()
        return float(seconds) + float(micros) / MICROS


class PinnedClock:
    """A clock a test sets and moves by hand. It keeps whole microseconds, as the scripts do, so
    what Python reads and what a script reads are the same number."""

    def __init__(self, seconds: float = 1_800_000_000.0) -> None:
        self.micros = round(seconds * MICROS)

    @property
    def seconds(self) -> float:
        return self.micros / MICROS

    @seconds.setter
    def seconds(self, value: float) -> None:
        self.micros = round(value * MICROS)

    def arg(self) -> str:
        return str(self.micros)

    def now(self, client: Any) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.micros += round(seconds * MICROS)


Clock = RedisClock | PinnedClock
