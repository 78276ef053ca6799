"""The process's shared services, built once from settings: accounts, stores, limiter.

Built lazily so importing the app does not read files or open connections; rebuilt per process
because Redis clients must not cross a fork (config/per_process.py).

The accounts registry follows its file: a process looks at the file's identity (inode, size,
modification time) at most every few seconds and reloads it when it changed, so an account added
to (or removed from) the file takes effect on running workers without a restart. A file that no
longer loads keeps the registry it replaces, with one error in the log.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from redis import Redis

from config import AccountRegistry, ConfigError, Settings, get_settings, load_accounts
from config.per_process import ForkSafeLock, PerProcess, forget_all
from worker.stores.circuit import AccountCircuit
from worker.stores.client import connect, state_redis
from worker.stores.clock import Clock
from worker.stores.deadletters import DeadLetterStore
from worker.stores.jobs import JobStore
from worker.stores.keys import Keys
from worker.stores.limiter import AccountLimiter
from worker.stores.metrics import MetricsRecorder
from worker.stores.unarchivable import UnarchivableChats

logger = logging.getLogger("chat_archiver.accounts")

# A pool process looks at the accounts file at most this often (a stat call).
RELOAD_CHECK = 2.0


@dataclass(frozen=True)
class Services:
    settings: Settings
    redis: Redis  # our state (ARCHIVER_REDIS_URL, else the broker's)
    broker: Redis  # the broker's Redis, where the queues are (the same client if shared)
    keys: Keys
    jobs: JobStore
    limiter: AccountLimiter
    dead_letters: DeadLetterStore
    circuit: AccountCircuit
    metrics: MetricsRecorder
    unarchivable: UnarchivableChats

    def use_clock(self, clock: Clock) -> None:
        """Run every store on ``clock`` (tests pin it: worker/stores/clock.py)."""
        self.jobs.clock = clock
        self.limiter.clock = clock
        self.circuit.clock = clock

    @property
    def shared(self) -> bool:
        """The broker is the state Redis: one script may touch queues and state together."""
        return self.settings.broker_url == self.settings.state_url


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class AccountsFile:
    """The accounts registry of this process, reloaded when its file changes. Pool children
    inherit it from the node (see ``_accounts``); each has its own lock after the fork."""

    def __init__(
        self, path: Path, check_every: float = RELOAD_CHECK, *, secrets: bool = True
    ) -> None:
        self.path = path
        self.secrets = secrets
        self.check_every = check_every
        self._lock = ForkSafeLock()
        self._registry: AccountRegistry | None = None
        self._identity: tuple[int, int, int] | None = None
        self._checked = 0.0
        self.error: str | None = None  # why the file's current version was not loaded

    def get(self) -> AccountRegistry:
        """The registry, loaded on first use (a wrong file raises ConfigError then)."""
        if self._registry is None:
            with self._lock:
                if self._registry is None:
                    self._identity = _identity(self.path)
                    self._registry = load_accounts(self.path, secrets=self.secrets)
                    self._checked = time.monotonic()
            return self._registry
        if time.monotonic() - self._checked >= self.check_every:
            self.reload_if_changed()
        return self._registry

    def reload_if_changed(self) -> bool:
        """Reload when the file changed; True when the registry was replaced."""
        with self._lock:
            self._checked = time.monotonic()
            identity = _identity(self.path)
            if identity == self._identity:
                return False
            self._identity = identity
            try:
                registry = load_accounts(self.path, secrets=self.secrets)
            except ConfigError as error:
                if str(error) != self.error:
                    logger.error("accounts file not reloaded, keeping the previous one: %s", error)
                self.error = str(error)
                return False
            self.error = None
            before = self._registry
            self._registry = registry
        if before is not None:
            added = {a.key for a in registry} - {a.key for a in before}
            removed = {a.key for a in before} - {a.key for a in registry}
            logger.info(
                "accounts file reloaded: %d accounts (%d added, %d removed)",
                len(registry),
                len(added),
                len(removed),
            )
        return True


# Loaded by the node's main process before Celery forks its pool (worker_init): the children
# inherit the registry instead of each parsing the file again at its first job.
_accounts = PerProcess(lambda: AccountsFile(get_settings().accounts_file), survives_fork=True)
# The same file with its tokens left unread, for what calls no provider (status, limits, the
# exporter): those run where the tokens are not set.
_accounts_unread = PerProcess(
    lambda: AccountsFile(get_settings().accounts_file, secrets=False), survives_fork=True
)


def accounts_file() -> AccountsFile:
    return _accounts.get()


def get_accounts(*, secrets: bool = True) -> AccountRegistry:
    return (_accounts if secrets else _accounts_unread).get().get()


def build_services() -> Services:
    settings = get_settings()
    client = state_redis()
    shared = settings.broker_url == settings.state_url
    keys = Keys(settings.key_prefix)
    return Services(
        settings=settings,
        redis=client,
        broker=client if shared else connect(settings.broker_url),
        keys=keys,
        jobs=JobStore(
            client,
            keys,
            lease=settings.lease_timeout,
            claim_ttl=settings.pending_ttl,
            # A probe job's run ends by the hard time limit at the latest.
            probe_ttl=settings.task_time_limit + 10,
        ),
        limiter=AccountLimiter(client, settings.key_prefix, settings.limiter_margin),
        dead_letters=DeadLetterStore(client, settings.key_prefix),
        circuit=AccountCircuit(
            client,
            settings.key_prefix,
            settings.circuit_cooldown,
            settings.circuit_cooldown_max,
            settings.circuit_max_pause,
        ),
        metrics=MetricsRecorder(client, settings.key_prefix),
        unarchivable=UnarchivableChats(client, settings.key_prefix),
    )


_services = PerProcess(build_services)


def get_services() -> Services:
    return _services.get()


def reset_services() -> None:
    """Forget everything built from settings, in every per-process cache (tests that change the
    environment)."""
    get_settings.cache_clear()
    forget_all()
