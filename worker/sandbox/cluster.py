"""A deployment in miniature on this machine, shared by the demo, the integration tests and the
benchmarks: one Redis, one accounts file, the environment every process of it gets, the settings
and Celery app a producer in this process uses, and the ``celery`` processes (workers, beat,
Flower) it started, which stop together.

What each user adds stays with it: the demo its scenario and its footprint in a shared Redis, the
integration tests their fast settings and simulator helpers (tests/integration/conftest.py), the
benchmarks their instruments (benchmarks/harness.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from config import Settings
from worker.celery_app import create_app
from worker.contract.results import outcome_of
from worker.producer import ArchiveProducer
from worker.sandbox.local import WORKER_READY, CeleryProcess, worker_process
from worker.stores.client import connect
from worker.stores.deadletters import DeadLetterStore


def environment(
    redis_url: str, accounts_file: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables a node of this cluster starts with: broker and state on ``redis_url``, the
    accounts in ``accounts_file``, then ``extra`` (more ARCHIVER_* settings, token variables)."""
    return {
        "ARCHIVER_BROKER_URL": redis_url,
        "ARCHIVER_REDIS_URL": redis_url,
        "ARCHIVER_ACCOUNTS_FILE": str(accounts_file),
        **(extra or {}),
    }


def settings_from(env: Mapping[str, str]) -> Settings:
    """The settings a node started with ``env`` reads: a node gets this process's environment
    with ``env`` over it (worker/sandbox/local.py), and so do these settings, so that a producer
    here agrees with the nodes."""
    values: dict[str, Any] = {
        name.removeprefix("ARCHIVER_").lower(): value
        for name, value in env.items()
        if name.startswith("ARCHIVER_")
    }
    return Settings(**values)


class LocalCluster:
    """Redis + accounts file + the processes of one deployment, and a producer to feed it."""

    def __init__(
        self,
        redis_url: str,
        accounts_file: Path,
        workdir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.accounts_file = accounts_file
        self.workdir = workdir
        self.env = environment(redis_url, accounts_file, env)
        self.settings = settings_from(self.env)
        self.app: Celery = create_app(self.settings)
        self.redis = connect(redis_url, settings=self.settings)
        self.producer = ArchiveProducer(self.app, self.settings, self.redis)
        self.dead_letters = DeadLetterStore(self.redis, self.settings.key_prefix)
        self.processes: list[CeleryProcess] = []

    # -- processes -------------------------------------------------------------------------

    def start_worker(
        self,
        name: str = "w1",
        concurrency: int = 2,
        *,
        wait: bool = True,
        env: Mapping[str, str] | None = None,
        **options: Any,
    ) -> CeleryProcess:
        """``celery -A worker worker`` as README starts it, its log in ``workdir/<name>.log``;
        returned once it logs that it is ready (unless ``wait`` is false)."""
        node = worker_process(
            {**self.env, **(env or {})},
            self.workdir / f"{name}.log",
            name=name,
            concurrency=concurrency,
            **options,
        )
        self.processes.append(node.start())
        if wait:
            node.wait_for_log(WORKER_READY, timeout=60)
        return node

    def start_beat(self, name: str = "beat") -> CeleryProcess:
        return self.start_process(["beat", "-l", "INFO"], name)

    def start_process(
        self, command: Sequence[str], name: str, env: Mapping[str, str] | None = None
    ) -> CeleryProcess:
        """Any other ``celery -A worker <command>`` (beat, flower), stopped with the rest."""
        process = CeleryProcess(
            command, {**self.env, **(env or {})}, self.workdir / f"{name}.log"
        ).start()
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "".join(process.log() for process in self.processes)

    # -- outcomes --------------------------------------------------------------------------

    def outcome(self, task_id: str) -> dict[str, Any] | None:
        """The job's outcome from the result backend, or None while it has none."""
        return outcome_of(AsyncResult(task_id, app=self.app))

    def wait_outcomes(
        self, task_ids: Iterable[str], timeout: float, step: float = 0.2
    ) -> dict[str, dict[str, Any] | None]:
        """Each job's outcome, polled until all have one or ``timeout`` passes (None for those
        still without one: the caller says what that means)."""
        found: dict[str, dict[str, Any] | None] = dict.fromkeys(task_ids)
        deadline = time.monotonic() + timeout
        while True:
            for task_id, value in found.items():
                if value is None:
                    found[task_id] = self.outcome(task_id)
            if all(v is not None for v in found.values()) or time.monotonic() >= deadline:
                return found
            time.sleep(step)

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        """Warm shutdown of every process started here (SIGKILL to any that hangs), then the
        app's and this process's connections."""
        # All at once: each takes seconds to shut down (its consumer's poll must end first).
        for process in self.processes:
            process.begin_stop()
        for process in self.processes:
            process.stop()
        self.app.close()
        self.redis.close()
