"""The Celery side of a chat job: the tasks' base class, and how a run's ending reads in Flower.
The result backend already holds the ending's result: the run wrote it with its ending.

    archived, already archived, duplicate (unarchived...) → SUCCESS, the result dict (green)
    dead-lettered                 → FAILURE, DeadLettered(reason, detail, id) (red; counted as
                                    failed on Flower's dashboard)
    waiting in the job store      → RETRY, Deferred(why) (retried; not ready yet)
    a run that lost its job       → nothing: Ignore (the run that holds the job reports it)
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import redis
from celery import Task, signals
from celery.exceptions import Ignore, Retry, SoftTimeLimitExceeded

from config import ConfigError, get_settings
from tasks.archive.runner import ArchiveRunner, Done, Failed, RunContext, RunEnd, Waiting
from tasks.providers import shared_client
from worker import app, tracing
from worker.contract.history import Ticket
from worker.contract.jobs import job_summary
from worker.contract.outcomes import DeadLettered, Deferred, Reason
from worker.contract.tasks import ARCHIVE_TASK, UNARCHIVE_TASK
from worker.services import accounts_file, get_accounts, get_services
from worker.stores.client import refuses_writes
from worker.stores.deadletters import DeadLetter
from worker.stores.endings import Endings
from worker.stores.jobs import JobBody

if TYPE_CHECKING:
    from worker.tracing.spans import JobTracer

logger = logging.getLogger("chat_archiver.jobs")


@signals.worker_init.connect
def _check_tracing(**_: Any) -> None:
    """ARCHIVER_TRACING on without the tracing extra stops the worker at start, in one line,
    instead of every pool process at its first job."""
    try:
        tracing.active(get_settings())
    except ConfigError as error:
        sys.exit(f"chat-archiver: {error}")


@signals.worker_process_init.connect
def _warm_up(**_: Any) -> None:
    """Build each pool process's HTTP client and connections (and, when tracing is on, its
    span exporter) before its first job."""
    shared_client()
    tracing.active(get_services().settings)


class JobTask(Task):
    """The base of our tasks: validation is ours (a malformed message is dead-lettered, not
    refused by a TypeError), the main process's request tells the dispatcher when a slot frees,
    results are written with the job's ending, and a dead letter is an expected ending (logged
    as one line, not a traceback)."""

    typing = False
    Request = "worker.dispatch.service:JobRequest"
    throws = (DeadLettered,)
    ignore_result = True


def endings() -> Endings:
    return Endings(get_services(), app.backend)


def settle(end: RunEnd) -> Any:
    """Turn a run's ending into what Flower shows (the result backend has it already)."""
    if isinstance(end, Done):
        return end.result
    if isinstance(end, Failed):
        raise end.error
    if isinstance(end, Waiting):
        raise Retry(end.why, exc=Deferred(end.why))
    raise Ignore()


class ChatTask(JobTask):
    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """An exception of ours escaped the run (a bug): dead-letter the job as internal_error,
        so it can be replayed once fixed. Only the run that holds the job can (its ticket is in
        the request); a run that had already ended it changes nothing. The hard time limit,
        reported in the main process, is left to the job's lease: the job runs again, and one
        that never finishes ends as worker_lost."""
        if isinstance(exc, DeadLettered):
            return
        if _unrecorded(exc):
            # Not a bug: the ending could not be written (Redis away or refusing writes past the
            # outage grace, the soft time limit reached while the ending waited). The job's lease
            # runs out and it runs again; a call already made answers "already archived".
            logger.warning(
                "%s: the ending of %s was not recorded; its lease brings it back",
                type(exc).__name__,
                task_id,
            )
            return
        ticket = Ticket.from_headers(self.request.headers or {})
        if ticket is None or not isinstance(kwargs, dict):
            return
        entry = DeadLetter(
            reason=str(Reason.INTERNAL_ERROR),
            job=job_summary(kwargs),
            detail=f"{type(exc).__name__} escaped the task (see the worker log)",
            task_id=task_id,
            worker=self.request.hostname or "",
            trace_id=tracing.trace_id_of(self.request.headers),
        )
        ref = ArchiveRunner.ticket_ref(task_id, self.name, ticket, JobBody(dict(kwargs)))
        endings().dead_lettered(ref, entry)


def _unrecorded(exc: BaseException) -> bool:
    """The run's ending could not be written to Redis."""
    if isinstance(exc, SoftTimeLimitExceeded | redis.ConnectionError | redis.TimeoutError):
        return True
    return isinstance(exc, redis.ResponseError) and refuses_writes(exc)


def run_chat_job(task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    request = task.request
    headers = request.headers or {}
    context = RunContext(
        request.id,
        request.hostname or "",
        headers,
        task=task.name,
        origin=getattr(request, "origin", None) or "",
    )
    services = get_services()
    runner = ArchiveRunner(services, get_accounts(), endings(), reload_accounts=_reloaded)
    tracer = tracing.active(services.settings)
    if tracer is None:
        return settle(runner.run(args, kwargs, context))
    ticket = Ticket.from_headers(headers)
    with tracer.running(task.name, request.id, headers, ticket.account if ticket else "") as span:
        end = runner.run(args, kwargs, context)
        _traced_end(tracer, span, end)
    return settle(end)


def _traced_end(tracer: JobTracer, span: Any, end: RunEnd) -> None:
    if isinstance(end, Done | Failed):
        result = end.result
        tracer.ended(
            span,
            str(result["outcome"]),
            reason=result.get("reason"),
            dead_letter_id=result.get("dead_letter_id"),
            attempts=result["attempts"],
        )
    else:
        tracer.ended(span, "waiting" if isinstance(end, Waiting) else "not_recorded")


@app.task(bind=True, base=ChatTask, name=ARCHIVE_TASK, max_retries=None)
def archive_chat(self: ChatTask, *args: Any, **kwargs: Any) -> Any:
    return run_chat_job(self, args, kwargs)


@app.task(bind=True, base=ChatTask, name=UNARCHIVE_TASK, max_retries=None)
def unarchive_chat(self: ChatTask, *args: Any, **kwargs: Any) -> Any:
    return run_chat_job(self, args, kwargs)


def _reloaded() -> Any:
    accounts_file().reload_if_changed()
    return get_accounts()
