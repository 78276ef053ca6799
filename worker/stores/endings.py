"""How a run of a job ends, each ending and the job's result written in one atomic step
(worker/stores/lua/close.lua).

- ``final``: the job is over (archived, unarchived, already so, duplicate, dead-lettered, a
  sweep's run): it leaves the job store, its chat's pending mark is released, and its outcome
  (metrics, a dead letter) and its result in Celery's backend are written in the same step,
  exactly once. No crash can leave a job ended with no result, or a result with the job still
  waiting.
- ``wait``: it runs again later, with its history (worker/contract/history.py): at the front of
  its account's wait list (its account's rate limit held it back), or after a delay on Redis's
  clock (a retry's countdown). Its result says RETRY with why.
- ``park``: it waits behind its account's open circuit (RETRY too).

The result is Celery's own format (README: "From any language"), so ``AsyncResult`` and any
reader of ``celery-task-meta-<id>`` see it; our tasks tell Celery not to store results themselves.
Used by runs, and by the janitor for jobs that end without a run (an account no worker knows, a
job parked too long).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import states

from worker import tracing
from worker.contract.history import Delivery
from worker.contract.jobs import job_summary
from worker.contract.outcomes import DeadLettered, Deferred, Outcome, Reason
from worker.contract.tasks import CHAT_TASKS
from worker.services import Services
from worker.stores.client import refuses_writes
from worker.stores.deadletters import DeadLetter
from worker.stores.jobs import Ending, JobBody, StoredJob
from worker.stores.keys import result_key
from worker.stores.sweep_runs import queue_archived
from worker.stores.writes import Writes

logger = logging.getLogger("chat_archiver.jobs")

# Outcomes that leave a swept chat archived: its sweep run records it (undo reads that).
SWEPT = frozenset({Outcome.ARCHIVED, Outcome.ALREADY_ARCHIVED})


@dataclass(frozen=True)
class RunRef:
    """The job a run (or the janitor, with ``member`` empty) ends."""

    job: StoredJob
    member: str  # the run's lease member ("id|token"); '' when no run ends it
    waited_in: str = ""  # no run: the list the job waits in, which it leaves
    parked: bool = False  # it may have been parked (a probe's run, a parked job's ending)

    @property
    def task_id(self) -> str:
        return self.job.task_id

    @property
    def kwargs(self) -> Mapping[str, Any]:
        return self.job.body.kwargs


def _labels(job: Mapping[str, Any]) -> tuple[str, str, str, bool]:
    parts = [job.get(name) for name in ("provider", "account", "chat_id")]
    # A malformed job may lack them: empty labels, not "None".
    provider, account, chat = (part if isinstance(part, str) else "" for part in parts)
    return provider, account, chat, all(isinstance(part, str) for part in parts)


class Endings:
    def __init__(self, services: Services, backend: Any) -> None:
        """``backend``: the Celery app's result backend, whose format results are written in."""
        self.services = services
        self.store = services.jobs
        self.backend = backend
        self.result_ttl = services.settings.result_expires

    def _meta(self, task_id: str, state: str, result: Any) -> str:
        """The result as Celery's Redis backend stores it (its ``encode`` of this mapping)."""
        meta = {
            "status": state,
            "result": result,
            "traceback": None,
            "children": [],
            "date_done": self.backend.app.now().isoformat()
            if state in states.READY_STATES
            else None,
            "task_id": task_id,
        }
        return str(self.backend.encode(meta))

    def _failure(self, task_id: str, error: BaseException) -> str:
        return self._meta(task_id, states.FAILURE, self.backend.prepare_exception(error))

    def _writes(self, ref: RunRef, latencies: Sequence[float]) -> Writes:
        writes = Writes()
        if ref.job.task in CHAT_TASKS:
            provider, account, _, _ = _labels(ref.kwargs)
            for seconds in latencies:
                self.services.metrics.queue_latency(writes, provider, account, seconds)
        return writes

    def final(
        self,
        ref: RunRef,
        outcome: Outcome | None = None,
        *,
        result: Any = None,
        error: BaseException | None = None,
        reason: str | None = None,
        entry: DeadLetter | None = None,
        latencies: Sequence[float] = (),
    ) -> bool:
        """The job is over: SUCCESS with ``result``, or FAILURE with ``error``. ``outcome``
        None: a sweep's run (no job outcome to count)."""
        writes = self._writes(ref, latencies)
        provider, account, chat, valid = _labels(ref.kwargs)
        if outcome is not None:
            self.services.metrics.queue_outcome(writes, provider, account, str(outcome), reason)
        run = ref.kwargs.get("sweep_run")
        if outcome in SWEPT and valid and isinstance(run, str) and run:
            # The sweep run that enqueued the chat records it archived (stores/sweep_runs.py).
            retention = self.services.settings.sweep_run_retention
            queue_archived(writes, self.services.keys, run, chat, retention)
        if entry is not None:
            self.services.dead_letters.queue_add(writes, entry)
            if entry.reason == Reason.NO_MESSAGES and valid:
                # Sweeps leave this chat alone for a while (worker/stores/unarchivable.py).
                self.services.unarchivable.queue_add(writes, provider, account, chat)
        meta = (
            self._failure(ref.task_id, error)
            if error is not None
            else self._meta(ref.task_id, states.SUCCESS, result)
        )
        return self._close(
            ref,
            Ending.FINAL,
            mark=ref.job.mark,
            parked=ref.parked or bool(ref.waited_in),
            result=meta,
            writes=writes,
        )

    def wait(
        self,
        ref: RunRef,
        delivery: Delivery,
        why: str,
        *,
        delay: float = 0.0,
        front: bool = False,
        park: bool = False,
        latencies: Sequence[float] = (),
    ) -> bool:
        """Run the job again: after ``delay`` seconds (Redis's clock), or when its account's turn
        comes. ``park``: wait behind the account's open circuit instead; ``front`` then means a
        probe the account failed, back at the head of the parked list (which stays oldest
        first)."""
        deferred = self.backend.prepare_exception(Deferred(why))
        return self._close(
            ref,
            Ending.PARK if park else Ending.WAIT,
            record=self._record(ref, delivery),
            delay=delay,
            front=front,
            result=self._meta(ref.task_id, states.RETRY, deferred),
            writes=self._writes(ref, latencies),
        )

    def _close(self, ref: RunRef, ending: Ending, **kwargs: Any) -> bool:
        """The store's close of ``ref``'s job, waiting while Redis refuses writes (for the outage
        grace): a run that has its provider's answer records it once Redis takes it, instead of
        losing it. Connection errors are ridden out by the client itself
        (worker/stores/client.py)."""
        give_up = time.monotonic() + self.services.settings.redis_outage_grace
        pause = 0.2
        while True:
            try:
                return self.store.close(
                    ref.task_id,
                    ref.member,
                    ending,
                    account=ref.job.account,
                    waited_in=ref.waited_in,
                    result_ttl=self.result_ttl,
                    **kwargs,
                )
            except redis.ResponseError as error:
                if not refuses_writes(error) or time.monotonic() + pause > give_up:
                    raise
                logger.info("Redis refuses writes (%s): the ending waits", str(error)[:40])
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def dead_letter_unstored(self, entry: DeadLetter) -> None:
        """Dead-letter a job that is not in the job store (a message pushed onto a ready queue
        by hand), with its FAILURE result, in one MULTI."""
        pipe = self.services.redis.pipeline(transaction=True)
        self.services.dead_letters.queue_add(pipe, entry)
        if entry.task_id:
            error = DeadLettered(entry.reason, entry.detail, entry.id)
            pipe.set(
                result_key(entry.task_id), self._failure(entry.task_id, error), ex=self.result_ttl
            )
        pipe.execute()

    def _record(self, ref: RunRef, delivery: Delivery) -> str:
        """The job as it waits again: its history, and, while tracing is on, the context of
        the run that sent it back (its next wait and dispatch continue the job's trace there)."""
        body = ref.job.body
        trace = tracing.job_carrier(self.services.settings) or body.trace
        return ref.job.record(JobBody(dict(body.kwargs), delivery.headers(), body.origin, trace))

    def dead_letter_stored(
        self,
        task_id: str,
        reason: Reason,
        detail: str,
        waited_in: str,
    ) -> DeadLetter | None:
        """Dead-letter a job nobody runs (the janitor), taking it out of the list it waits in.
        None when it changed nothing (the job ended, or left that list, meanwhile)."""
        stored = self.store.record(task_id)
        if stored is None:
            return None
        delivery = Delivery.from_headers(task_id, socket.gethostname(), stored.body.history)
        now = time.time()
        entry = DeadLetter(
            reason=str(reason),
            job=job_summary(stored.body.kwargs),
            detail=detail,
            attempts=delivery.attempts,
            first_attempt_at=delivery.first_attempt_at or now,
            last_attempt_at=delivery.last_attempt_at or now,
            worker=delivery.worker,
            task_id=task_id,
            trace_id=tracing.trace_id_of(stored.body.trace),
        )
        done = self.dead_lettered(RunRef(stored, "", waited_in=waited_in), entry)
        return entry if done is not None else None

    def dead_lettered(
        self, ref: RunRef, entry: DeadLetter, latencies: Sequence[float] = ()
    ) -> DeadLettered | None:
        """End the job as dead-lettered with ``entry`` (its result FAILURE: DeadLettered), or
        None when the run no longer holds it."""
        error = DeadLettered(entry.reason, entry.detail, entry.id)
        done = self.final(
            ref,
            Outcome.DEAD_LETTERED,
            error=error,
            reason=entry.reason,
            entry=entry,
            latencies=latencies,
        )
        return error if done else None
