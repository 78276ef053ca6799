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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from config import Account, Rate

# A Lua function, so a job's admission script (tasks/bookkeeping.py) can compose it.
# Keys: tat, stats hash, recent zset. Interval, max wait and recent window in µs.
# Returns {granted (0/1), wait µs as a string} (Lua numbers would be truncated to integers).
ACQUIRE_LUA = """
local function acquire(tat_key, stats_key, recent_key, interval, max_wait, window)
  interval, max_wait, window = tonumber(interval), tonumber(max_wait), tonumber(window)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local tat = tonumber(redis.call('GET', tat_key) or now)
  if tat < now then tat = now end
  local wait = tat - now
  if wait > max_wait then
    redis.call('HINCRBY', stats_key, 'deferred', 1)
    return {0, tostring(wait)}
  end
  local next_tat = tat + interval
  redis.call('SET', tat_key, string.format('%d', next_tat), 'PX',
             math.floor((next_tat - now) / 1000) + 60000)
  redis.call('HINCRBY', stats_key, 'granted', 1)
  redis.call('HINCRBY', stats_key, 'waited_us', wait)
  redis.call('ZADD', recent_key, tat, string.format('%d', tat))
  redis.call('ZREMRANGEBYSCORE', recent_key, '-inf', now - window)
  redis.call('PEXPIRE', recent_key, math.floor(window / 1000) * 2 + 60000)
  return {1, tostring(wait)}
end
"""
_ACQUIRE = ACQUIRE_LUA + "return acquire(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])"

# KEYS: tat, stats hash. ARGV: delay µs. Pushes the next slot at least `delay` away (a 429).
# Returns µs until the next slot (further than `delay` if others had booked beyond it).
_PENALIZE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local not_before = now + tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < not_before then
  redis.call('SET', KEYS[1], string.format('%d', not_before), 'PX',
             math.floor(tonumber(ARGV[1]) / 1000) + 60000)
  tat = not_before
end
redis.call('HINCRBY', KEYS[2], 'rate_limited', 1)
redis.call('HSET', KEYS[2], 'last_rate_limited_at', string.format('%d', now))
return string.format('%d', tat - now)
"""

RECENT_WINDOW = 10.0  # seconds over which "recent rate" is measured
MICROS = 1_000_000


@dataclass(frozen=True)
class Permit:
    granted: bool
    wait: float  # granted: seconds to sleep before calling; refused: seconds to the next slot


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
    waited_seconds: float
    next_permit_in: float


class AccountLimiter:
    def __init__(self, client: redis.Redis, prefix: str, margin: float = 0.03) -> None:
        self._redis = client
        self._prefix = prefix
        self._margin = margin
        self._acquire = client.register_script(_ACQUIRE)
        self._penalize = client.register_script(_PENALIZE)

    def _keys(self, account: Account, method: str) -> tuple[str, str, str]:
        base = f"{self._prefix}:limiter:{account.provider}:{account.id}:{method}"
        return base, f"{base}:stats", f"{base}:recent"

    def interval(self, rate: Rate) -> float:
        return rate.interval * (1.0 + self._margin)

    def acquire_keys(self, account: Account, method: str) -> list[str]:
        return list(self._keys(account, method))

    def acquire_args(self, account: Account, method: str, max_wait: float) -> list[int]:
        interval = self.interval(account.rate(method))
        return [int(interval * MICROS), int(max_wait * MICROS), int(RECENT_WINDOW * MICROS)]

    @staticmethod
    def permit(reply: list[Any]) -> Permit:
        granted, wait = reply
        return Permit(granted=bool(int(granted)), wait=float(wait) / MICROS)

    def acquire(self, account: Account, method: str, max_wait: float) -> Permit:
        reply = self._acquire(
            keys=self.acquire_keys(account, method),
            args=self.acquire_args(account, method, max_wait),
        )
        return self.permit(reply)

    def penalize(self, account: Account, method: str, delay: float | None) -> float:
        """The provider answered 429: hold every worker off this account's ``method`` for
        ``delay`` seconds (its Retry-After) or, when it gave none, one whole period of the
        account's rate (its window as far as we know it: a second for "10/s", a minute for
        "600/m"). Returns the seconds until the next slot, which other jobs may have booked
        further away still."""
        rate = account.rate(method)
        delay = rate.period if delay is None else delay
        tat_key, stats_key, _ = self._keys(account, method)
        result = self._penalize(keys=[tat_key, stats_key], args=[int(delay * MICROS)])
        return float(result) / MICROS

    def state(self, account: Account, method: str) -> LimiterState:
        tat_key, stats_key, recent_key = self._keys(account, method)
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        pipe.get(tat_key)
        pipe.hgetall(stats_key)
        pipe.zrange(recent_key, 0, -1, withscores=True)
        (seconds, micros), tat, stats, recent = pipe.execute()
        now = seconds * MICROS + micros
        window_start = now - RECENT_WINDOW * MICROS
        recent_count = sum(1 for _, score in recent if window_start < score <= now)
        rate = account.rate(method)
        return LimiterState(
            account=account.key,
            method=method,
            allowed_per_second=rate.per_second,
            target_per_second=1.0 / self.interval(rate),
            recent_per_second=recent_count / RECENT_WINDOW,
            granted=int(stats.get("granted", 0)),
            deferred=int(stats.get("deferred", 0)),
            rate_limited=int(stats.get("rate_limited", 0)),
            waited_seconds=int(stats.get("waited_us", 0)) / MICROS,
            next_permit_in=max(0.0, (float(tat) - now) / MICROS) if tat else 0.0,
        )
