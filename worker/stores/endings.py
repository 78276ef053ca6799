"""How a run of a job ends, each ending written in one atomic step (worker/stores/lua/close.lua).

- ``final``: the job is over (archived, already archived, duplicate, dead-lettered): it leaves
  the job store, its chat's pending mark is released, and its outcome (metrics, the account's
  recent outcomes, a dead letter) is written in the same step, exactly once.
- ``wait``: it runs again later, with its history (worker/contract/history.py) in a new message:
  at the front of its account's wait list (its account's rate limit held it back), or in the
  delayed set until a time (a retry's countdown).
- ``park``: it waits behind its account's open circuit.

Used by the archive task's runs, by probes, and by the janitor for jobs that end without a run
(an account no worker knows, a job parked too long).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.celery_app import app
from worker.contract import envelope
from worker.contract.history import Delivery
from worker.contract.jobs import job_summary
from worker.contract.outcomes import DeadLettered, Outcome, Reason
from worker.contract.tasks import ARCHIVE_TASK
from worker.services import Services
from worker.stores.deadletters import DeadLetter
from worker.stores.jobs import Ending
from worker.stores.keys import ready_queue
from worker.stores.writes import Writes

logger = logging.getLogger("chat_archiver.jobs")


@dataclass(frozen=True)
class RunRef:
    """The job a run (or the janitor, with ``run`` empty) ends."""

    task_id: str
    run: str
    account: str  # the job store's account: "provider:id", or UNPACED
    job: Mapping[str, Any]  # its keyword arguments, as given
    task: str = ARCHIVE_TASK
    extra: Writes = field(default_factory=Writes)  # more writes to make in the same step


def _labels(job: Mapping[str, Any]) -> tuple[str, str, str, bool]:
    parts = [job.get(name) for name in ("provider", "account", "chat_id")]
    # A malformed job may lack them: empty labels, not "None".
    provider, account, chat = (part if isinstance(part, str) else "" for part in parts)
    return provider, account, chat, all(isinstance(part, str) for part in parts)


class Endings:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.store = services.jobs
        self.keys = services.keys

    def _writes(self, ref: RunRef, latencies: Sequence[float]) -> Writes:
        writes = Writes()
        writes.commands.extend(ref.extra.commands)
        if ref.task == ARCHIVE_TASK:
            provider, account, _, _ = _labels(ref.job)
            for seconds in latencies:
                self.services.metrics.queue_latency(writes, provider, account, seconds)
        return writes

    def final(
        self,
        ref: RunRef,
        outcome: Outcome | None = None,
        *,
        reason: str | None = None,
        entry: DeadLetter | None = None,
        latencies: Sequence[float] = (),
    ) -> bool:
        """The job is over. ``outcome`` None: a sweep's or a probe's run (no job outcome)."""
        writes = self._writes(ref, latencies)
        provider, account, chat, valid = _labels(ref.job)
        if outcome is not None:
            self.services.metrics.queue_outcome(
                writes, provider, account, str(outcome), reason, chat or None
            )
        if entry is not None:
            self.services.dead_letters.queue_add(writes, entry)
            if entry.reason == Reason.NO_MESSAGES and valid:
                # Sweeps leave this chat alone for a while (worker/stores/unarchivable.py).
                self.services.unarchivable.queue_add(writes, provider, account, chat)
        chat_key = ""
        if ref.task == ARCHIVE_TASK and valid:
            chat_key = self.keys.pending(f"{provider}:{account}", chat)
        return self.store.close(
            ref.task_id,
            ref.run,
            Ending.FINAL,
            account=ref.account,
            chat_key=chat_key,
            writes=writes,
        )

    def wait(
        self,
        ref: RunRef,
        delivery: Delivery,
        *,
        at: float | None = None,
        front: bool = False,
        latencies: Sequence[float] = (),
    ) -> bool:
        """Run the job again: at ``at`` (unix time), or when its account's turn comes."""
        return self.store.close(
            ref.task_id,
            ref.run,
            Ending.WAIT,
            account=ref.account,
            message=self._message(ref, delivery),
            at=at,
            front=front,
            writes=self._writes(ref, latencies),
        )

    def park(
        self,
        ref: RunRef,
        delivery: Delivery,
        *,
        again: bool = False,
        latencies: Sequence[float] = (),
    ) -> bool:
        """Wait behind the account's open circuit; ``again``: a probe the account failed, back at
        the head of the parked list (which stays oldest first)."""
        return self.store.close(
            ref.task_id,
            ref.run,
            Ending.PARK,
            account=ref.account,
            message=self._message(ref, delivery),
            front=again,
            writes=self._writes(ref, latencies),
        )

    def _message(self, ref: RunRef, delivery: Delivery) -> str:
        return envelope.build(
            ref.task,
            ref.task_id,
            ref.job,
            ready_queue(self.services.settings.queue),
            history=delivery.headers(),
        )

    def dead_letter_stored(
        self, task_id: str, reason: Reason, detail: str, extra: Writes | None = None
    ) -> DeadLetter | None:
        """Dead-letter a job nobody runs (the janitor, a probe), from its stored message. None
        when it changed nothing (the job ended meanwhile, or a live run holds it)."""
        stored = self.store.record(task_id)
        if stored is None:
            return None
        task, kwargs, headers = envelope.unpack(stored.message)
        delivery = Delivery.from_headers(task_id, socket.gethostname(), headers)
        now = time.time()
        entry = DeadLetter(
            reason=str(reason),
            job=job_summary(kwargs),
            detail=detail,
            attempts=delivery.attempts,
            first_attempt_at=delivery.first_attempt_at or now,
            last_attempt_at=delivery.last_attempt_at or now,
            worker=delivery.worker,
            task_id=task_id,
        )
        ref = RunRef(task_id, "", stored.account, kwargs, task, extra or Writes())
        done = self.final(ref, Outcome.DEAD_LETTERED, reason=str(reason), entry=entry)
        if not done:
            return None
        # No run of it will report this ending: say it in the result backend, as a run would.
        try:
            app.backend.mark_as_failure(
                task_id, DeadLettered(str(reason), detail, entry.id), call_errbacks=False
            )
        except Exception:  # the dead letter is what counts; the result is a courtesy
            logger.warning("could not record the result of dead-lettered job %s", task_id)
        return entry
