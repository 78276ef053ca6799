"""Helpers the tests share: waiting for a condition, and driving the job store as the router and
the dispatcher would (so a runner can be tested without a worker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from config import AccountRegistry
from worker.contract.jobs import ArchiveJob
from worker.contract.tasks import ARCHIVE_TASK
from worker.dispatch.dispatcher import run_headers, slot_deadline
from worker.dispatch.registry import dispatch_entry
from worker.services import Services
from worker.stores.jobs import (
    Dispatch,
    DispatchedJob,
    Held,
    JobBody,
    JobStore,
    NewJob,
    StoredJob,
    Submitted,
)

T = TypeVar("T")


def eventually(
    condition: Callable[[], T],
    timeout: float = 10.0,
    what: str = "the condition",
    step: float = 0.02,
    *,
    ignoring: tuple[type[BaseException], ...] = (),
    context: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy (returned), or fail after
    ``timeout`` seconds saying ``what`` never happened (and ``context()``: a log's tail, say).
    Exceptions in ``ignoring`` count as "not yet" (a server still starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except ignoring:
            value = None  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            more = f"\n{context()}" if context is not None else ""
            raise AssertionError(f"{what} did not happen within {timeout}s{more}")
        time.sleep(step)


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``chat-archiver ARGS`` in its own process, as a person runs it (``env`` added to ours)."""
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        input=stdin,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stored_jobs(services: Services) -> list[StoredJob]:
    """Every job in the job store (waiting, delayed, parked or running), in no order."""
    return [
        StoredJob.parse(str(task_id), str(record))
        for task_id, record in services.redis.hgetall(services.keys.jobs).items()
    ]


def published_accounts(store: JobStore) -> dict[str, dict[str, Any]]:
    """What the nodes published for dispatch.lua (publish_accounts.lua): account -> its entry."""
    return {
        str(account): json.loads(conf)
        for account, conf in store.redis.hgetall(store.keys.accounts).items()
    }


class JobDesk:
    """Puts jobs into the job store as a producer or the router does, and takes them out as the
    dispatcher does, returning what a worker would receive: (task id, kwargs, headers)."""

    def __init__(self, services: Services, accounts: AccountRegistry) -> None:
        self.services = services
        self.store = services.jobs
        self.store.publish_accounts({a.key: dispatch_entry(a, services.limiter) for a in accounts})

    def put(
        self, kwargs: Mapping[str, Any], task_id: str | None = None, task: str = ARCHIVE_TASK
    ) -> str:
        job = ArchiveJob.parse(kwargs)
        return self.put_raw(job.kwargs(), job.account_key, task_id, task=task)

    def put_raw(
        self,
        kwargs: Mapping[str, Any],
        account: str,
        task_id: str | None = None,
        task: str = ARCHIVE_TASK,
        mark: str | None = None,
    ) -> str:
        """Store a job as given (one the router would refuse, for defensive paths)."""
        task_id = task_id or uuid.uuid4().hex
        chat = kwargs.get("chat_id")
        if mark is None:
            mark = self.services.keys.pending(account, str(chat), task) if chat else ""
        job = NewJob(task_id, account, task, mark, JobBody(dict(kwargs)))
        [status] = self.store.submit([job], held=Held.KEEP)
        assert status == Submitted.NEW, status
        return task_id

    def take(self, timeout: float = 3.0) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The next job the dispatcher hands out (waiting for its account's permit): what a
        worker receives, its id, keyword arguments and headers."""
        job, headers = self.take_job(timeout)
        return job.task_id, dict(job.body.kwargs), headers

    def take_job(self, timeout: float = 3.0) -> tuple[DispatchedJob, dict[str, Any]]:
        """The next job the dispatcher hands out, whole (its task too), and its headers."""

        def dispatched() -> tuple[Dispatch, float] | None:
            dispatch = self.store.dispatch(1)
            return (dispatch, time.monotonic()) if dispatch.jobs else None

        dispatch, local_now = eventually(dispatched, timeout, "a dispatch", step=0.01)
        [job] = dispatch.jobs
        return job, run_headers(job, slot_deadline(job, dispatch, local_now), dispatch.now_us)
