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

import json
import logging
from collections.abc import Iterator
from typing import Any

from config import Account, AccountRegistry, Rate
from worker.contract.tasks import CHAT_TASKS, UNARCHIVE_TASK
from worker.services import AccountsFile
from worker.stores.jobs import JobStore
from worker.stores.keys import Keys
from worker.stores.limiter import AccountLimiter

logger = logging.getLogger("chat_archiver.accounts")


def task_method(account: Account, task: str) -> str:
    """The provider method a chat task calls, whose rate limit it runs under."""
    spec = account.spec
    return spec.unarchive_method if task == UNARCHIVE_TASK else spec.archive_method


# Accounts per publish_accounts call: one Lua call each (of at most 1,000 accounts), and
# no more entries built at a time.
PUBLISH_BATCH = 500


def dispatch_entry(account: Account, limiter: AccountLimiter) -> dict[str, Any]:
    """What a node publishes of one account for dispatch.lua: the limit of each task ("l"), as
    the provider method, interval and gap in µs. It names no account, so every account with the
    same limits has the same entry; publish_accounts.lua stores each account's with its limiter
    key (Keys.limiter's name) in place of the method, which is what dispatch.lua reads."""
    entry: dict[str, Any] = {"l": {}}
    for task in CHAT_TASKS:
        method = task_method(account, task)
        entry["l"][task] = [method, *limiter.spacing(account, method)]
    return entry


def _limits(account: Account) -> tuple[Rate, ...]:
    return tuple(account.rate(task_method(account, task)) for task in CHAT_TASKS)


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
        batch: dict[str, str | None] = {}
        for key, entry in self._changes(registry):
            batch[key] = entry
            if len(batch) >= PUBLISH_BATCH:
                self.store.publish_accounts(batch)
                batch = {}
        if batch:
            self.store.publish_accounts(batch)
        self._published = registry

    def _changes(self, registry: AccountRegistry) -> Iterator[tuple[str, str | None]]:
        before = self._published
        # ``dispatch_entry`` as JSON text, worked out once for all the accounts that share their
        # limits (one mapping: config/accounts.py): a node with 100,000 accounts has a handful.
        # By id() of the accounts' rates: the registry being published keeps them alive.
        texts: dict[tuple[str, int], str] = {}
        for account in registry:
            old = before.find(account.provider, account.id) if before is not None else None
            if old is None or (old.rates is not account.rates and _limits(old) != _limits(account)):
                group = (account.provider, id(account.rates))
                text = texts.get(group)
                if text is None:
                    entry = dispatch_entry(account, self.limiter)
                    text = texts[group] = json.dumps(entry, sort_keys=True)
                yield account.key, text
        for account in before if before is not None else ():
            if registry.find(account.provider, account.id) is None:
                yield account.key, None

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
