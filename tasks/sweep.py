"""Task ``archive.sweep``: find an account's inactive chats and enqueue an archive job for each.

Which chats: those the account's sweep policy selects (config/sweep.py) among chats inactive for
at least ``inactive_after``. How they are found, streaming, so memory stays flat however many
chats an account has:

- **Wassenger** lists a device's chats oldest activity first, a page at a time; the sweep stops
  at the first chat newer than the cutoff.
- **GREEN-API** has no timestamps in getChats. lastIncomingMessages and lastOutgoingMessages over
  the threshold window name every chat active in it, so getChats minus those chats are the
  inactive ones. Those windows hold at most 10,000 messages each; when one is full, older
  activity inside the window may be missing. Then the sweep relies on getChats' documented
  order (newest activity first): the chats after the last one seen in the windows are probed by
  binary search with getChatHistory (about 17 probes for 100,000 chats) to find the first chat
  older than the cutoff, and every chat from there on is inactive. If the order were ever not
  what GREEN-API documents, the windows' chats would not all come first and the search would
  find nothing to archive: it fails safe.

Every listing call takes a permit of the shared limiter (GREEN-API allows about 1 call/s for
these methods), and transient failures and 429s are retried. Jobs go through the producer, so a
chat already pending is not enqueued twice, and ``source`` is ``"sweep"``. A per-account lock
makes an overlapping tick skip instead of listing the account twice.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import httpx
from redis.exceptions import LockError
from redis.lock import Lock
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from config import GREEN_API, Account, AccountRegistry, SweepPolicy
from tasks.archive.task import JobTask
from tasks.leased import run_leased
from tasks.providers import (
    MESSAGE_WINDOW_CAP,
    ChatInfo,
    GreenApiListings,
    ListingError,
    WassengerListings,
    adapter_for,
    shared_client,
    transient_backoff,
)
from worker import app
from worker.beat import SWEEP_TASK
from worker.outcomes import Kind
from worker.producer import ArchiveProducer, default_producer
from worker.services import Services, get_accounts, get_services

logger = logging.getLogger("chat_archiver.sweep")

WASSENGER_PAGE_SIZE = 100  # providers.md: the maximum is unconfirmed, 100 works
# A listing call waits inline for its permit (a sweep is one long sequential task); a longer
# pause (the provider's 429) is slept in steps of this size.
LISTING_MAX_WAIT = 60.0
# "Active, exact time unknown": a chat known to be newer than the cutoff.
ACTIVE = math.inf

T = TypeVar("T")


@dataclass
class SweepSummary:
    account: str
    dry_run: bool
    status: str = "done"  # done | skipped | failed
    listed: int = 0
    selected: int = 0
    enqueued: int = 0
    duplicates: int = 0  # already pending: enqueued by someone else, not twice
    refused: int = 0  # selected, but not a valid job (a chat id of a shape we do not archive)
    skipped: Counter[str] = field(default_factory=Counter)  # why a listed chat was left alone
    calls: Counter[str] = field(default_factory=Counter)  # listing calls by method
    seconds: float = 0.0
    error: str | None = None
    chats: list[str] | None = None  # the selected chats, when asked for

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"], data["calls"] = dict(self.skipped), dict(self.calls)
        if self.chats is None:
            del data["chats"]
        return data


def skip_reason(policy: SweepPolicy, chat: ChatInfo, cutoff: float) -> str | None:
    """Why the policy leaves this chat alone, or None when it is to be archived."""
    if chat.kind == "channel":
        return "channel"
    if chat.kind == "group" and not policy.include_groups:
        return "group"
    if chat.kind == "user" and not policy.include_people:
        return "person"
    if chat.archived:
        return "already archived"
    if chat.last_activity is not None and chat.last_activity > cutoff:
        return "active"
    if policy.skip_unread and (chat.unread or 0) > 0:
        return "unread"
    if policy.statuses is not None and chat.status not in policy.statuses:
        return "status"
    if policy.exclude_labels.intersection(chat.labels):
        return "label"
    return None


class SweepError(ValueError):
    """A sweep asked for that cannot run (no policy, half an account): one line, no retry."""


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
        # only dead-letter them again: worker/unarchivable.py).
        refused = self.services.unarchivable.since(account.provider, account.id, cutoff)

        def selected() -> Iterator[ChatInfo]:
            for chat in self._candidates(account, policy, cutoff, summary):
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

    # -- finding candidates -------------------------------------------------------------------

    def _candidates(
        self, account: Account, policy: SweepPolicy, cutoff: float, summary: SweepSummary
    ) -> Iterator[ChatInfo]:
        if account.provider == GREEN_API:
            return self._green_api(account, policy, cutoff, summary)
        return self._wassenger(account, policy, cutoff, summary)

    def _wassenger(
        self, account: Account, policy: SweepPolicy, cutoff: float, summary: SweepSummary
    ) -> Iterator[ChatInfo]:
        listings = WassengerListings(adapter_for(account.provider))  # type: ignore[arg-type]
        client = self.client_factory()
        page = 0
        while True:
            chats = self._call(
                summary,
                account,
                "listChats",
                lambda p=page: listings.chats_page(
                    client, account, p, WASSENGER_PAGE_SIZE, policy.statuses
                ),
            )
            for chat in chats:
                yield chat
                if chat.last_activity is not None and chat.last_activity > cutoff:
                    return  # oldest first: every chat after this one is newer still
            if len(chats) < WASSENGER_PAGE_SIZE:
                return
            page += 1

    def _green_api(
        self, account: Account, policy: SweepPolicy, cutoff: float, summary: SweepSummary
    ) -> Iterator[ChatInfo]:
        listings = GreenApiListings(adapter_for(account.provider))  # type: ignore[arg-type]
        client = self.client_factory()
        minutes = math.ceil(policy.inactive_after / 60)
        recent: dict[str, float] = {}
        window_full = False
        for method in ("lastIncomingMessages", "lastOutgoingMessages"):
            messages = 0
            for chat_id, at in self._stream(
                summary,
                account,
                method,
                lambda m=method: listings.recent_messages(client, account, m, minutes),
            ):
                messages += 1
                recent[chat_id] = max(at, recent.get(chat_id, 0.0))
            window_full |= messages >= MESSAGE_WINDOW_CAP

        def all_chats() -> Iterator[ChatInfo]:
            return self._stream(
                summary, account, "getChats", lambda: listings.chats(client, account)
            )

        if not window_full:
            # The windows are complete: a chat in neither had no message since the cutoff.
            for chat in all_chats():
                yield replace(chat, last_activity=recent.get(chat.id))
            return
        total, last_seen = 0, -1
        for index, chat in enumerate(all_chats()):
            total = index + 1
            if chat.id in recent:
                last_seen = index
        boundary = self._activity_boundary(
            summary, account, listings, client, last_seen + 1, total, cutoff
        )
        for index, chat in enumerate(all_chats()):
            yield replace(
                chat, last_activity=recent.get(chat.id, ACTIVE if index < boundary else None)
            )

    def _activity_boundary(
        self,
        summary: SweepSummary,
        account: Account,
        listings: GreenApiListings,
        client: httpx.Client,
        low: int,
        high: int,
        cutoff: float,
    ) -> int:
        """The index of the first chat (in getChats order) with no message since the cutoff,
        knowing that chats before `low` are active. Binary search with getChatHistory."""
        while low < high:
            middle = (low + high) // 2
            # getChats?count=n answers the n most active chats: the last is chat number n - 1.
            last = deque(
                self._stream(
                    summary,
                    account,
                    "getChats",
                    lambda m=middle: listings.chats(client, account, count=m + 1),
                ),
                maxlen=1,
            )
            if not last:
                break
            chat = last[0]
            newest = self._call(
                summary,
                account,
                "getChatHistory",
                lambda c=chat.id: listings.newest_message_at(client, account, c),
            )
            if newest is not None and newest > cutoff:
                low = middle + 1
            else:
                high = middle
        return low

    # -- listing calls: a permit each, transient failures and 429s retried --------------------

    def _permit(self, summary: SweepSummary, account: Account, method: str) -> None:
        limiter = self.services.limiter
        while True:
            permit = limiter.acquire(account, method, LISTING_MAX_WAIT)
            if permit.granted:
                self.sleep(permit.wait)
                summary.calls[method] += 1
                return
            self.sleep(min(permit.wait, LISTING_MAX_WAIT))

    def _call(
        self, summary: SweepSummary, account: Account, method: str, call: Callable[[], T]
    ) -> T:
        def retryable(error: BaseException) -> bool:
            if not isinstance(error, ListingError):
                return False
            if error.answer.verdict.kind is Kind.RATE_LIMITED:
                self.services.limiter.penalize(account, method, error.answer.retry_after)
                return True
            return error.answer.verdict.kind is Kind.TRANSIENT

        retrying = Retrying(
            stop=stop_after_attempt(self.settings.transient_attempts),
            wait=transient_backoff(self.settings),
            retry=retry_if_exception(retryable),
            sleep=self.sleep,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                self._permit(summary, account, method)
                return call()
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _stream(
        self, summary: SweepSummary, account: Account, method: str, call: Callable[[], Iterator[T]]
    ) -> Iterator[T]:
        """A streamed listing: its opening (status, first item) is retried like any call; once
        items flow, a broken stream fails the sweep (the next tick starts over)."""
        first, rest = self._call(summary, account, method, lambda: _prime(call()))
        yield from first
        yield from rest

    # -- one sweep per account at a time --------------------------------------------------------

    def _lock(self, account: Account) -> Lock:
        # Expires with the sweep's time limit, so a killed sweep cannot block the next ones.
        return self.services.redis.lock(
            f"{self.settings.key_prefix}:sweep-lock:{account.provider}:{account.id}",
            timeout=self.settings.sweep_time_limit,
            blocking=False,
        )


def _prime(iterator: Iterator[T]) -> tuple[list[T], Iterator[T]]:
    """Pull the first item now, so an error answered at the start surfaces inside the retry."""
    try:
        return [next(iterator)], iterator
    except StopIteration:
        return [], iter(())


def sweep_accounts(
    accounts: AccountRegistry, provider: str | None, account_id: str | None
) -> list[Account]:
    if provider and account_id:
        return [accounts.get(provider, account_id)]
    if provider or account_id:
        raise SweepError("give both provider and account, or neither (every swept account)")
    return [a for a in accounts if a.sweep is not None and a.sweep.enabled]


# A sweep is one long sequential task (listing calls at about 1/s): its own time limits, set when
# the app configures (worker/celery_app.py task_annotations), not read here at import.
@app.task(name=SWEEP_TASK, bind=True, base=JobTask)
def archive_sweep(
    self: Any,
    provider: str | None = None,
    account: str | None = None,
    dry_run: bool = False,
    list_chats: bool = False,
) -> dict[str, Any]:
    """Sweep one account (provider and account given), or fan out one sweep task per account
    whose sweep is enabled."""
    kwargs = {
        "provider": provider,
        "account": account,
        "dry_run": dry_run,
        "list_chats": list_chats,
    }
    return run_leased(self, kwargs, lambda: _sweep(provider, account, dry_run, list_chats))


def _sweep(
    provider: str | None, account: str | None, dry_run: bool, list_chats: bool
) -> dict[str, Any]:
    services = get_services()
    accounts = sweep_accounts(get_accounts(), provider, account)
    if provider is None:
        for target in accounts:
            default_producer().send(
                SWEEP_TASK, {"provider": target.provider, "account": target.id, "dry_run": dry_run}
            )
        return {"scheduled": [target.key for target in accounts]}
    [target] = accounts
    return Sweeper(services).sweep(target, dry_run=dry_run, list_chats=list_chats).as_dict()
