"""A job's history across its deliveries, and the ways one run of it can end besides a result.

Celery retries and parked jobs keep the same task id; what a run knows of the runs before it
travels in message headers (they survive ``self.retry`` and republishing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

ATTEMPTS_HEADER = "archiver_attempts"
FIRST_ATTEMPT_HEADER = "archiver_first_attempt"
ROUNDS_HEADER = "archiver_transient_rounds"
LAST_ATTEMPT_HEADER = "archiver_last_attempt"
# When the job was first parked behind its account's open circuit: the maximum pause counts from
# there, however many probes release and re-park it. Dropped when the circuit closes.
FIRST_PARKED_HEADER = "archiver_first_parked"


@dataclass(frozen=True)
class Delivery:
    """What this delivery of a job knows of the ones before it."""

    task_id: str
    worker: str
    attempts: int = 0  # provider calls made so far, all deliveries included
    first_attempt_at: float | None = None
    last_attempt_at: float | None = None
    transient_rounds: int = 0  # Celery retries spent on transient failures
    queue: str | None = None  # the queue this delivery came from
    first_parked_at: float | None = None  # parked behind an open circuit since then

    @classmethod
    def from_headers(
        cls,
        task_id: str,
        worker: str,
        headers: Mapping[str, Any] | None,
        queue: str | None = None,
    ) -> Delivery:
        headers = headers or {}

        def number(name: str, kind: type[int] | type[float]) -> Any:
            try:
                return kind(headers[name])
            except (KeyError, TypeError, ValueError):
                return None

        return cls(
            task_id=task_id,
            worker=worker,
            attempts=number(ATTEMPTS_HEADER, int) or 0,
            first_attempt_at=number(FIRST_ATTEMPT_HEADER, float),
            last_attempt_at=number(LAST_ATTEMPT_HEADER, float),
            first_parked_at=number(FIRST_PARKED_HEADER, float),
            transient_rounds=number(ROUNDS_HEADER, int) or 0,
            queue=queue,
        )

    def headers(self) -> dict[str, Any]:
        headers: dict[str, Any] = {
            ATTEMPTS_HEADER: self.attempts,
            ROUNDS_HEADER: self.transient_rounds,
        }
        optional = {
            FIRST_ATTEMPT_HEADER: self.first_attempt_at,
            LAST_ATTEMPT_HEADER: self.last_attempt_at,
            FIRST_PARKED_HEADER: self.first_parked_at,
        }
        headers.update({name: value for name, value in optional.items() if value is not None})
        return headers

    def attempted(self, at: float) -> Delivery:
        return replace(
            self,
            attempts=self.attempts + 1,
            first_attempt_at=self.first_attempt_at or at,
            last_attempt_at=at,
        )


@dataclass(frozen=True)
class Reschedule:
    """Run the job again in ``countdown`` seconds on ``queue`` (a Celery retry), carrying
    ``delivery``. A countdown of 0 with the account's queue forwards a job from the intake."""

    countdown: float
    delivery: Delivery
    why: str
    queue: str


@dataclass(frozen=True)
class Parked:
    """The account's circuit is open: the job waits in the account's parked list (durably, its
    message acknowledged) until the account answers again. Not a final outcome."""

    delivery: Delivery
    reason: str
    why: str
