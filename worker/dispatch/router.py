"""The router: from the intake queue into the job store, every message checked on the way.

Services in any language publish Celery messages to the intake queue (``ARCHIVER_QUEUE``); our
own producer writes into the job store directly. Each worker node's router takes intake messages
in batches, moving them in the same Redis step into the node's routing list (so a node killed
mid-batch loses nothing: the janitor gives a dead node's routing list back to the intake). Each
message is read by worker/contract/envelope.py: a message that is not a job of ours, at any
layer, is dead-lettered ``invalid_request`` with a redacted, capped excerpt of what arrived, and
a well formed one is stored in its account's wait list (or the delayed set, for an eta). A copy
of a job that is stored already, or has ended, is not stored again. The batch leaves the routing
list in the same step as it is stored.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import redis

from config import excerpt
from worker.contract import envelope
from worker.contract.envelope import Intake, Refused
from worker.contract.outcomes import DeadLettered, Reason
from worker.contract.tasks import CHAT_TASKS
from worker.stores.deadletters import DeadLetter, DeadLetterStore
from worker.stores.jobs import Held, JobBody, JobStore, NewJob, Submitted
from worker.stores.keys import Keys
from worker.stores.scripts import load

if TYPE_CHECKING:
    from worker.tracing.spans import JobTracer

logger = logging.getLogger("chat_archiver.router")

BATCH = 500


# kombu's Redis transport keeps a queue's messages in one list per priority step (0, 3, 6, 9 by
# default), named queue + "\x06\x16" + step beyond the first: the wire format any producer of
# the intake uses (a unit test checks it against kombu).
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def intake_lists(intake: str) -> list[str]:
    """The Redis lists kombu publishes the intake queue's messages to, highest priority first."""
    return [intake + suffix for suffix in PRIORITY_SUFFIXES]


class Router:
    def __init__(
        self,
        broker: redis.Redis,  # raw bytes (decode_responses=False): messages are checked as sent
        store: JobStore,
        dead_letters: DeadLetterStore,
        keys: Keys,
        *,
        intake: str,
        node: str,
        shared: bool,
        max_bytes: int = envelope.DEFAULT_MAX_BYTES,
        on_refused: Callable[[str, DeadLettered], None] | None = None,
        tracer: JobTracer | None = None,
    ) -> None:
        """``tracer``: while tracing is on, each message's job continues the trace its
        message's headers name (worker/tracing)."""
        self.broker = broker
        self.store = store
        self.dead_letters = dead_letters
        self.intake = intake
        self.node = node
        self.keys = keys
        self.shared = shared  # the broker is the state Redis: the batch leaves with its storing
        self.routing = keys.routing(node)
        self.max_bytes = max_bytes
        self.on_refused = on_refused
        self.lists = intake_lists(intake)
        self.tracer = tracer

    def wait(self, timeout: int) -> bool:
        """Block until a message arrives on the intake (its main list) or ``timeout`` passes;
        the message is moved into the routing list as it is taken. True if one came."""
        moved = self.broker.blmove(self.intake, self.routing, int(timeout), "RIGHT", "LEFT")
        return moved is not None

    def route(self, limit: int = BATCH) -> int:
        """Take up to ``limit`` messages (plus any left in the routing list), store the good ones,
        dead-letter the others, then forget the batch. Returns how many it took."""
        raws = load("take_intake").run(
            self.broker, keys={"routing": self.routing}, args={"limit": limit}, rest=self.lists
        )
        if not raws:
            return 0
        now = time.time()
        tracer = self.tracer
        jobs: list[NewJob] = []
        spans = []
        for raw in raws:
            try:
                intake = envelope.read(
                    raw, now=now, max_bytes=self.max_bytes, trace=tracer is not None
                )
            except Refused as refused:
                self._refuse(raw, refused, now)
                continue
            job = self._stored(intake)
            if tracer is not None:
                job, span = tracer.route(job, intake.trace, self.intake)
                spans.append(span)
            jobs.append(job)
        try:
            statuses = self.store.submit(
                jobs,
                held=Held.KEEP,
                check_results=True,
                routing=self.routing if self.shared else "",
            )
        except BaseException as error:
            if tracer is not None:
                tracer.not_stored(spans, error)
            raise
        if tracer is not None:
            tracer.stored(spans, statuses)
        if not self.shared:
            # Everything in the routing list now is this batch: only this thread writes to it.
            self.broker.delete(self.routing)
        for job, status in zip(jobs, statuses, strict=True):
            if status != Submitted.NEW:
                logger.info("job %s is %s already: not stored twice", job.task_id, status)
        return len(raws)

    def _stored(self, intake: Intake) -> NewJob:
        mark = ""
        if intake.task in CHAT_TASKS:
            account, chat = intake.account, str(intake.kwargs["chat_id"])
            mark = self.keys.pending(account, chat, intake.task)
        body = JobBody(intake.kwargs, intake.history, intake.origin)
        return NewJob(intake.task_id, intake.account, intake.task, mark, body, intake.not_before)

    def _refuse(self, raw: bytes, refused: Refused, now: float) -> None:
        text = raw[: self.max_bytes].decode("utf-8", errors="replace")
        trace_id = None
        if self.tracer is not None:
            trace_id = self.tracer.refused(refused.trace, refused.task_id, Reason.INVALID_REQUEST)
        entry = DeadLetter(
            reason=str(Reason.INVALID_REQUEST),
            job=refused.job,
            detail=refused.detail,
            excerpt=excerpt(text),
            first_attempt_at=now,
            last_attempt_at=now,
            worker=self.node or socket.gethostname(),
            task_id=refused.task_id,
            trace_id=trace_id,
        )
        try:
            self.dead_letters.add(entry)
        except redis.RedisError:
            raise  # the batch stays in the routing list and is read again
        except Exception:
            # Whatever in the message broke the entry, an entry without it still says what came.
            logger.exception("could not store the full dead letter of a refused message")
            entry = replace(
                entry, job={}, excerpt=excerpt(ascii(raw[:400])), worker=self.node, task_id=None
            )
            self.dead_letters.add(entry)
        logger.warning(
            "dead-lettered a message from the intake as %s: %s", entry.id, excerpt(refused.detail)
        )
        if refused.task_id and self.on_refused is not None:
            try:
                self.on_refused(
                    refused.task_id,
                    DeadLettered(str(Reason.INVALID_REQUEST), refused.detail, entry.id),
                )
            except Exception:  # the dead letter is what counts; the result is a courtesy
                logger.warning("could not record the result of refused job %s", refused.task_id)

    def give_back(self, routing_key: str) -> int:
        """Return a dead node's routing list to the intake (the janitor)."""
        moved = 0
        while self.broker.lmove(routing_key, self.intake, "RIGHT", "RIGHT") is not None:
            moved += 1
        return moved
