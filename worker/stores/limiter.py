"""One rate limit per (provider, account, method), shared by every worker process and host.

Celery's own ``rate_limit`` is per worker instance and bursty on Redis (celery#5732, #4727), so the
limit lives in Redis. The algorithm is GCRA (the generic cell rate algorithm, as in redis-cell):
one key holds the limit's theoretical arrival time (TAT), the moment its next call may go; a
permit reserves the slot at TAT and moves TAT one interval on, atomically, on Redis's clock
(lua/lib/gcra.lua). Calls are spaced evenly with no burst: a token bucket or a fixed window lets a
whole period's calls through at once, which a provider counting a sliding window answers 429.

The interval is ``margin`` wider than the provider's, because its window semantics are
undocumented and a call reaches it some milliseconds after its slot. A call may be late by up to
``late_allowance`` (a fifth of the slack the margin leaves in a period) with nothing done; the rest
of the slack absorbs what happens after the send. A call later than that pushes the limit's later
slots back by the excess, at most one interval (``keep_distance``, lua/push_back.lua), so the call
a period after it cannot share its provider window. A limit that was idle gives its call the slot
"now" and keeps the next one ``idle_gap`` further: that call travels to a worker after its slot
was reserved, and is the likeliest to leave late after its lateness was read (a pool process
waking, a connection to open again), which nothing measures.

Archive and unarchive calls get their permit when the dispatcher hands the job out
(lua/dispatch.lua); retries and sweeps' listing calls ask here (``acquire``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from config import Account, Rate
from worker.stores.clock import MICROS, Clock, RedisClock
from worker.stores.keys import Keys
from worker.stores.scripts import load

# The share of the margin's slack (margin x period) a call may be late by before the limit's
# later slots are pushed back; the rest is left for jitter after the send.
LATE_SHARE = 0.2
# Limits read per pipeline round trip: thousands of accounts in a few round trips.
READ_BATCH = 500


@dataclass(frozen=True)
class Permit:
    granted: bool
    wait: float  # granted: seconds to sleep before calling; refused: seconds to the next slot
    slot: int = 0  # granted: the slot itself, µs on Redis's clock


@dataclass(frozen=True)
class LimiterState:
    account: str
    method: str
    allowed_per_second: float
    target_per_second: float  # what the limiter aims at: allowed, less the margin
    deferred: int  # permits refused to retries and listing calls (the job waited its turn)
    rate_limited: int  # 429s answered by the provider despite the limiter
    late: int  # calls sent later than the allowance, which pushed the later slots back
    next_permit_in: float


class AccountLimiter:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        margin: float = 0.025,
        clock: Clock | None = None,
    ) -> None:
        self._redis = client
        self._keys_registry = Keys(prefix)
        self._margin = margin
        self.clock: Clock = clock or RedisClock()

    def keys(self, account: Account, method: str) -> tuple[str, str]:
        """The limit's TAT key and its stats key."""
        base = self._keys_registry.limiter(account.key, method)
        return base, f"{base}:stats"

    def interval(self, rate: Rate) -> float:
        return rate.interval * (1.0 + self._margin)

    def late_allowance(self, rate: Rate) -> float:
        """How late past its slot a call may go out without moving the limit's later slots:
        a fifth of the slack the margin leaves in each window of the provider's period."""
        return rate.period * self._margin * LATE_SHARE

    def idle_gap(self, rate: Rate) -> float:
        """How much further than an interval the next slot is kept after an idle limit's slot:
        the whole slack the margin leaves in a window (25 ms at 10/s), at most an interval."""
        return min(rate.period * self._margin, self.interval(rate))

    def spacing(self, account: Account, method: str) -> tuple[int, int]:
        """What dispatch.lua and acquire.lua read of one limit: its interval and idle gap (µs)."""
        rate = account.rate(method)
        return int(self.interval(rate) * MICROS), int(self.idle_gap(rate) * MICROS)

    def acquire(self, account: Account, method: str, max_wait: float) -> Permit:
        tat, stats = self.keys(account, method)
        interval_us, gap_us = self.spacing(account, method)
        granted, wait, slot = load("acquire").run(
            self._redis,
            keys={"tat": tat, "stats": stats},
            args={
                "now": self.clock.arg(),
                "interval_us": interval_us,
                "gap_us": gap_us,
                "max_wait_us": int(max_wait * MICROS),
            },
        )
        return Permit(granted=bool(int(granted)), wait=float(wait) / MICROS, slot=int(slot))

    def keep_distance(
        self, account: Account, method: str, late: float, slot: int, idle: bool = False
    ) -> float:
        """Call just before sending, ``late`` seconds past the slot ``slot`` by this process's
        clock. Beyond ``late_allowance`` (twice that for a slot given by an idle limit, whose
        next slot was kept ``idle_gap`` further), Redis reads the lateness on its own clock and
        pushes the later slots back by the excess, at most one interval. Returns the seconds
        pushed. Calls on time cost no round trip."""
        rate = account.rate(method)
        allowance = self.late_allowance(rate) * (2 if idle else 1)
        if late <= allowance or not slot:
            return 0.0
        tat_key, stats_key = self.keys(account, method)
        pushed = load("push_back").run(
            self._redis,
            keys={"tat": tat_key, "stats": stats_key},
            args={
                "now": self.clock.arg(),
                "slot_us": slot,
                "allowance_us": int(allowance * MICROS),
                "interval_us": int(self.interval(rate) * MICROS),
            },
        )
        return int(pushed) / MICROS

    def penalize(self, account: Account, method: str, delay: float | None) -> float:
        """The provider answered 429: hold every worker off this account's ``method`` for
        ``delay`` seconds (its Retry-After) or, when it gave none, one whole period of the
        account's rate (its window as far as we know it). Returns the seconds until the next
        slot, which other jobs may have booked further away still."""
        rate = account.rate(method)
        delay = rate.period if delay is None else delay
        tat_key, stats_key = self.keys(account, method)
        result = load("penalize").run(
            self._redis,
            keys={"tat": tat_key, "stats": stats_key},
            args={"now": self.clock.arg(), "delay_us": int(delay * MICROS)},
        )
        return float(result) / MICROS

    def state(self, account: Account, method: str) -> LimiterState:
        return self.states([(account, method)])[0]

    def states(self, limits: Sequence[tuple[Account, str]]) -> list[LimiterState]:
        """The state of each (account, method) limit, in order: one clock read and a round trip
        per READ_BATCH limits, whatever the number of accounts."""
        replies: list[object] = []
        for start in range(0, len(limits), READ_BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for account, method in limits[start : start + READ_BATCH]:
                tat_key, stats_key = self.keys(account, method)
                pipe.get(tat_key)
                pipe.hgetall(stats_key)
            replies.extend(pipe.execute())
        now = self.clock.now(self._redis) * MICROS
        states = []
        for n, (account, method) in enumerate(limits):
            tat, stats = replies[2 * n : 2 * n + 2]
            assert isinstance(stats, dict)
            rate = account.rate(method)
            states.append(
                LimiterState(
                    account=account.key,
                    method=method,
                    allowed_per_second=rate.per_second,
                    target_per_second=1.0 / self.interval(rate),
                    deferred=int(stats.get("deferred", 0)),
                    rate_limited=int(stats.get("rate_limited", 0)),
                    late=int(stats.get("late", 0)),
                    next_permit_in=max(0.0, (float(str(tat)) - now) / MICROS) if tat else 0.0,
                )
            )
        return states
