"""One sweep of one account: find its inactive chats (tasks/sweep/finders.py), keep those its
policy selects (tasks/sweep/policy.py), and enqueue an archive job for each through the producer,
so a chat already pending is not enqueued twice, with ``source`` "sweep". A per-account lock makes
an overlapping tick skip instead of listing the account twice."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import httpx
from redis.exceptions import LockError
from redis.lock import Lock

from config import Account, SweepPolicy
from tasks.providers import ChatInfo, ListingError, shared_client
from tasks.sweep.calls import ListingCalls
from tasks.sweep.finders import FINDERS
from tasks.sweep.policy import SweepError, SweepSummary, skip_reason
from worker.producer import ArchiveProducer, default_producer
from worker.services import Services

logger = logging.getLogger("chat_archiver.sweep")


class Sweeper:
    def __init__(
        self,
        services: Services,
        producer: Callable[[], ArchiveProducer] = default_producer,
        client_factory: Callable[[], httpx.Client] = shared_client,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.services = services
        self.settings = services.settings
        self.producer = producer
        self.client_factory = client_factory
        self.sleep = sleep
        self.clock = clock

    def sweep(
        self, account: Account, *, dry_run: bool = False, list_chats: bool = False
    ) -> SweepSummary:
        if account.sweep is None:
            raise SweepError(f"{account.key} has no [accounts.sweep] policy in the accounts file")
        summary = SweepSummary(account.key, dry_run, chats=[] if list_chats else None)
        started = time.monotonic()
        # A dry run changes nothing: it needs no lock and never makes a real sweep skip.
        lock = None if dry_run else self._lock(account)
        if lock is not None and not lock.acquire():
            summary.status = "skipped"
            summary.error = "another sweep of this account is running"
            return summary
        try:
            self._run(account, account.sweep, summary, dry_run)
        except ListingError as error:
            summary.status, summary.error = "failed", str(error)
        finally:
            if lock is not None:
                with contextlib.suppress(LockError):  # expired under a very long sweep
                    lock.release()
            summary.seconds = round(time.monotonic() - started, 3)
        log = logger.warning if summary.status == "failed" else logger.info
        log(
            "sweep %s %s: listed %d, selected %d, enqueued %d, duplicates %d, refused %d%s",
            account.key,
            summary.status,
            summary.listed,
            summary.selected,
            summary.enqueued,
            summary.duplicates,
            summary.refused,
            f" ({summary.error})" if summary.error else "",
        )
        return summary

    def _run(
        self, account: Account, policy: SweepPolicy, summary: SweepSummary, dry_run: bool
    ) -> None:
        cutoff = self.clock() - policy.inactive_after
        # Chats the provider refused lately for want of an incoming message (a sweep would
        # only dead-letter them again: worker/stores/unarchivable.py).
        refused = self.services.unarchivable.since(account.provider, account.id, cutoff)
        calls = ListingCalls(self.services, account, summary, self.sleep)
        found = FINDERS[account.provider].chats(
            calls, self.client_factory(), account, policy, cutoff
        )

        def selected() -> Iterator[ChatInfo]:
            for chat in found:
                summary.listed += 1
                reason = skip_reason(policy, chat, cutoff)
                if reason is None and chat.id in refused:
                    reason = "no incoming message"
                if reason is not None:
                    summary.skipped[reason] += 1
                    continue
                summary.selected += 1
                if summary.chats is not None:
                    summary.chats.append(chat.id)
                yield chat

        if dry_run:
            for _ in selected():
                pass
            return
        rows = (
            {
                "provider": account.provider,
                "account": account.id,
                "chat_id": chat.id,
                "source": "sweep",
            }
            for chat in selected()
        )
        result = self.producer().enqueue_many(rows)
        summary.enqueued, summary.duplicates = len(result.enqueued), len(result.duplicates)
        summary.refused = len(result.refused)
        if result.refused:
            logger.warning(
                "sweep %s: %d selected chats are not valid jobs, e.g. %s",
                account.key,
                len(result.refused),
                result.refused[0][1],
            )

    def _lock(self, account: Account) -> Lock:
        # Expires with the sweep's time limit, so a killed sweep cannot block the next ones.
        return self.services.redis.lock(
            self.services.keys.sweep_lock(account.key),
            timeout=self.settings.sweep_time_limit,
            blocking=False,
        )
