"""The two small notations people write in the accounts file: rates ("10/s"), durations ("30d").

Both are bounded where they are parsed, so nothing downstream (the limiter's interval, a sweep's
window, beat's schedule) ever sees zero, infinity, NaN or a number no provider could mean:

- a rate is between ``MIN_RATE`` (1 call a day: slower is an account nobody uses) and
  ``MAX_RATE`` (1,000 calls a second: a hundred times GREEN-API's documented 10/s, and more than
  one Redis-backed limiter key is meant to pace), over a period of at most a day;
- a duration is positive and at most ``MAX_DURATION`` (ten years); each setting that takes one
  narrows that further (see config/sweep.py).

Numbers are ASCII digits with at most 9 before and 6 after the point: ``"1" * 400 + "/s"`` is
refused as text, before any arithmetic could overflow or divide by zero.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from config.errors import show

_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"([0-9]{1,9}(?:\.[0-9]{1,6})?)"
_RATE = re.compile(rf"\A\s*{_NUMBER}\s*/\s*{_NUMBER}?\s*([smhd])\s*\Z", re.ASCII)
_DURATION = re.compile(rf"\A\s*{_NUMBER}\s*([smhd])\s*\Z", re.ASCII)

DAY = 86400.0
MIN_RATE = 1 / DAY  # calls per second
MAX_RATE = 1000.0  # calls per second
MAX_RATE_PERIOD = DAY  # seconds: a 429 with no Retry-After holds an account off one period
MAX_DURATION = 3650 * DAY


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
    """'10/s', '600/m', '1/2s', '24/d' -> Rate, within the module's bounds. Raises ValueError
    (one line) with the accepted forms."""
    if not isinstance(text, str):
        raise ValueError(f"{show(text)} is not a rate; write e.g. '10/s', '600/m' or '1/2s'")
    return _parse_rate_text(text)


# Rates are frozen and every account parses its provider's table of method rates: a cache keeps
# a file of thousands of accounts from parsing the same dozen texts thousands of times.
@lru_cache(maxsize=1024)
def _parse_rate_text(text: str) -> Rate:
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"{show(text)} is not a rate; write e.g. '10/s', '600/m' or '1/2s'")
    calls = float(match.group(1))
    period = float(match.group(2) or 1) * _UNIT_SECONDS[match.group(3)]
    if not (calls > 0 and period > 0):
        raise ValueError(f"{show(text)}: a rate must be positive")
    if period > MAX_RATE_PERIOD:
        raise ValueError(f"{show(text)}: the period must be at most a day")
    per_second = calls / period
    if not MIN_RATE <= per_second <= MAX_RATE:
        raise ValueError(f"{show(text)}: a rate must be between 1/d and {MAX_RATE:g}/s")
    return Rate(calls, period)


def parse_duration(text: str | int | float) -> float:
    """'30d', '6h', '90m', '45s' (or a number of seconds) -> seconds, positive, finite and at
    most ten years. Raises ValueError (one line)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
        shown = f"{seconds:g}" if math.isfinite(seconds) else str(seconds)
    else:
        match = _DURATION.match(text) if isinstance(text, str) else None
        if not match:
            raise ValueError(
                f"{show(text)} is not a duration; write e.g. '30d', '6h', '90m' or '45s'"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        shown = show(text)
    if not seconds > 0:
        raise ValueError(f"{shown}: a duration must be positive")
    if not seconds <= MAX_DURATION:
        raise ValueError(f"{shown}: a duration must be at most 3650d")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds in the largest unit that divides them, as the accounts file writes them."""
    for unit, size in (("d", DAY), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
