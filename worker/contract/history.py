"""What a run knows besides its keyword arguments, carried in its message's headers: the job's
history across its runs, and the ticket its dispatch gave it.

A job keeps its task id for its whole life: every time it waits and runs again (a retry, a 429,
a paused account) the job store keeps its history updated (worker/stores/endings.py), so a run
knows what the runs before it did. Each dispatch (worker/dispatch/dispatcher.py) adds a ticket:
the run's lease token, its permit's slot, and what the job store knows of the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

ATTEMPTS_HEADER = "archiver_attempts"
FIRST_ATTEMPT_HEADER = "archiver_first_attempt"
ROUNDS_HEADER = "archiver_transient_rounds"
LAST_ATTEMPT_HEADER = "archiver_last_attempt"

TICKET_HEADER = "archiver_ticket"


@dataclass(frozen=True)
class Ticket:
    """A dispatch's hand-over to one run. A message without one did not come from a dispatcher
    of ours (the router checks every intake message; dispatchers hand out only stored jobs)."""

    token: str  # the run's lease member is "task id|token"
    account: str  # the job store's account ("provider:id", or UNPACED)
    mark: str  # its chat's pending-mark key ('' for sweeps)
    lost: int  # earlier runs that began and never ended
    slot: int = 0  # µs on Redis's clock when its call may go; 0: no rate limit
    deadline: float = 0.0  # the slot on this host's monotonic clock
    probe: bool = False  # the call that tells whether its paused account answers again
    holder: str = ""  # another job holds its chat: this one ends as a duplicate of it
    # The account's limit was idle: its slot was "now", and its next slot was kept a gap further
    # (worker/stores/limiter.py), which this call's way to a worker may use up.
    idle: bool = False

    def header(self) -> list[Any]:
        return [
            self.token,
            self.account,
            self.mark,
            self.lost,
            self.slot,
            self.deadline,
            int(self.probe),
            self.holder,
            int(self.idle),
        ]

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any] | None) -> Ticket | None:
        value = (headers or {}).get(TICKET_HEADER)
        if not isinstance(value, list) or len(value) != 9:
            return None
        token, account, mark, lost, slot, deadline, probe, holder, idle = value
        try:
            return cls(
                str(token),
                str(account),
                str(mark),
                int(lost),
                int(slot),
                float(deadline),
                bool(probe),
                str(holder),
                bool(idle),
            )
        except (TypeError, ValueError):
            return None


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
        headers = {
            ATTEMPTS_HEADER: self.attempts,
            ROUNDS_HEADER: self.transient_rounds,
            FIRST_ATTEMPT_HEADER: self.first_attempt_at,
            LAST_ATTEMPT_HEADER: self.last_attempt_at,
        }
        return {name: value for name, value in headers.items() if value is not None}

    def attempted(self, at: float) -> Delivery:
        return replace(
            self,
            attempts=self.attempts + 1,
            first_attempt_at=self.first_attempt_at or at,
            last_attempt_at=at,
        )
