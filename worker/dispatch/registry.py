"""What workers tell the dispatcher about their accounts, and keep telling it as the file changes.

The dispatcher (a Lua script) needs each account's limits: for each task, its limiter key, interval
and idle gap. Every worker node publishes them for the accounts its file names, at start and
whenever the file changes (no restart: worker/services.py reloads it), and withdraws the accounts
it dropped.
Jobs for an account no node has published wait, as unknown, until one does (or, after
ARCHIVER_UNKNOWN_ACCOUNT_GRACE, go to the dead letters: worker/dispatch/janitor.py). Nodes are
meant to share one accounts file; when they disagree for a while, the last to publish wins.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from config import Account, AccountRegistry, Rate
from worker.contract.tasks import ARCHIVE_TASK, UNARCHIVE_TASK
from worker.services import AccountsFile
from worker.stores.jobs import JobStore
from worker.stores.keys import Keys
from worker.stores.limiter import AccountLimiter

logger = logging.getLogger("chat_archiver.accounts")


def task_method(account: Account, task: str) -> str:
    """The provider method a chat task calls, whose rate limit it runs under."""
    spec = account.spec
    return spec.unarchive_method if task == UNARCHIVE_TASK else spec.archive_method


TASKS = (ARCHIVE_TASK, UNARCHIVE_TASK)
# Accounts per publish_accounts call: one Lua call each (its batches are of 1,000 arguments), and
# no more entries built at a time.
PUBLISH_BATCH = 500


def dispatch_entry(account: Account, limiter: AccountLimiter) -> dict[str, Any]:
    """What dispatch.lua reads of one account: the limit of each task ("l")."""
    return {
        "l": {task: limiter.conf(account, task_method(account, task)).as_list() for task in TASKS}
    }


class _Entries:
    """``dispatch_entry`` for many accounts: the interval and gap of each task are worked out
    once for all the accounts that share their limits (one mapping: config/accounts.py), and
    an account adds only its limiter keys (the limiter's, from the same Keys)."""

    def __init__(self, limiter: AccountLimiter, keys: Keys) -> None:
        self.limiter = limiter
        self.keys = keys
        # By id() of the accounts' rates: the registry being published keeps them alive.
        self._tasks: dict[tuple[str, int], list[tuple[str, str, list[str | int]]]] = {}

    def __call__(self, account: Account) -> dict[str, Any]:
        tasks = self._tasks.get((account.provider, id(account.rates)))
        if tasks is None:
            tasks = []
            for task in TASKS:
                method = task_method(account, task)
                tasks.append((task, method, self.limiter.conf(account, method).as_list()[1:]))
            self._tasks[(account.provider, id(account.rates))] = tasks
        key = account.key
        return {"l": {task: [self.keys.limiter(key, method), *t] for task, method, t in tasks}}


def _limits(account: Account) -> tuple[Rate, ...]:
    return tuple(account.rate(task_method(account, task)) for task in TASKS)


class AccountsPublisher:
    def __init__(
        self, accounts: AccountsFile, store: JobStore, keys: Keys, limiter: AccountLimiter
    ) -> None:
        self.accounts = accounts
        self.store = store
        self.keys = keys
        self.limiter = limiter
        # The registry whose accounts are all in Redis (None: nothing yet). Kept instead of a
        # copy of what was sent: a node may hold a hundred thousand accounts.
        self._published: AccountRegistry | None = None

    def publish(self, registry: AccountRegistry) -> None:
        """Send what changed since the registry last published (everything, the first time),
        and withdraw the accounts it no longer has, a batch at a time."""
        for batch in self._batches(registry):
            self.store.publish_accounts(batch)
        self._published = registry

    def _batches(self, registry: AccountRegistry) -> Iterator[dict[str, dict[str, Any] | None]]:
        before = self._published
        entry = _Entries(self.limiter, self.keys)
        batch: dict[str, dict[str, Any] | None] = {}
        for account in registry:
            old = before.find(account.provider, account.id) if before is not None else None
            if old is None or (old.rates is not account.rates and _limits(old) != _limits(account)):
                batch[account.key] = entry(account)
                if len(batch) >= PUBLISH_BATCH:
                    yield batch
                    batch = {}
        if before is not None:
            for account in before:
                if registry.find(account.provider, account.id) is None:
                    batch[account.key] = None
                    if len(batch) >= PUBLISH_BATCH:
                        yield batch
                        batch = {}
        if batch:
            yield batch

    def check(self) -> None:
        """Publish again when the file changed, when the last publish did not finish, or when
        Redis lost what was published (a Redis restarted without persistence)."""
        self.accounts.reload_if_changed()
        registry = self.accounts.get()
        if self._published is registry and len(registry):
            if self.store.redis.exists(self.keys.accounts):
                return
            self._published = None
        if self._published is not registry:
            self.publish(registry)
