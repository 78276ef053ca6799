"""The producer side: validate archive jobs and publish them, one at a time or in bulk.

A job is checked here exactly as the task checks it (worker.jobs), so an invalid job is refused at
enqueue with one line naming the field. A chat that already has a pending job is not enqueued
again: the caller gets that job's id (worker.pending). Each job goes to its account's own queue
(worker.routing). Bulk publishing goes through kombu's ``Producer.batch``, which pipelines the
Redis commands: thousands of jobs cost a handful of round trips.

Services in other languages publish the same message with ``send_task`` (see README).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import redis
from celery import Celery, uuid

from config import AccountRegistry, ConfigError, Settings, get_settings
from worker.celery_app import app
from worker.circuit import ParkedJob
from worker.jobs import TASK_NAME, ArchiveJob, InvalidJob
from worker.pending import Claim, PendingJobs
from worker.routing import queue_for
from worker.services import get_accounts
from worker.state import connect

BATCH_SIZE = 500


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
        accounts: AccountRegistry | None = None,
        state: redis.Redis | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        # Without an accounts file, jobs go to the intake queue and the worker forwards them.
        self.accounts = accounts
        self.pending = PendingJobs(
            state or connect(settings.state_url), settings.key_prefix, settings.pending_ttl
        )

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
        on_progress: Callable[[int], None] | None = None,
    ) -> BulkResult:
        """Validate every row; claim and publish the valid ones batch by batch.

        A row may be an ``InvalidJob`` already (a reader that could not parse a line passes its
        error through, so the caller gets one report with every refusal at its position).
        Positions count from 1. Memory stays flat: rows are consumed one batch at a time.
        """
        result = BulkResult()
        handled = 0
        numbered: Iterator[tuple[int, Mapping[str, Any] | InvalidJob]] = enumerate(rows, start=1)
        while batch := list(islice(numbered, batch_size)):
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
            with self.app.producer_or_acquire() as producer, producer.batch(max_size=len(jobs)):
                for (position, job), claim in zip(jobs, claims, strict=True):
                    if not claim.won:
                        result.duplicates.append((position, claim.owner))
                        continue
                    won.append(claim)
                    self._publish(producer, job, claim.task_id)
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
        """Send one of our own tasks (a probe, a sweep) by name, without the result-backend
        subscription ``send_task`` would make (see _publish)."""
        task_id = uuid()
        amqp = self.app.amqp
        options = amqp.router.route({"queue": queue or self.settings.queue}, task_name, (), kwargs)
        message = amqp.create_task_message(
            task_id,
            task_name,
            (),
            kwargs,
            countdown=countdown,
            create_sent_event=self.app.conf.task_send_sent_event,
        )
        with self.app.producer_or_acquire() as producer:
            amqp.send_task_message(producer, task_name, message, **options)
        return task_id

    def republish(self, jobs: list[ParkedJob], queue: str) -> None:
        """Put parked jobs back on a queue, each with its own task id and history (headers);
        their chats' pending marks are theirs already."""
        amqp = self.app.amqp
        with self.app.producer_or_acquire() as producer, producer.batch(max_size=BATCH_SIZE):
            for job in jobs:
                options = amqp.router.route({"queue": queue}, TASK_NAME, (), job.kwargs)
                message = amqp.create_task_message(
                    job.task_id,
                    TASK_NAME,
                    (),
                    job.kwargs,
                    create_sent_event=self.app.conf.task_send_sent_event,
                )
                amqp.send_task_message(producer, TASK_NAME, message, headers=job.headers, **options)

    def _publish(self, producer: Any, job: ArchiveJob, task_id: str) -> None:
        """Publish one job the way ``send_task`` does, minus its result-backend subscription.

        With the Redis result backend, ``send_task`` SUBSCRIBEs to each new task's result
        channel (so ``.get()`` can wait): two round trips per job that cannot be pipelined, and
        one live subscription per job in a producer that never waits for results. Producers
        here return task ids; results are read from the backend by id (or not at all).
        """
        kwargs = job.kwargs()
        queue = queue_for(self.settings.queue, self.accounts, job.provider, job.account)
        amqp = self.app.amqp
        options = amqp.router.route({"queue": queue}, TASK_NAME, (), kwargs)
        message = amqp.create_task_message(
            task_id, TASK_NAME, (), kwargs, create_sent_event=self.app.conf.task_send_sent_event
        )
        amqp.send_task_message(producer, TASK_NAME, message, **options)


_default: tuple[int, ArchiveProducer] | None = None


def default_producer() -> ArchiveProducer:
    """The producer for this process's settings and Celery app (one per process)."""
    global _default
    if _default is None or _default[0] != os.getpid():
        try:
            accounts: AccountRegistry | None = get_accounts()
        except ConfigError:
            accounts = None
        _default = (os.getpid(), ArchiveProducer(app, get_settings(), accounts))
    return _default[1]


def reset_default_producer() -> None:
    global _default
    _default = None


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
    on_progress: Callable[[int], None] | None = None,
) -> BulkResult:
    return (producer or default_producer()).enqueue_many(
        rows, batch_size=batch_size, on_progress=on_progress
    )
