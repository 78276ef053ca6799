"""Per account and method call counters, and the sliding one-second window they share with the
rate limiter.

A window holds the monotonic times of the calls it accepted during the last second. The limiter
asks it whether one more call fits; the counters use a second, independent window to record the
highest number of calls that were accepted inside any one-second span (`peak_1s`). They are kept
apart on purpose: resetting counters between test phases must not reset the limiter, which would
let a test accidentally burst above a provider's limit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

WINDOW_SECONDS = 1.0
# Refused calls whose window is kept for diagnosis, per account and method (the first ones).
REFUSALS_KEPT = 5


class SlidingWindow:
    """Monotonic timestamps of the accepted events of the last `WINDOW_SECONDS`."""

    __slots__ = ("_times",)

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def _expire(self, now: float) -> None:
        # An event exactly one second old is outside: "the last 1.0 s" is (now-1, now].
        horizon = now - WINDOW_SECONDS
        times = self._times
        while times and times[0] <= horizon:
            times.popleft()

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self._times)

    def fits(self, now: float, limit: int | None) -> bool:
        if not limit:
            return True
        return self.count(now) < limit

    def add(self, now: float) -> int:
        """Record one accepted event; return how many the window holds with it."""
        self._expire(now)
        self._times.append(now)
        return len(self._times)

    def ages(self, now: float) -> list[float]:
        """How long ago, in seconds, each event in the window happened, oldest first."""
        self._expire(now)
        return [now - t for t in self._times]

    def clear(self) -> None:
        self._times.clear()


@dataclass(slots=True)
class MethodCounter:
    calls: int = 0
    rate_limited: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    peak_1s: int = 0
    window: SlidingWindow = field(default_factory=SlidingWindow)
    # For the first refused calls: the ages in ms of the calls the provider's window held then,
    # oldest first. Their spacing shows which call came early or late against its neighbours.
    refusals: list[list[float]] = field(default_factory=list)
    # When the last call arrived (unix time): a benchmark on the same host times a job from its
    # enqueue to its provider call with it.
    last_at: float = 0.0

    def refused(self, window_ages: list[float]) -> None:
        self.rate_limited += 1
        if len(self.refusals) < REFUSALS_KEPT:
            self.refusals.append([round(age * 1000.0, 1) for age in window_ages])

    def accepted(self, now: float) -> None:
        in_window = self.window.add(now)
        if in_window > self.peak_1s:
            self.peak_1s = in_window

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "rate_limited": self.rate_limited,
            "by_status": {str(code): n for code, n in sorted(self.by_status.items())},
            "peak_1s": self.peak_1s,
            "last_at": self.last_at,
            **({"refusals_ms": [list(ages) for ages in self.refusals]} if self.refusals else {}),
        }


# Distinct undocumented paths kept (a scan of random paths must not grow the counters forever).
UNDOCUMENTED_KEPT = 200


class Counters:
    """Counters keyed by account label (`"green-api:7105187566"`) and provider method name.

    Requests that never reach an account (unknown instance or device, unknown path) are counted in
    `unmatched` only, because there is no account to charge them to. Every request is also
    counted by route: `routes` by the documented route it matched (`"POST
    /waInstance{idInstance}/archiveChat/{apiTokenInstance}"`), `undocumented` by verb and path
    (token masked) when it matched none, so a test can show that nothing called a path the
    providers do not document.
    """

    def __init__(self) -> None:
        self._by_account: dict[str, dict[str, MethodCounter]] = {}
        self.unmatched = 0
        self.routes: dict[str, int] = {}
        self.undocumented: dict[str, int] = {}

    def route(self, template: str) -> None:
        self.routes[template] = self.routes.get(template, 0) + 1

    def no_route(self, verb: str, masked_path: str) -> None:
        """A request no documented route serves (the path already masked)."""
        self.unmatched += 1
        key = f"{verb} {masked_path[:200]}"
        if key in self.undocumented or len(self.undocumented) < UNDOCUMENTED_KEPT:
            self.undocumented[key] = self.undocumented.get(key, 0) + 1

    def method(self, account: str, method: str) -> MethodCounter:
        methods = self._by_account.get(account)
        if methods is None:
            methods = self._by_account[account] = {}
        counter = methods.get(method)
        if counter is None:
            counter = methods[method] = MethodCounter()
        return counter

    def record_status(self, counter: MethodCounter, status: int) -> None:
        counter.by_status[status] = counter.by_status.get(status, 0) + 1

    def reset(self) -> None:
        self._by_account.clear()
        self.unmatched = 0
        self.routes.clear()
        self.undocumented.clear()

    def snapshot(self) -> dict[str, Any]:
        accounts: dict[str, dict[str, Any]] = {}
        calls = rate_limited = 0
        for label in sorted(self._by_account):
            methods = self._by_account[label]
            accounts[label] = {name: methods[name].snapshot() for name in sorted(methods)}
            for counter in methods.values():
                calls += counter.calls
                rate_limited += counter.rate_limited
        return {
            "accounts": accounts,
            "totals": {
                "calls": calls,
                "rate_limited": rate_limited,
                "unmatched": self.unmatched,
                "undocumented": sum(self.undocumented.values()),
            },
            "routes": dict(sorted(self.routes.items())),
            "undocumented": dict(sorted(self.undocumented.items())),
        }
