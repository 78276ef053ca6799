"""The two small notations people write in the accounts file: rates ("10/s"), durations ("30d")."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*([smh])\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


@dataclass(frozen=True, order=True)
class Rate:
    """``calls`` per ``period`` seconds."""

    calls: float
    period: float

    @property
    def per_second(self) -> float:
        return self.calls / self.period

    @property
    def interval(self) -> float:
        """Seconds between two calls when they are spread evenly."""
        return self.period / self.calls

    def __str__(self) -> str:
        calls = f"{self.calls:g}"
        for unit, seconds in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
            if self.period == seconds:
                return f"{calls}/{unit}"
        return f"{calls}/{self.period:g}s"


def parse_rate(text: str) -> Rate:
    """'10/s', '600/m', '1/2s' -> Rate. Raises ValueError with the accepted forms."""
    match = _RATE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a rate; write e.g. '10/s', '600/m' or '1/2s'")
    calls = float(match.group(1))
    period = float(match.group(2) or 1) * _UNIT_SECONDS[match.group(3)]
    if calls <= 0 or period <= 0:
        raise ValueError(f"{text!r}: a rate must be positive")
    return Rate(calls, period)


def parse_duration(text: str | int | float) -> float:
    """'30d', '6h', '90m', '45s' (or a number of seconds) -> seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ValueError(f"{text!r} is not a duration; write e.g. '30d', '6h', '90m' or '45s'")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    return seconds
