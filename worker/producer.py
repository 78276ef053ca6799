"""The producer side: validate archive jobs and publish them, one at a time or in bulk.

A job is checked here exactly as the worker's router checks it (worker/contract/jobs.py), so an
invalid job is refused at enqueue with one line naming the field. A chat that already has a
pending job is not enqueued again: the caller gets that job's id (worker/stores/pending.py). Every
job goes to the intake queue (``ARCHIVER_QUEUE``), where workers' routers take it into the job
store (worker/stores/jobs.py).
Bulk publishing goes through kombu's ``Producer.batch``, which pipelines the Redis commands:
thousands of jobs cost a handful of round trips. The first batches are small and grow to
``BATCH_SIZE``, so workers start on the first jobs of a large burst while the rest are still
being published (a first batch of 500 held every job back by a quarter of a second).

Services in other languages publish the same message with ``send_task`` (see README). The
producer needs the broker and the state Redis, never the accounts file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import redis
from celery import Celery, uuid
from celery.events.dispatcher import EventDispatcher
from celery.utils.nodenames import anon_nodename

from config import Settings, get_settings
from config.per_process import PerProcess
from worker.contract.jobs import TASK_NAME, ArchiveJob, InvalidJob
from worker.stores.client import connect, state_redis
from worker.stores.pending import Claim, PendingJobs

BATCH_SIZE = 500
FIRST_BATCH = 25  # batches double from here up to the batch size


def batch_sizes(batch_size: int, first_batch: int) -> Iterator[int]:
    """first_batch, twice that, ... then batch_size for ever."""
    size = max(1, min(first_batch, batch_size))
    while True:
        yield size
        size = min(size * 2, batch_size)


@dataclass
class BulkResult:
    enqueued: list[tuple[int, str]] = field(default_factory=list)  # (position, task id)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (position, why)
    # A job for the chat was already pending: (position, that job's task id). Nothing published.
    duplicates: list[tuple[int, str]] = field(default_factory=list)


class ArchiveProducer:
    def __init__(
        self,
        app: Celery,
        settings: Settings,
        state: redis.Redis | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.pending = PendingJobs(
            state or connect(settings.state_url), settings.key_prefix, settings.pending_ttl
        )
        self._declared: set[str] = set()  # the queues this producer has declared
        self._origin = anon_nodename()  # what Celery would work out again for every message
        self._routes: dict[tuple[str, str], dict[str, Any]] = {}

    def enqueue(self, data: Mapping[str, Any]) -> str:
        """Validate and enqueue one job; return its task id, or the id of the job already
        pending for the chat. Raises InvalidJob (a ValueError)."""
        result = self.enqueue_many([data])
        if result.refused:
            raise InvalidJob(result.refused[0][1])
        [(_, task_id)] = result.enqueued or result.duplicates
        return task_id

    def enqueue_many(
        self,
        rows: Iterable[Mapping[str, Any] | InvalidJob],
        *,
        batch_size: int = BATCH_SIZE,
        first_batch: int = FIRST_BATCH,
        on_progress: Callable[[int], None] | None = None,
    ) -> BulkResult:
        """Validate every row; claim and publish the valid ones batch by batch, the batches
        growing from ``first_batch`` to ``batch_size``.

        A row may be an ``InvalidJob`` already (a reader that could not parse a line passes its
        error through, so the caller gets one report with every refusal at its position).
        Positions count from 1. Memory stays flat: rows are consumed one batch at a time.
        """
        result = BulkResult()
        handled = 0
        numbered: Iterator[tuple[int, Mapping[str, Any] | InvalidJob]] = enumerate(rows, start=1)
        sizes = batch_sizes(batch_size, first_batch)
        while batch := list(islice(numbered, next(sizes))):
            jobs: list[tuple[int, ArchiveJob]] = []
            for position, row in batch:
                try:
                    if isinstance(row, InvalidJob):
                        raise row
                    jobs.append((position, ArchiveJob.parse(row)))
                except InvalidJob as error:
                    result.refused.append((position, str(error)))
            self._publish_batch(jobs, result)
            handled += len(batch)
            if on_progress is not None:
                on_progress(handled)
        return result

    def _publish_batch(self, jobs: list[tuple[int, ArchiveJob]], result: BulkResult) -> None:
        if not jobs:
            return
        claims = self.pending.claim_many(
            [(self.pending.key(job.provider, job.account, job.chat_id), uuid()) for _, job in jobs]
        )
        won: list[Claim] = []
        try:
            with (
                self.app.producer_or_acquire() as producer,
                producer.batch(max_size=len(jobs)),
                self._sent_events(producer) as events,
            ):
                for (position, job), claim in zip(jobs, claims, strict=True):
                    if not claim.won:
                        result.duplicates.append((position, claim.owner))
                        continue
                    won.append(claim)
                    self._send(
                        producer,
                        TASK_NAME,
                        claim.task_id,
                        job.kwargs(),
                        self.settings.queue,
                        events=events,
                    )
                    result.enqueued.append((position, claim.task_id))
        except BaseException:
            # Publishing failed part-way: free the chats, or they would look pending until the
            # TTL. A job that did reach the queue runs anyway; archiving twice is harmless.
            self.pending.release_many(won)
            raise

    def send(
        self,
        task_name: str,
        kwargs: dict[str, Any],
        *,
        queue: str | None = None,
        countdown: float | None = None,
    ) -> str:
        """Send one of our own tasks (a probe, a sweep) by name."""
        task_id = uuid()
        with self.app.producer_or_acquire() as producer:
            self._send(
                producer,
                task_name,
                task_id,
                kwargs,
                queue or self.settings.queue,
                countdown=countdown,
            )
        return task_id

    def _send(
        self,
        producer: Any,
        task_name: str,
        task_id: str,
        kwargs: dict[str, Any],
        queue: str,
        *,
        countdown: float | None = None,
        headers: dict[str, Any] | None = None,
        events: EventDispatcher | None = None,
    ) -> None:
        """Publish one task message the way ``send_task`` does, minus what costs without
        serving us:

        - ``send_task`` SUBSCRIBEs to each new task's result channel with the Redis result
          backend (so ``.get()`` can wait): two round trips per job that cannot be pipelined,
          and one live subscription per job in a producer that never waits for results.
        - Celery renders argsrepr/kwargsrepr with its careful ``saferepr``; our keyword
          arguments are a few short strings, and ``repr`` shows them as well (Flower reads it).
        - kombu binds and checks the declaration of a fresh Queue object on every publish; on
          Redis a direct queue's message is a plain push onto its list, so each queue is
          declared once per producer and not again.
        - Inside a batch (``events`` given) nothing is sent until the batch flushes, so a retry
          around each buffered publish cannot help: the flush raises, and the caller frees its
          claims. And the batch's task-sent events go out as one list message (see
          ``_sent_events``) instead of one message per job.
        """
        amqp = self.app.amqp
        declared = queue in self._declared
        route = (task_name, queue)
        if route not in self._routes:
            # The route depends on the task and the queue only: worked out once.
            self._routes[route] = amqp.router.route({"queue": queue}, task_name, (), kwargs)
        options = self._routes[route]
        message = amqp.create_task_message(
            task_id,
            task_name,
            (),
            kwargs,
            countdown=countdown,
            create_sent_event=self.app.conf.task_send_sent_event,
            argsrepr="()",
            kwargsrepr=repr(kwargs),
            origin=self._origin,
        )
        sent = message.sent_event
        if events is not None:
            message = message._replace(sent_event=None)  # buffered below instead
        amqp.send_task_message(
            producer,
            task_name,
            message,
            headers=headers,
            declare=[] if declared else None,
            retry=False if events is not None else None,
            **options,
        )
        self._declared.add(queue)
        if events is not None and sent is not None:
            # What Celery adds for a direct queue, which it publishes to the anonymous exchange.
            events.send("task-sent", queue=queue, exchange="", routing_key=queue, **sent)

    @contextmanager
    def _sent_events(self, producer: Any) -> Iterator[EventDispatcher | None]:
        """A dispatcher that buffers a batch's task-sent events and publishes them as one list
        message when the batch ends: Celery's own event batching (its workers send task events
        this way), which Flower's receiver unpacks. None when sent events are off."""
        if not self.app.conf.task_send_sent_event:
            yield None
            return
        dispatcher = self.app.events.Dispatcher(
            channel=producer.channel, buffer_group={"task"}, buffer_limit=1_000_000
        )
        try:
            yield dispatcher
            dispatcher.flush(errors=False, groups=True)
        finally:
            dispatcher.close()


def _build_default() -> ArchiveProducer:
    # The app is imported here, not at the top: importing the producer API (``import tasks``)
    # makes no Celery app. The process's state client: a worker that sends probes and sweeps
    # opens no second pool.
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
        {
            "provider": provider,
            "account": account,
            "chat_id": chat_id,
            "request_id": request_id,
            "source": source,
        }
    )


def enqueue_job(data: Mapping[str, Any], producer: ArchiveProducer | None = None) -> str:
    """Enqueue a job given as keyword arguments (a dead letter's job, a JSON line)."""
    return (producer or default_producer()).enqueue(data)


def enqueue_many(
    rows: Iterable[Mapping[str, Any] | InvalidJob],
    *,
    producer: ArchiveProducer | None = None,
    batch_size: int = BATCH_SIZE,
    first_batch: int = FIRST_BATCH,
    on_progress: Callable[[int], None] | None = None,
) -> BulkResult:
    return (producer or default_producer()).enqueue_many(
        rows, batch_size=batch_size, first_batch=first_batch, on_progress=on_progress
    )
