"""Helpers the tests share: waiting for a condition, and driving the job store as the router and
the dispatcher would (so a runner can be tested without a worker)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from config import AccountRegistry
from worker.contract import envelope
from worker.contract.jobs import ArchiveJob
from worker.contract.tasks import ARCHIVE_TASK
from worker.dispatch.registry import dispatch_entry
from worker.services import Services
from worker.stores.jobs import NewJob
from worker.stores.keys import ready_queue

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


class JobDesk:
    """Puts jobs into the job store as the router does, and takes them out as the dispatcher
    does, returning what a worker would receive: (task id, kwargs, headers)."""

    def __init__(self, services: Services, accounts: AccountRegistry) -> None:
        self.services = services
        self.store = services.jobs
        self.store.publish_accounts(
            {a.key: dispatch_entry(a, services.keys, services.limiter) for a in accounts}
        )
        self.ready = ready_queue(services.settings.queue)

    def put(self, kwargs: Mapping[str, Any], task_id: str | None = None) -> str:
        task_id = task_id or uuid.uuid4().hex
        job = ArchiveJob.parse(kwargs)
        message = envelope.build(ARCHIVE_TASK, task_id, job.kwargs(), self.ready)
        report = self.store.accept([NewJob(task_id, job.account_key, message)])
        assert report.accepted == 1, report
        return task_id

    def put_raw(self, kwargs: Mapping[str, Any], account: str, task_id: str | None = None) -> str:
        """A job the router would have refused (as if pushed past it): for defensive paths."""
        task_id = task_id or uuid.uuid4().hex
        message = envelope.build(ARCHIVE_TASK, task_id, kwargs, self.ready)
        self.store.accept([NewJob(task_id, account, message)])
        return task_id

    def take(self, timeout: float = 3.0) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The next job the dispatcher hands out (waiting for its account's permit)."""

        def dispatched() -> list[str]:
            return self.store.dispatch(1).messages

        [message] = eventually(dispatched, timeout, "a dispatch", step=0.01)
        _, kwargs, headers = envelope.unpack(message)
        return str(headers["id"]), kwargs, headers
