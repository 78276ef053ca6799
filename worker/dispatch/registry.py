"""What workers tell the dispatcher about their accounts, and keep telling it as the file changes.

The dispatcher (a Lua script) needs each account's limit and the names of its limiter and circuit
keys. Every worker node publishes them for the accounts its file names, at start and whenever the
file changes (no restart: worker/services.py reloads it), and withdraws the accounts it dropped.
Jobs for an account no node has published wait, as unknown, until one does (or, after
ARCHIVER_UNKNOWN_ACCOUNT_GRACE, go to the dead letters: worker/dispatch/janitor.py). Nodes are
meant to share one accounts file; when they disagree for a while, the last to publish wins.
"""

from __future__ import annotations

import logging
from typing import Any

from config import Account, AccountRegistry
from worker.services import AccountsFile
from worker.stores.jobs import JobStore
from worker.stores.keys import Keys
from worker.stores.limiter import MICROS, AccountLimiter

logger = logging.getLogger("chat_archiver.accounts")


def dispatch_entry(account: Account, keys: Keys, limiter: AccountLimiter) -> dict[str, Any]:
    """What dispatch.lua reads of one account."""
    method = account.spec.archive_method
    tat, stats, recent = limiter.acquire_keys(account, method)
    return {
        "interval": int(limiter.interval(account.rate(method)) * MICROS),
        "tat": tat,
        "stats": stats,
        "recent": recent,
        "circuit": keys.circuit(account.key),
        "probe": keys.circuit_probe(account.key),
    }


class AccountsPublisher:
    def __init__(
        self, accounts: AccountsFile, store: JobStore, keys: Keys, limiter: AccountLimiter
    ) -> None:
        self.accounts = accounts
        self.store = store
        self.keys = keys
        self.limiter = limiter
        self._published: dict[str, dict[str, Any]] = {}

    def publish(self, registry: AccountRegistry) -> None:
        entries = {a.key: dispatch_entry(a, self.keys, self.limiter) for a in registry}
        changes: dict[str, dict[str, Any] | None] = {
            key: entry for key, entry in entries.items() if self._published.get(key) != entry
        }
        changes.update({key: None for key in self._published.keys() - entries.keys()})
        if changes:
            self.store.publish_accounts(changes)
        self._published = entries

    def check(self) -> None:
        """Publish again when the file changed, or when Redis lost what was published (a Redis
        restarted without persistence)."""
        changed = self.accounts.reload_if_changed()
        registry = self.accounts.get()
        if changed or (len(registry) and not self.store.redis.exists(self.keys.accounts)):
            if not changed:
                self._published = {}
            self.publish(registry)
