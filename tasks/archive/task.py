"""The Celery side of a job: the tasks' base class, and how a run's ending reads in Celery's result
backend and in Flower.

    archived, already archived, duplicate → SUCCESS, the result dict (green in Flower)
    dead-lettered                         → FAILURE, DeadLettered("reason: detail") (red; counted
                                            as failed on Flower's dashboard)
    waiting in the job store              → RETRY, Deferred(why) (retried; not ready yet)
    a leftover or duplicate delivery      → nothing: Ignore (the job's own run reports it)
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, signals
from celery.exceptions import Ignore, Retry

from tasks.archive.runner import ArchiveRunner, Done, Failed, RunContext, RunEnd, Waiting
from tasks.providers import shared_client
from worker import app
from worker.contract.jobs import ArchiveJob, InvalidJob, job_summary
from worker.contract.outcomes import DeadLettered, Deferred, Outcome, Reason
from worker.contract.tasks import ARCHIVE_TASK
from worker.services import accounts_file, get_accounts, get_services
from worker.stores.deadletters import DeadLetter
from worker.stores.endings import Endings, RunRef
from worker.stores.jobs import Lease

logger = logging.getLogger("chat_archiver.jobs")


@signals.worker_process_init.connect
def _warm_up(**_: Any) -> None:
    """Build each pool process's HTTP client and connections before its first job."""
    shared_client()
    get_services()


class JobTask(Task):
    """The base of our tasks: validation is ours (a malformed message is dead-lettered, not
    refused by a TypeError), the main process's request tells the dispatcher when a slot frees,
    and a dead letter is an expected ending (logged as one line, not a traceback)."""

    typing = False
    Request = "worker.dispatch.service:JobRequest"
    throws = (DeadLettered,)


def settle(task: Task, context: RunContext, end: RunEnd) -> Any:
    """Turn a run's ending into what Celery stores and Flower shows."""
    if isinstance(end, Done):
        return end.result
    if isinstance(end, Failed):
        raise end.error
    if isinstance(end, Waiting):
        raise Retry(end.why, exc=Deferred(end.why))
    if end.lease is Lease.STALE:
        # A delivery of a job that has ended (kombu gave back its message after a worker or
        # Redis restart): report the job's own ending again, so Flower does not show it started.
        meta = task.backend.get_task_meta(context.task_id)
        if meta.get("status") == "SUCCESS":
            return meta.get("result")
        if meta.get("status") == "FAILURE" and isinstance(meta.get("result"), DeadLettered):
            raise meta["result"]
    raise Ignore()


class ArchiveTask(JobTask):
    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """An exception of ours escaped the run (a bug): dead-letter the job as internal_error,
        so it can be replayed once fixed. Only the run that holds the job can (its token is in
        the request); a run that had already ended it (its result failed to store) changes
        nothing. The hard time limit, reported in the main process, is left to the job's lease:
        the job runs again, and one that never finishes ends as worker_lost."""
        if isinstance(exc, DeadLettered):
            return
        run = getattr(self.request, "archiver_run", None)
        if not run:
            return
        try:
            account = ArchiveJob.parse(kwargs).account_key
        except InvalidJob:
            stored = get_services().jobs.record(task_id)
            account = stored.account if stored is not None else ""
        job = job_summary(kwargs)
        detail = f"{type(exc).__name__} escaped the task (see the worker log)"
        services = get_services()
        entry = DeadLetter(
            reason=str(Reason.INTERNAL_ERROR),
            job=job,
            detail=detail,
            task_id=task_id,
            worker=self.request.hostname or "",
        )
        Endings(services).final(
            RunRef(task_id, run, account, job),
            Outcome.DEAD_LETTERED,
            reason=str(Reason.INTERNAL_ERROR),
            entry=entry,
        )


@app.task(bind=True, base=ArchiveTask, name=ARCHIVE_TASK, max_retries=None)
def archive_chat(self: ArchiveTask, *args: Any, **kwargs: Any) -> Any:
    request = self.request
    context = RunContext(request.id, request.hostname or "", request.headers or {})
    request.archiver_run = context.run
    runner = ArchiveRunner(get_services(), get_accounts(), reload_accounts=_reloaded)
    return settle(self, context, runner.run(args, kwargs, context))


def _reloaded() -> Any:
    accounts_file().reload_if_changed()
    return get_accounts()
