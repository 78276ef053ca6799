"""One sweep of one account: find its inactive chats (tasks/sweep/finders.py), keep those its
policy selects (tasks/sweep/policy.py), and enqueue an archive job for each through the producer,
so a chat already pending is not enqueued twice, with ``source`` "sweep" and ``sweep_run`` naming
the run. A per-account lock makes an overlapping tick skip instead of listing the account twice.

A sweep archives only what it can prove inactive, and never more than its bounds allow:

- GREEN-API: before listing, getSettings; a setting the journals need that is off, or journals
  not proven complete over the whole window, and the sweep archives nothing (``skipped``:
  tasks/sweep/journals.py);
- both: a sweep that would archive more than ``max_share`` of the chats listed, or more than
  ``max_chats``, archives nothing and is ``held``: its chats wait in Redis until an operator
  confirms the run (``confirm``), which re-lists the account and enqueues the held chats that are
  still inactive.

Dry runs list all the same and say why a real run would archive nothing. Every run, dry or real,
has an id and a record (worker/stores/sweep_runs.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from redis.exceptions import LockError
from redis.lock import Lock

from config import GREEN_API, Account, SweepPolicy
from tasks.providers import ChatInfo, GreenApiAdapter, ListingError, shared_client
from tasks.sweep.calls import ListingCalls
from tasks.sweep.finders import FINDERS
from tasks.sweep.journals import judge, read_settings
from tasks.sweep.policy import SweepError, SweepSummary, bound_settled, over_bound, skip_reason
from worker.producer import ArchiveProducer, default_producer
from worker.services import Services
from worker.stores.journal_evidence import JournalEvidence
from worker.stores.sweep_runs import SweepRuns, new_run_id

logger = logging.getLogger("chat_archiver.sweep")

LOCKED = "another sweep of this account is running"
# Chats checked against a held run's set per round trip when it is confirmed.
_CONFIRM_BATCH = 500
# A held run's chats written to Redis per round trip.
_SPILL_BATCH = 1000


def _always() -> bool:
    return True


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
        self.runs = SweepRuns(services.redis, services.keys, services.settings.sweep_run_retention)
        self.evidence = JournalEvidence(services.redis, services.keys)
        self.green_api = GreenApiAdapter()

    # -- a sweep ---------------------------------------------------------------------------------

    def sweep(
        self, account: Account, *, dry_run: bool = False, list_chats: bool = False
    ) -> SweepSummary:
        if account.sweep is None:
            raise SweepError(f"{account.key} has no [accounts.sweep] policy in the accounts file")
        now = self.clock()
        summary = SweepSummary(
            new_run_id(now),
            account.provider,
            account.id,
            dry_run,
            now,
            status="dry_run" if dry_run else "completed",
            chats=[] if list_chats else None,
        )
        started = time.monotonic()
        # A dry run changes nothing: it needs no lock and never makes a real sweep skip.
        lock = None if dry_run else self._lock(account)
        if lock is not None and not lock.acquire():
            summary.status, summary.reason = "skipped", LOCKED
            return self._end(summary, started, problem=False)
        try:
            self._run(account, account.sweep, summary)
        except ListingError as error:
            summary.status, summary.reason = "failed", str(error)
        except BaseException as error:
            summary.status, summary.reason = "failed", f"{type(error).__name__} (see the log)"
            with contextlib.suppress(Exception):
                self._end(summary, started, problem=not dry_run)
            raise
        finally:
            if lock is not None:
                with contextlib.suppress(LockError):  # expired under a very long sweep
                    lock.release()
        # A real run refused or failed is the account's problem until a run completes; a dry
        # run's is only its own.
        problem = not dry_run and summary.status in ("skipped", "failed")
        return self._end(summary, started, problem=problem)

    def _run(self, account: Account, policy: SweepPolicy, summary: SweepSummary) -> None:
        now = summary.started_at
        cutoff = now - policy.inactive_after
        calls = ListingCalls(self.services, account, summary, self.sleep)
        client = self.client_factory()
        refusal = self._journals_refusal(calls, client, account, policy, now)
        if refusal is not None:
            if not summary.dry_run:
                summary.status, summary.reason = "skipped", refusal
                return
            summary.would_be, summary.reason = "skipped", refusal
        selected = self._select(
            calls,
            client,
            account,
            policy,
            summary,
            cutoff,
            lambda: bound_settled(policy, summary.listed, summary.selected),
        )
        if summary.dry_run:
            for _ in selected:
                pass
            if summary.would_be is None:
                held = over_bound(policy, summary.listed, summary.selected)
                if held is not None:
                    summary.would_be, summary.reason = "held", held
            return
        # At most max_chats selected chats in memory: past that the run is held for certain, and
        # its chats go to Redis as they come, where its confirmation finds them.
        chats: list[str] = []
        spilled = False
        for chat in selected:
            chats.append(chat.id)
            if len(chats) > policy.max_chats or (spilled and len(chats) >= _SPILL_BATCH):
                self.runs.add_chats(summary.run, "selected", chats)
                chats, spilled = [], True
        held = over_bound(policy, summary.listed, summary.selected)
        if held is not None:
            self.runs.add_chats(summary.run, "selected", chats)
            summary.status, summary.reason, summary.held = "held", held, summary.selected
            return
        self._enqueue(account, summary, iter(chats))

    def _journals_refusal(
        self,
        calls: ListingCalls,
        client: httpx.Client,
        account: Account,
        policy: SweepPolicy,
        now: float,
    ) -> str | None:
        """Why the GREEN-API journals cannot be believed over the window, or None. Wassenger's
        listing carries each chat's last activity: nothing to believe there."""
        if account.provider != GREEN_API:
            return None
        settings = read_settings(calls, client, account, self.green_api)
        return judge(self.evidence, account, policy, settings, now).refusal

    def _select(
        self,
        calls: ListingCalls,
        client: httpx.Client,
        account: Account,
        policy: SweepPolicy,
        summary: SweepSummary,
        cutoff: float,
        enough: Callable[[], bool],
    ) -> Iterator[ChatInfo]:
        # Chats the provider refused lately for want of an incoming message (a sweep would
        # only dead-letter them again: worker/stores/unarchivable.py).
        refused = self.services.unarchivable.since(account.provider, account.id, cutoff)
        found = FINDERS[account.provider].chats(calls, client, account, policy, cutoff, enough)
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

    def _enqueue(self, account: Account, summary: SweepSummary, chats: Iterator[str]) -> None:
        given: list[str] = []

        def rows() -> Iterator[dict[str, str]]:
            for chat in chats:
                given.append(chat)
                yield {
                    "provider": account.provider,
                    "account": account.id,
                    "chat_id": chat,
                    "source": "sweep",
                    "sweep_run": summary.run,
                }

        result = self.producer().enqueue_many(rows())
        summary.enqueued += len(result.enqueued)
        summary.duplicates += len(result.duplicates)
        summary.refused += len(result.refused)
        self.runs.add_chats(
            summary.run, "enqueued", (given[position - 1] for position, _ in result.enqueued)
        )
        if result.refused:
            logger.warning(
                "sweep %s: %d selected chats are not valid jobs, e.g. %s",
                summary.key,
                len(result.refused),
                result.refused[0][1],
            )

    # -- an operator's confirmation ----------------------------------------------------------

    def confirm(self, account: Account, run_id: str) -> SweepSummary:
        """Enqueue a held run's chats that are still inactive: the account is listed again under
        the same rules (journals, policy), without the bound, which the operator lifts."""
        record = self.runs.record(run_id)
        if record is None:
            raise SweepError(f"no sweep run {run_id} (runs are kept {self._retention()})")
        if (record["provider"], record["account"]) != (account.provider, account.id):
            raise SweepError(f"sweep run {run_id} is of {record['provider']}:{record['account']}")
        if record["status"] != "held":
            raise SweepError(f"sweep run {run_id} is {record['status']}, not held")
        current = self.runs.held().get(account.key)
        if current != run_id:
            later = f" by {current}" if current else " by a later run"
            raise SweepError(f"sweep run {run_id} was superseded{later}: confirm that one")
        if account.sweep is None:
            raise SweepError(f"{account.key} has no [accounts.sweep] policy in the accounts file")
        summary = _summary_of(record)
        started = time.monotonic()
        lock = self._lock(account)
        if not lock.acquire():
            raise SweepError(f"{account.key}: {LOCKED}; try again when it ends")
        try:
            self._confirm(account, account.sweep, summary)
        except ListingError as error:
            raise SweepError(f"{run_id} stays held: {error}") from None
        finally:
            with contextlib.suppress(LockError):
                lock.release()
        summary.status, summary.reason = "completed", None
        summary.confirmed_at = self.clock()
        summary.seconds = round(summary.seconds + time.monotonic() - started, 3)
        summary.ended_at = summary.confirmed_at
        self.runs.end(summary.record(), release_held=True)
        logger.info(
            "sweep run %s of %s confirmed: enqueued %d, duplicates %d, no longer inactive %d",
            run_id,
            summary.key,
            summary.enqueued,
            summary.duplicates,
            summary.dropped,
        )
        return summary

    def _confirm(self, account: Account, policy: SweepPolicy, summary: SweepSummary) -> None:
        now = self.clock()
        cutoff = now - policy.inactive_after
        calls = ListingCalls(self.services, account, summary, self.sleep)
        client = self.client_factory()
        refusal = self._journals_refusal(calls, client, account, policy, now)
        if refusal is not None:
            raise SweepError(f"{summary.run} stays held: {refusal}")
        # Only the current selection counts: a held chat that became active is left alone. The
        # bound is lifted, so the listing needs no count past the cutoff.
        fresh = SweepSummary(summary.run, account.provider, account.id, False, now)

        def inactive_and_held() -> Iterator[str]:
            batch: list[str] = []
            for chat in self._select(calls, client, account, policy, fresh, cutoff, _always):
                batch.append(chat.id)
                if len(batch) >= _CONFIRM_BATCH:
                    yield from self._held_of(summary.run, batch)
                    batch = []
            yield from self._held_of(summary.run, batch)

        before = summary.enqueued + summary.duplicates + summary.refused
        self._enqueue(account, summary, inactive_and_held())
        still = summary.enqueued + summary.duplicates + summary.refused - before
        summary.dropped = summary.held - still

    def _held_of(self, run_id: str, batch: list[str]) -> list[str]:
        if not batch:
            return []
        found = self.runs.contains(run_id, "selected", batch)
        return [chat for chat, held in zip(batch, found, strict=True) if held]

    # -- the run's ending ----------------------------------------------------------------------

    def _end(self, summary: SweepSummary, started: float, *, problem: bool) -> SweepSummary:
        summary.seconds = round(time.monotonic() - started, 3)
        summary.ended_at = self.clock()
        self.runs.end(summary.record(), problem=problem)
        log = logger.warning if summary.status in ("failed", "held") else logger.info
        log(
            "sweep %s %s %s: listed %d, selected %d, enqueued %d, duplicates %d, refused %d%s",
            summary.run,
            summary.key,
            summary.status,
            summary.listed,
            summary.selected,
            summary.enqueued,
            summary.duplicates,
            summary.refused,
            f" ({summary.reason})" if summary.reason else "",
        )
        return summary

    def _lock(self, account: Account) -> Lock:
        # Expires with the sweep's time limit, so a killed sweep cannot block the next ones.
        return self.services.redis.lock(
            self.services.keys.sweep_lock(account.key),
            timeout=self.settings.sweep_time_limit,
            blocking=False,
        )

    def _retention(self) -> str:
        return f"{self.settings.sweep_run_retention / 86400:g} days"


def _summary_of(record: dict[str, Any]) -> SweepSummary:
    """A run's summary from its record, to carry on with it."""
    fields = dict(record)
    skipped = Counter(fields.pop("skipped", None) or {})
    calls = Counter(fields.pop("calls", None) or {})
    summary = SweepSummary(**fields)
    summary.skipped, summary.calls = skipped, calls
    return summary
