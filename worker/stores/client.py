"""The Redis that holds our state (job store, limiter, dead letters, locks, counters).

One client per process (config/per_process.py): prefork children must not share the parent's
sockets.
"""

from __future__ import annotations

import redis
from kombu.utils.url import maybe_sanitize_url
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from config import get_settings
from config.per_process import PerProcess

# How long a command keeps being retried while Redis is unreachable or loading its data after a
# restart. Short for the CLI and producers (they report it); workers raise it to
# ARCHIVER_REDIS_OUTAGE_GRACE (worker/celery_app.py) so a run that has its provider's answer
# waits to record it instead of losing it. Our scripts are safe to send twice (stores/jobs.py).
_outage_grace = 1.0


def set_outage_grace(seconds: float) -> None:
    """How long this process's Redis commands ride out an outage; clients built from now on."""
    global _outage_grace
    if seconds != _outage_grace:
        _outage_grace = seconds
        reset_state_redis()


def connect(url: str, *, decode: bool = True) -> redis.Redis:
    # Backoff from 50 ms doubling to 1 s: about one retry a second once Redis has been gone a while.
    retries = 4 + int(_outage_grace)
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, BusyLoadingError],
    )


def safe_url(url: str) -> str:
    """A Redis URL fit to print or log: its password masked."""
    return str(maybe_sanitize_url(url))


_state = PerProcess(lambda: connect(get_settings().state_url))


def state_redis() -> redis.Redis:
    return _state.get()


def reset_state_redis() -> None:
    """Forget the client (tests that switch Redis, and settings reloads)."""
    _state.forget()
