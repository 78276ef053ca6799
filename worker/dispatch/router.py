"""The router: from the intake queue into the job store, every message checked on the way.

Producers (ours, and any service in any language) publish Celery messages to the intake queue
(``ARCHIVER_QUEUE``). Each worker node's router takes them in batches, moving them in the same
Redis step into the node's routing list (so a node killed mid-batch loses nothing: the janitor
gives a dead node's routing list back to the intake). Each message is read by
worker/contract/envelope.py: a message that is not a job of ours, at any layer, is
dead-lettered ``invalid_request`` with a redacted, capped excerpt of what arrived, and a well
formed one is stored, as a canonical message, in its account's wait list (or the delayed set,
for an eta). Only then is the batch removed from the routing list.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from config import excerpt
from worker.contract import envelope
from worker.contract.envelope import Intake, Refused
from worker.contract.outcomes import DeadLettered, Reason
from worker.stores.deadletters import DeadLetter, DeadLetterStore
from worker.stores.jobs import JobStore, NewJob
from worker.stores.keys import Keys
from worker.stores.scripts import load

logger = logging.getLogger("chat_archiver.router")

BATCH = 500


def intake_lists(intake: str) -> list[str]:
    """The Redis lists kombu publishes the intake queue's messages to, highest priority first."""
    return [intake if step == 0 else f"{intake}{Channel.sep}{step}" for step in PRIORITY_STEPS]


@dataclass
class Routed:
    taken: int = 0
    accepted: int = 0
    refused: int = 0
    duplicates: list[str] = field(default_factory=list)


class Router:
    def __init__(
        self,
        broker: redis.Redis,  # raw bytes (decode_responses=False): messages are checked as sent
        store: JobStore,
        dead_letters: DeadLetterStore,
        keys: Keys,
        *,
        intake: str,
        ready: str,
        node: str,
        max_bytes: int = envelope.DEFAULT_MAX_BYTES,
        on_refused: Callable[[str, DeadLettered], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.store = store
        self.dead_letters = dead_letters
        self.intake = intake
        self.ready = ready
        self.node = node
        self.routing = keys.routing(node)
        self.max_bytes = max_bytes
        self.on_refused = on_refused
        self.clock = clock
        self.lists = intake_lists(intake)

    def wait(self, timeout: int) -> bool:
        """Block until a message arrives on the intake (its main list) or ``timeout`` passes;
        the message is moved into the routing list as it is taken. True if one came."""
        moved = self.broker.blmove(self.intake, self.routing, int(timeout), "RIGHT", "LEFT")
        return moved is not None

    def route(self, limit: int = BATCH) -> Routed:
        """Take up to ``limit`` messages (plus any left in the routing list), store the good ones,
        dead-letter the others, then forget the batch."""
        raws = load("take_intake").run(
            self.broker, keys={"routing": self.routing}, args={"limit": limit}, rest=self.lists
        )
        report = Routed(taken=len(raws))
        if not raws:
            return report
        now = self.clock()
        jobs: list[NewJob] = []
        for raw in reversed(raws):  # the routing list holds the newest first
            try:
                intake = envelope.read(raw, now=now, max_bytes=self.max_bytes)
            except Refused as refused:
                self._refuse(raw, refused, now)
                report.refused += 1
                continue
            jobs.append(self._stored(intake))
        accepted = self.store.accept(jobs)
        report.accepted = accepted.accepted
        report.duplicates = accepted.duplicates
        for task_id in accepted.duplicates:
            logger.info("job %s is stored already: not stored twice", task_id)
        # Everything in the routing list now is this batch: only this thread writes to it.
        self.broker.delete(self.routing)
        return report

    def _stored(self, intake: Intake) -> NewJob:
        message = envelope.build(
            intake.task,
            intake.task_id,
            intake.kwargs,
            self.ready,
            history=intake.history,
            origin=intake.origin,
        )
        return NewJob(intake.task_id, intake.account, message, intake.not_before)

    def _refuse(self, raw: bytes, refused: Refused, now: float) -> None:
        text = raw[: self.max_bytes].decode("utf-8", errors="replace")
        entry = DeadLetter(
            reason=str(Reason.INVALID_REQUEST),
            job=refused.job,
            detail=refused.detail,
            excerpt=excerpt(text),
            first_attempt_at=now,
            last_attempt_at=now,
            worker=self.node or socket.gethostname(),
            task_id=refused.task_id,
        )
        try:
            self.dead_letters.add(entry)
        except redis.RedisError:
            raise  # the batch stays in the routing list and is read again
        except Exception:
            # Whatever in the message broke the entry, an entry without it still says what came.
            logger.exception("could not store the full dead letter of a refused message")
            entry = DeadLetter(
                reason=str(Reason.INVALID_REQUEST),
                job={},
                detail=refused.detail,
                excerpt=excerpt(ascii(raw[:400])),
                first_attempt_at=now,
                last_attempt_at=now,
                worker=self.node,
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
