"""One rate limit per (provider, account, method), shared by every worker process and host.

Celery's own ``rate_limit`` is per worker instance and bursty on Redis (celery#5732, #4727), so the
limit lives in Redis. The algorithm is GCRA (the "generic cell rate algorithm", as in
redis-cell and throttled): one key holds the account's *theoretical arrival time* (TAT), the
moment the next call may go. A permit reserves the slot at TAT and moves TAT one interval on,
atomically in a Lua script on Redis's own clock, so every host agrees on time.

Why GCRA and not a token bucket or Dramatiq's sliding windows: those allow a burst of the whole
limit at once, and a burst of N followed by another N one window later reaches the provider a few
milliseconds apart and is answered 429 by a sliding-window limiter. GCRA with no burst spaces
calls evenly, so no one-second window holds more than the limit even with some jitter between
permit and arrival; the interval is made ``margin`` wider than the provider's to absorb that
jitter.

A permit is a reservation: ``wait`` says how long to sleep before calling. A slot further away
than ``max_wait`` is not reserved (the caller reschedules the job instead of holding a worker).

A call can still go out late: its process descheduled on a busy host, its run handed the slot
after it had passed. Sent anyway, a call late by more than the margin's slack would share a
provider window with the call a whole period after it. So just before sending, a caller whose
own clock says it may be later than ``late_allowance`` (a fifth of the slack) asks Redis, which
reads the lateness on its clock and pushes the limit's later slots back by the excess, at most
one interval (``keep_distance``, lua/push_back.lua): the call a period later moves with it. The
rest of the slack (four fifths) absorbs what happens after the send: building the request, the
network, the provider's own clock. Each late call pushes on its own: calls all late alike cost
the account their excess each time, though they would have kept their spacing.
The dispatcher reserves each archive job's first permit as it hands the job out
(worker/stores/lua/dispatch.lua); the algorithm itself is written once, in lua/lib/gcra.lua.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from config import Account, Rate
from worker.stores.clock import Clock, RedisClock
from worker.stores.keys import Keys
from worker.stores.scripts import load

RECENT_WINDOW = 10.0  # seconds over which "recent rate" is measured
MICROS = 1_000_000
# The share of the margin's slack (margin x period) a call may be late by before the limit's
# later slots are pushed back; the rest is left for jitter after the send.
LATE_SHARE = 0.2
# Limits read per pipeline round trip: thousands of accounts in a few round trips, no one reply
# too large for Redis's output buffer.
READ_BATCH = 500


@dataclass(frozen=True)
class Permit:
    granted: bool
    wait: float  # granted: seconds to sleep before calling; refused: seconds to the next slot
    late: float = 0.0  # granted: how far the slot had already passed when the permit was given
    slot: int = 0  # granted: the slot itself, µs on Redis's clock


@dataclass(frozen=True)
class LimiterState:
    account: str
    method: str
    allowed_per_second: float
    target_per_second: float  # what the limiter aims at: allowed, less the margin
    recent_per_second: float
    granted: int
    deferred: int
    rate_limited: int  # 429s answered by the provider despite the limiter
    late: int  # calls sent later than the allowance, which pushed the later slots back
    waited_seconds: float
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

    def _keys(self, account: Account, method: str) -> tuple[str, str, str]:
        base = self._keys_registry.limiter(account.key, method)
        return base, f"{base}:stats", f"{base}:recent"

    def interval(self, rate: Rate) -> float:
        return rate.interval * (1.0 + self._margin)

    def late_allowance(self, rate: Rate) -> float:
        """How late past its slot a call may go out without moving the limit's later slots:
        a fifth of the slack the margin leaves in each window of the provider's period."""
        return rate.period * self._margin * LATE_SHARE

    def acquire_keys(self, account: Account, method: str) -> list[str]:
        return list(self._keys(account, method))

    def acquire(self, account: Account, method: str, max_wait: float) -> Permit:
        tat, stats, recent = self._keys(account, method)
        interval = self.interval(account.rate(method))
        granted, wait, slot = load("acquire").run(
            self._redis,
            keys={"tat": tat, "stats": stats, "recent": recent},
            args={
                "now": self.clock.arg(),
                "interval_us": int(interval * MICROS),
                "max_wait_us": int(max_wait * MICROS),
                "window_us": int(RECENT_WINDOW * MICROS),
            },
        )
        return Permit(granted=bool(int(granted)), wait=float(wait) / MICROS, slot=int(slot))

    def keep_distance(self, account: Account, method: str, asked: float, permit: Permit) -> float:
        """Call just before sending on ``permit``, asked for at monotonic time ``asked``. This
        process's clock gives an upper bound of the lateness (Redis read its clock after
        ``asked``); when that passes ``late_allowance`` (a busy host, a slot that had passed
        when the permit came, or only a slow Redis), Redis reads the lateness on its own clock
        and pushes the later slots back by the excess, at most one interval. Returns the
        seconds pushed. Calls on time cost no round trip."""
        late = time.monotonic() - asked - permit.wait + permit.late
        allowance = self.late_allowance(account.rate(method))
        if late <= allowance:
            return 0.0
        tat_key, stats_key, _ = self._keys(account, method)
        pushed = load("push_back").run(
            self._redis,
            keys={"tat": tat_key, "stats": stats_key},
            args={
                "now": self.clock.arg(),
                "slot_us": permit.slot,
                "allowance_us": int(allowance * MICROS),
                "interval_us": int(self.interval(account.rate(method)) * MICROS),
            },
        )
        return int(pushed) / MICROS

    def penalize(self, account: Account, method: str, delay: float | None) -> float:
        """The provider answered 429: hold every worker off this account's ``method`` for
        ``delay`` seconds (its Retry-After) or, when it gave none, one whole period of the
        account's rate (its window as far as we know it: a second for "10/s", a minute for
        "600/m"). Returns the seconds until the next slot, which other jobs may have booked
        further away still."""
        rate = account.rate(method)
        delay = rate.period if delay is None else delay
        tat_key, stats_key, _ = self._keys(account, method)
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
        per READ_BATCH limits, so the exporter's scrape costs the same few round trips at 5 or
        5,000 accounts."""
        replies: list[object] = []
        for start in range(0, len(limits), READ_BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for account, method in limits[start : start + READ_BATCH]:
                tat_key, stats_key, recent_key = self._keys(account, method)
                pipe.get(tat_key)
                pipe.hgetall(stats_key)
                pipe.zrange(recent_key, 0, -1, withscores=True)
            replies.extend(pipe.execute())
        now = self.clock.now(self._redis) * MICROS
        window_start = now - RECENT_WINDOW * MICROS
        states = []
        for n, (account, method) in enumerate(limits):
            tat, stats, recent = replies[3 * n : 3 * n + 3]
            assert isinstance(stats, dict) and isinstance(recent, list)
            recent_count = sum(1 for _, score in recent if window_start < score <= now)
            rate = account.rate(method)
            states.append(
                LimiterState(
                    account=account.key,
                    method=method,
                    allowed_per_second=rate.per_second,
                    target_per_second=1.0 / self.interval(rate),
                    recent_per_second=recent_count / RECENT_WINDOW,
                    granted=int(stats.get("granted", 0)),
                    deferred=int(stats.get("deferred", 0)),
                    rate_limited=int(stats.get("rate_limited", 0)),
                    late=int(stats.get("late", 0)),
                    waited_seconds=int(stats.get("waited_us", 0)) / MICROS,
                    next_permit_in=max(0.0, (float(str(tat)) - now) / MICROS) if tat else 0.0,
                )
            )
        return states
