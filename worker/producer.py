"""The producer side: validate archive jobs and publish them, one at a time or in bulk.

A job is checked here exactly as the task checks it (worker.jobs), so an invalid job is refused at
enqueue with one line naming the field. Bulk publishing goes through kombu's ``Producer.batch``,
which pipelines the Redis commands: thousands of jobs cost a handful of round trips.

Services in other languages publish the same message with ``send_task`` (see README).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, uuid

from config import AccountRegistry, ConfigError
from worker.celery_app import app as default_app
from worker.jobs import TASK_NAME, ArchiveJob, InvalidJob
from worker.routing import queue_for
from worker.services import get_accounts

BATCH_SIZE = 500


@dataclass
class BulkResult:
    enqueued: list[tuple[int, str]] = field(default_factory=list)  # (position, task id)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (position, why)


def _registry() -> AccountRegistry | None:
    """This process's accounts, to route each job to its account's queue. A producer without
    an accounts file publishes to the intake queue, and the worker forwards (worker/routing.py)."""
    try:
        return get_accounts()
    except ConfigError:
        return None


def _publish(
    celery: Celery, job: ArchiveJob, producer: Any, registry: AccountRegistry | None
) -> str:
    """Publish one job the way ``send_task`` does, minus its result-backend subscription.

    With the Redis result backend, ``send_task`` SUBSCRIBEs to each new task's result channel
    (so ``.get()`` can wait): two round trips per job that cannot be pipelined, and one live
    subscription per job in a producer that never waits for results. Producers here return task
    ids; results are read from the backend by id (or not at all).
    """
    task_id = uuid()
    kwargs = job.kwargs()
    queue = queue_for(celery.conf.task_default_queue, registry, job.provider, job.account)
    options = celery.amqp.router.route({"queue": queue}, TASK_NAME, (), kwargs)
    message = celery.amqp.create_task_message(
        task_id, TASK_NAME, (), kwargs, create_sent_event=celery.conf.task_send_sent_event
    )
    celery.amqp.send_task_message(producer, TASK_NAME, message, **options)
    return task_id


def enqueue_archive(
    provider: str,
    account: str,
    chat_id: str,
    *,
    request_id: str | None = None,
    source: str = "api",
    app: Celery | None = None,
) -> str:
    """Validate one job and enqueue it; return its task id. Raises InvalidJob (a ValueError)."""
    return enqueue_job(
        {
            "provider": provider,
            "account": account,
            "chat_id": chat_id,
            "request_id": request_id,
            "source": source,
        },
        app=app,
    )


def enqueue_job(data: Mapping[str, Any], app: Celery | None = None) -> str:
    """Enqueue a job given as keyword arguments (a dead letter's job, a JSON line)."""
    job = ArchiveJob.parse(data)
    celery = app or default_app
    with celery.producer_or_acquire() as producer:
        return _publish(celery, job, producer, _registry())


def enqueue_many(
    rows: Iterable[Mapping[str, Any] | InvalidJob],
    *,
    app: Celery | None = None,
    batch_size: int = BATCH_SIZE,
    on_progress: Callable[[int], None] | None = None,
) -> BulkResult:
    """Validate every row and publish the valid ones in pipelined batches.

    A row may be an ``InvalidJob`` already (a reader that could not parse a line passes its
    error through, so the caller gets one report with every refusal at its position).
    Positions count from 1. ``on_progress`` receives the number of rows handled so far.
    """
    celery = app or default_app
    result = BulkResult()
    registry = _registry()
    with celery.producer_or_acquire() as producer, producer.batch(max_size=batch_size):
        for position, row in enumerate(rows, start=1):
            try:
                if isinstance(row, InvalidJob):
                    raise row
                job = ArchiveJob.parse(row)
            except InvalidJob as error:
                result.refused.append((position, str(error)))
            else:
                result.enqueued.append((position, _publish(celery, job, producer, registry)))
            if on_progress is not None and position % batch_size == 0:
                on_progress(position)
    if on_progress is not None:
        on_progress(len(result.enqueued) + len(result.refused))
    return result
