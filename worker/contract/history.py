"""A job's history across its runs, carried in its message's headers.

A job keeps its task id for its whole life: every time it waits and runs again (a retry, a 429,
a paused account) the job store keeps a new message with these headers updated
(worker/stores/endings.py), so a run knows what the runs before it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

ATTEMPTS_HEADER = "archiver_attempts"
FIRST_ATTEMPT_HEADER = "archiver_first_attempt"
ROUNDS_HEADER = "archiver_transient_rounds"
LAST_ATTEMPT_HEADER = "archiver_last_attempt"


@dataclass(frozen=True)
class Delivery:
    """What this delivery of a job knows of the ones before it."""

    task_id: str
    worker: str
    attempts: int = 0  # provider calls made so far, all deliveries included
    first_attempt_at: float | None = None
    last_attempt_at: float | None = None
    transient_rounds: int = 0  # Celery retries spent on transient failures

    @classmethod
    def from_headers(
        cls,
        task_id: str,
        worker: str,
        headers: Mapping[str, Any] | None,
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
            transient_rounds=number(ROUNDS_HEADER, int) or 0,
        )

    def headers(self) -> dict[str, Any]:
        headers: dict[str, Any] = {
            ATTEMPTS_HEADER: self.attempts,
            ROUNDS_HEADER: self.transient_rounds,
        }
        optional = {
            FIRST_ATTEMPT_HEADER: self.first_attempt_at,
            LAST_ATTEMPT_HEADER: self.last_attempt_at,
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
