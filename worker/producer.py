"""The producer side: validate chat jobs and put them in the job store, one at a time or in bulk.

A job is checked here exactly as the worker's router checks an intake message
(worker/contract/jobs.py), so an invalid job is refused at enqueue with one line naming the field.
Valid jobs are written straight into the job store (worker/stores/jobs.py), a batch in one atomic
Redis step that also claims each chat's pending mark: a batch is stored whole or not at all, and
a chat that already has a pending job is not enqueued again (the caller gets that job's id). The
batches start small and grow, so workers start on the first jobs of a large burst while the rest
are still being written. Flower hears of each job through Celery's task-sent event.

When Redis refuses a batch (full at ``maxmemory``, a read-only replica, ``MISCONF``) or the
connection drops, the call raises :class:`PublishFailed`, whose ``result`` places every row of
the call: enqueued, already pending, refused (invalid), ``not_published`` (Redis refused the
step: nothing of the batch was stored) or ``uncertain`` (the connection failed while the step was
sent: stored or not). Each row not enqueued comes with the row to send again, carrying its
``task_id``: sending it again is safe, as a job stored already under that id, or one that has
ended (its result is kept), is not stored twice.

Services in other languages publish a Celery message to the intake queue instead (README: "From
any language"), which a worker's router stores the same way. The producer needs the state Redis
and the broker (for the events), never the accounts file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import redis
from celery import Celery, uuid
from celery.utils.nodenames import anon_nodename

from config import ArchiverError, Settings, get_settings
from config.errors import one_line
from config.per_process import PerProcess
from config.sentinel import is_sentinel_url
from worker.contract.jobs import ArchiveJob, InvalidJob, parse_task_id
from worker.contract.tasks import ARCHIVE_TASK, CHAT_TASKS, UNARCHIVE_TASK, UNPACED
from worker.stores.client import connect, state_redis
from worker.stores.jobs import Held, JobBody, JobStore, NewJob, NotReplicated, Submitted
from worker.stores.keys import Keys
from worker.tracing import active as tracing_for
from worker.write_refusals import REFUSALS, refusal_of

logger = logging.getLogger(__name__)

BATCH_SIZE = 500
FIRST_BATCH = 25  # batches double from here up to the batch size


def batch_sizes(batch_size: int, first_batch: int) -> Iterator[int]:
    """first_batch, twice that, ... then batch_size for ever."""
    size = max(1, min(first_batch, batch_size))
    while True:
        yield size
        size = min(size * 2, batch_size)


# What a failed step can raise, and which of them leave its fate unknown.
STORE_ERRORS = (redis.RedisError, OSError)
_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
CONNECTION_LOST = "connection lost"
# The master stored the step, no replica acknowledged it in time (ARCHIVER_ENQUEUE_REPLICAS).
NOT_REPLICATED = "not replicated"
ERROR_REPLY = "error reply"
MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class Unsent:
    """A row that is not known to be stored. ``row`` is what to send again: the job's fields
    and its ``task_id``."""

    position: int
    row: dict[str, Any]
    why: str  # one line

    @property
    def task_id(self) -> str | None:
        value = self.row.get("task_id")
        return value if isinstance(value, str) else None


@dataclass
class BulkResult:
    enqueued: list[tuple[int, str]] = field(default_factory=list)  # (position, task id)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (position, why)
    # A job for the chat was already pending: (position, that job's task id). Nothing stored.
    duplicates: list[tuple[int, str]] = field(default_factory=list)
    # Only in PublishFailed's result: known not stored (Redis refused the step) ...
    not_published: list[Unsent] = field(default_factory=list)
    # ... and sent when the connection failed: stored or not.
    uncertain: list[Unsent] = field(default_factory=list)


class PublishFailed(ArchiverError, redis.RedisError):
    """Redis refused a write (``reason``: maxmemory, read-only replica, MISCONF,
    min-replicas-to-write), answered another error, or the connection was lost, while jobs were
    being enqueued. ``result`` places every row of the call (see BulkResult); rows in its
    ``not_published`` and ``uncertain`` lists are safe to send again as their ``row`` says, and
    only those. ``detail`` is Redis's own words, one line. A ``redis.RedisError``, so code
    that already handles Redis failing goes on handling it."""

    def __init__(self, reason: str, detail: str, result: BulkResult) -> None:
        self.reason = reason
        self.detail = detail
        self.result = result
        super().__init__(self.summary())

    @property
    def refused_writes(self) -> bool:
        """Redis answers but refuses writes (as opposed to a lost connection or another error)."""
        return self.reason in REFUSALS

    def headline(self, refusal: str | None = None) -> str:
        """What went wrong, in a few words (``refusal``: a fuller account of a refusal)."""
        if self.refused_writes:
            return f"Redis refused writes ({refusal or self.reason})"
        if self.reason == CONNECTION_LOST:
            return f"lost the connection to Redis ({self.detail})"
        if self.reason == NOT_REPLICATED:
            return f"no replica acknowledged the enqueue ({self.detail})"
        return f"Redis answered an error ({self.detail})"

    def summary(self) -> str:
        result = self.result
        return (
            f"{self.headline()}: {len(result.enqueued)} enqueued, {len(result.not_published)} "
            f"not published, {len(result.uncertain)} uncertain"
        )


def reason_of(error: BaseException) -> str:
    refusal = refusal_of(error)
    if refusal is not None:
        return refusal
    if isinstance(error, NotReplicated):
        return NOT_REPLICATED
    return CONNECTION_LOST if isinstance(error, _CONNECTION_ERRORS) else ERROR_REPLY


def _text(error: BaseException) -> str:
    """The Redis error's own words, on one line."""
    return one_line(str(error) or type(error).__name__)[:MESSAGE_LIMIT]


def _why(error: BaseException) -> str:
    text, reason = _text(error), reason_of(error)
    if reason in REFUSALS:
        return f"Redis refused the write ({reason}): {text}"
    if reason == CONNECTION_LOST:
        return f"connection to Redis lost: {text}"
    if reason == NOT_REPLICATED:
        return f"no replica acknowledged the step: {text}"
    return f"Redis answered an error: {text}"


def parse_row(row: Mapping[str, Any] | InvalidJob) -> tuple[ArchiveJob, str | None]:
    """A producer's row: the job's fields and an optional ``task_id`` (see enqueue_many).
    Raises InvalidJob (the row itself, when it is one)."""
    if isinstance(row, InvalidJob):
        raise row
    task_id = None
    if isinstance(row, Mapping) and "task_id" in row:
        task_id = parse_task_id(row["task_id"])
        row = {key: value for key, value in row.items() if key != "task_id"}
    return ArchiveJob.parse(row), task_id


@dataclass(frozen=True)
class _Row:
    position: int
    job: ArchiveJob
    task_id: str | None  # the caller's (a resend), else one is made when it is stored

    def resend(self, task_id: str | None) -> dict[str, Any]:
        row = self.job.kwargs()
        if task_id is not None:
            row["task_id"] = task_id
        return row


class _Stopped(Exception):
    """Storing stopped at a batch that Redis refused or lost; the batch's rows are placed."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class ArchiveProducer:
    def __init__(
        self,
        app: Celery,
        settings: Settings,
        state: redis.Redis | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.store = JobStore(
            state or connect(settings.state_url, settings=settings),
            self.keys,
            lease=settings.lease_timeout,
            claim_ttl=settings.pending_ttl,
            probe_ttl=settings.task_time_limit + 10,
        )
        # With Sentinel, an enqueue answers once a replica has it, the one a failover promotes
        # as a rule (docs/high-availability.md says when not).
        replicas = settings.enqueue_replicas
        if replicas is None:
            replicas = 1 if is_sentinel_url(settings.state_url) else 0
        self._replicas = replicas
        self._origin = anon_nodename()  # what Celery would work out for every message
        self._tracer = tracing_for(settings)  # None while tracing is off

    def enqueue(self, data: Mapping[str, Any], task: str = ARCHIVE_TASK) -> str:
        """Validate and enqueue one job; return its task id, or the id of the job already
        pending for the chat. Raises InvalidJob (a ValueError) or PublishFailed."""
        result = self.enqueue_many([data], task=task)
        if result.refused:
            raise InvalidJob(result.refused[0][1])
        [(_, task_id)] = result.enqueued or result.duplicates
        return task_id

    def enqueue_many(
        self,
        rows: Iterable[Mapping[str, Any] | InvalidJob],
        *,
        task: str = ARCHIVE_TASK,
        batch_size: int = BATCH_SIZE,
        first_batch: int = FIRST_BATCH,
        on_progress: Callable[[int], None] | None = None,
    ) -> BulkResult:
        """Validate every row; store the valid ones batch by batch, the batches growing from
        ``first_batch`` to ``batch_size``.

        A row may be an ``InvalidJob`` already (a reader that could not parse a line passes its
        error through, so the caller gets one report with every refusal at its position), and
        may carry a ``task_id``: the id an earlier call gave it, to send it again under that id.
        Positions count from 1. Memory stays flat: rows are consumed one batch at a time.

        Raises PublishFailed at the first batch Redis refuses or loses; the rows after it are
        read and placed too (refused, or not published), and none of them is stored.
        """
        if task not in CHAT_TASKS:
            raise ValueError(f"task: {task!r} is not a chat task")
        result = BulkResult()
        handled = 0
        given: dict[str, int] = {}  # task ids rows came with -> their position
        numbered: Iterator[tuple[int, Mapping[str, Any] | InvalidJob]] = enumerate(rows, start=1)
        sizes = batch_sizes(batch_size, first_batch)
        while batch := list(islice(numbered, next(sizes))):
            parsed = [
                row
                for position, raw in batch
                if (row := self._parse(position, raw, result, given)) is not None
            ]
            try:
                self._submit(task, parsed, result)
            except _Stopped as stopped:
                reason = reason_of(stopped.error)
                why = f"not sent: storing stopped earlier in this call ({reason})"
                for position, raw in numbered:
                    row = self._parse(position, raw, result, given)
                    if row is not None:
                        result.not_published.append(Unsent(position, row.resend(row.task_id), why))
                result.not_published.sort(key=lambda unsent: unsent.position)
                error = stopped.error
                raise PublishFailed(reason, _text(error), result) from error
            handled += len(batch)
            if on_progress is not None:
                on_progress(handled)
        return result

    @staticmethod
    def _parse(
        position: int,
        row: Mapping[str, Any] | InvalidJob,
        result: BulkResult,
        given: dict[str, int],
    ) -> _Row | None:
        """The row as a job (and its task id, if it came with one), or None once refused."""
        try:
            job, task_id = parse_row(row)
            if task_id is not None:
                if task_id in given:
                    raise InvalidJob(
                        f"task_id: also given to row {given[task_id]} of this call "
                        "(a task id names one job)"
                    )
                given[task_id] = position
        except InvalidJob as error:
            result.refused.append((position, str(error)))
            return None
        return _Row(position, job, task_id)

    def _submit(self, task: str, rows: list[_Row], result: BulkResult) -> None:
        """Store the batch in one atomic step (its chats claimed in the same step) and place
        every row in ``result``. Raises _Stopped when Redis refused the step (nothing of it was
        stored) or the connection failed (its rows are uncertain: stored or not, they are safe
        to send again under the same ids)."""
        if not rows:
            return
        new = [
            NewJob(
                task_id=row.task_id or uuid(),
                account=row.job.account_key,
                task=task,
                mark=self.keys.pending(row.job.account_key, row.job.chat_id, task),
                body=JobBody(row.job.kwargs(), origin=self._origin),
            )
            for row in rows
        ]
        resent = any(row.task_id is not None for row in rows)
        tracer = self._tracer
        spans: list[Any] = []
        if tracer is not None:
            new, spans = tracer.enqueue(new)
        try:
            statuses = self.store.submit(
                new, held=Held.SKIP, check_results=resent, replicas=self._replicas
            )
        except STORE_ERRORS as error:
            if tracer is not None:
                tracer.not_stored(spans, error)
            why = _why(error)
            if reason_of(error) in (CONNECTION_LOST, NOT_REPLICATED):
                result.uncertain += [
                    Unsent(row.position, row.resend(job.task_id), f"uncertain: {why}")
                    for row, job in zip(rows, new, strict=True)
                ]
            else:
                result.not_published += [
                    Unsent(row.position, row.resend(row.task_id), why) for row in rows
                ]
            raise _Stopped(error) from error
        if tracer is not None:
            tracer.stored(spans, statuses)
        stored: list[NewJob] = []
        for row, job, status in zip(rows, new, statuses, strict=True):
            if status == Submitted.NEW:
                stored.append(job)
                result.enqueued.append((row.position, job.task_id))
            elif status in (Submitted.STORED, Submitted.DONE):
                # A resend whose first copy was stored (or has ended): that job is this row's.
                result.enqueued.append((row.position, job.task_id))
            else:  # the id of the job that holds the chat
                result.duplicates.append((row.position, status))
        self._sent(stored)

    def send(self, task_name: str, kwargs: dict[str, Any]) -> str:
        """Enqueue one of our own service tasks (a sweep) by name: it waits for a worker slot,
        not for an account's rate limit."""
        job = NewJob(uuid(), UNPACED, task_name, "", JobBody(dict(kwargs), origin=self._origin))
        self.store.submit([job], held=Held.KEEP, replicas=self._replicas)
        self._sent([job])
        return job.task_id

    def _sent(self, jobs: list[NewJob]) -> None:
        """Celery's task-sent event for each stored job, batched into one message as Celery's
        workers batch theirs (Flower's receiver unpacks it): Flower shows a job from the moment
        it is enqueued."""
        if not jobs or not self.app.conf.task_send_sent_event:
            return
        try:
            self._publish_sent(jobs)
        except Exception as error:  # the jobs are stored: Flower learns of them when they run
            logger.warning("could not send %d task-sent events: %s", len(jobs), _text(error))

    def _publish_sent(self, jobs: list[NewJob]) -> None:
        with self.app.producer_or_acquire() as producer:
            dispatcher = self.app.events.Dispatcher(
                channel=producer.channel, buffer_group={"task"}, buffer_limit=1_000_000
            )
            try:
                now = time.time()
                for job in jobs:
                    dispatcher.send(
                        "task-sent",
                        uuid=job.task_id,
                        root_id=job.task_id,
                        parent_id=None,
                        name=job.task,
                        args="()",
                        kwargs=repr(job.body.kwargs),
                        retries=0,
                        eta=None,
                        expires=None,
                        queue=self.settings.queue,
                        exchange="",
                        routing_key=self.settings.queue,
                        timestamp=now,
                    )
                dispatcher.flush(errors=False, groups=True)
            finally:
                dispatcher.close()


def _build_default() -> ArchiveProducer:
    # The app is imported here, not at the top: importing the producer API (``import tasks``)
    # makes no Celery app. The process's state client: a worker that sends sweeps opens no
    # second pool.
    from worker.celery_app import app

    return ArchiveProducer(app, get_settings(), state_redis())


_default = PerProcess(_build_default)


def default_producer() -> ArchiveProducer:
    """The producer for this process's settings and Celery app (one per process)."""
    return _default.get()


def enqueue_archive(
    provider: str,
    account: str,
    chat_id: str,
    *,
    request_id: str | None = None,
    source: str = "api",
    producer: ArchiveProducer | None = None,
) -> str:
    """Validate one job and enqueue it; return its task id (or the pending job's)."""
    return (producer or default_producer()).enqueue(
        _row(provider, account, chat_id, request_id, source)
    )


def enqueue_unarchive(
    provider: str,
    account: str,
    chat_id: str,
    *,
    request_id: str | None = None,
    source: str = "api",
    producer: ArchiveProducer | None = None,
) -> str:
    """Validate one undo job (restore an archived chat) and enqueue it; return its task id."""
    return (producer or default_producer()).enqueue(
        _row(provider, account, chat_id, request_id, source), task=UNARCHIVE_TASK
    )


def _row(
    provider: str, account: str, chat_id: str, request_id: str | None, source: str
) -> dict[str, Any]:
    return {
        "provider": provider,
        "account": account,
        "chat_id": chat_id,
        "request_id": request_id,
        "source": source,
    }


def enqueue_job(
    data: Mapping[str, Any], producer: ArchiveProducer | None = None, task: str = ARCHIVE_TASK
) -> str:
    """Enqueue a job given as keyword arguments (a dead letter's job, a JSON line)."""
    return (producer or default_producer()).enqueue(data, task=task)


def enqueue_many(
    rows: Iterable[Mapping[str, Any] | InvalidJob],
    *,
    task: str = ARCHIVE_TASK,
    producer: ArchiveProducer | None = None,
    batch_size: int = BATCH_SIZE,
    first_batch: int = FIRST_BATCH,
    on_progress: Callable[[int], None] | None = None,
) -> BulkResult:
    return (producer or default_producer()).enqueue_many(
        rows, task=task, batch_size=batch_size, first_batch=first_batch, on_progress=on_progress
    )
