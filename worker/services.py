"""The process's shared services, built once from settings: accounts, limiter, dead letters.

Built lazily so importing the app does not read files or open connections; rebuilt per process
because Redis clients must not cross a fork (see worker/state.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import redis

from config import AccountRegistry, Settings, get_settings, load_accounts
from worker.circuit import AccountCircuit
from worker.deadletters import DeadLetterStore
from worker.limiter import AccountLimiter
from worker.metrics import MetricsRecorder
from worker.pending import PendingJobs
from worker.state import connect, reset_state_redis, state_redis
from worker.unarchivable import UnarchivableChats


@dataclass(frozen=True)
class Services:
    settings: Settings
    redis: redis.Redis  # our state (ARCHIVER_REDIS_URL, else the broker's)
    broker: redis.Redis  # the broker's Redis, where the queues are (the same client if shared)
    limiter: AccountLimiter
    dead_letters: DeadLetterStore
    pending: PendingJobs
    circuit: AccountCircuit
    metrics: MetricsRecorder
    unarchivable: UnarchivableChats


@lru_cache(maxsize=1)
def get_accounts() -> AccountRegistry:
    return load_accounts(get_settings().accounts_file)


_services: tuple[int, Services] | None = None


def get_services() -> Services:
    global _services
    pid = os.getpid()
    if _services is None or _services[0] != pid:
        settings = get_settings()
        client = state_redis()
        shared = settings.broker_url == settings.state_url
        _services = (
            pid,
            Services(
                settings=settings,
                redis=client,
                broker=client if shared else connect(settings.broker_url),
                limiter=AccountLimiter(client, settings.key_prefix, settings.limiter_margin),
                dead_letters=DeadLetterStore(client, settings.key_prefix),
                pending=PendingJobs(client, settings.key_prefix, settings.pending_ttl),
                circuit=AccountCircuit(
                    client,
                    settings.key_prefix,
                    settings.circuit_cooldown,
                    settings.circuit_cooldown_max,
                    settings.circuit_max_pause,
                    # A probe job's run ends by the hard time limit at the latest.
                    probe_claim_ttl=settings.task_time_limit + 10,
                ),
                metrics=MetricsRecorder(client, settings.key_prefix),
                unarchivable=UnarchivableChats(client, settings.key_prefix),
            ),
        )
    return _services[1]


def reset_services() -> None:
    """Forget everything built from settings (tests that change the environment)."""
    global _services
    _services = None
    get_accounts.cache_clear()
    get_settings.cache_clear()
    reset_state_redis()
