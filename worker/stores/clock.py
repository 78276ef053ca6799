"""The time our Lua scripts work with, in microseconds since the epoch.

In production Redis's own clock decides (``TIME`` inside the script), so every host agrees on it
whatever their clocks say. Tests pin it: every script takes ``now`` as an argument, and an empty
string means "ask Redis".
"""

from __future__ import annotations

from dataclasses import dataclass

MICROS = 1_000_000


class RedisClock:
    """Let each script read ``TIME``."""

    def arg(self) -> str:
        return ""


@dataclass
class PinnedClock:
    """A clock a test sets and moves by hand (seconds since the epoch)."""

    seconds: float = 1_800_000_000.0

    def arg(self) -> str:
        return str(round(self.seconds * MICROS))

    def advance(self, seconds: float) -> None:
        self.seconds += seconds


Clock = RedisClock | PinnedClock
