"""The Redis that holds our state (job store, limiter, dead letters, locks, counters).

One client per process (config/per_process.py): prefork children must not share the parent's
sockets.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.utils.url import maybe_sanitize_url
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from config import Settings, get_settings
from config.per_process import PerProcess
from config.sentinel import is_sentinel_url
from worker.sentinel import master_client

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


# How long a client waits for any answer; a blocking command must block for less, or its wait
# ends as a socket timeout (and a reconnect) instead of Redis's empty answer.
SOCKET_TIMEOUT = 10


def connect(url: str, *, decode: bool = True, settings: Settings | None = None) -> redis.Redis:
    """A client of the Redis at ``url``; for a sentinel:// URL, of the master its Sentinels name
    (worker/sentinel.py), with the master's name from ``settings`` (this process's if None)."""
    # Backoff from 50 ms doubling to 1 s: about one retry a second once Redis has been gone a while.
    retries = 4 + int(_outage_grace)
    options: dict[str, Any] = {
        "decode_responses": decode,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": 5,
        # No PING before reusing an idle connection: under MISCONF Redis refuses even PING, and
        # a check that fails would refuse every read too (status must still answer). A dead
        # connection shows on use, and the retries below reconnect.
        "retry": Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries),
        # A failover is one more outage: the master's connection errors, or (with Sentinel) the
        # demoted master's READONLY/NOREPLICAS, retried on the master the Sentinels name now.
        "retry_on_error": [RedisConnectionError, RedisTimeoutError, BusyLoadingError],
    }
    if is_sentinel_url(url):
        return master_client(url, settings or get_settings(), **options)
    return redis.Redis.from_url(url, **options)


def refuses_writes(error: BaseException) -> bool:
    """Redis answered that it takes no writes now: full at maxmemory (noeviction), a read-only
    replica (after a failover), a failed save with stop-writes-on-bgsave-error, too few replicas.
    Nothing was written: the same step can be sent again once it takes them."""
    if isinstance(error, OutOfMemoryError | ReadOnlyError):
        return True
    return isinstance(error, ResponseError) and str(error).startswith(("MISCONF", "NOREPLICAS"))


def safe_url(url: str) -> str:
    """A Redis URL fit to print or log: its password masked (in each part of a sentinel:// URL)."""
    return ";".join(str(maybe_sanitize_url(part)) for part in url.split(";"))


_state = PerProcess(lambda: connect(get_settings().state_url))


def state_redis() -> redis.Redis:
    return _state.get()


def reset_state_redis() -> None:
    """Forget the client (tests that switch Redis, and settings reloads)."""
    _state.forget()
