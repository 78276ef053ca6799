"""What a job's result says, as Celery's result backend keeps it (README: "From any language").

    SUCCESS  the result is a :class:`JobResult`: outcome archived, already_archived or duplicate
    FAILURE  the job was dead-lettered: the exception is ``DeadLettered(reason, detail,
             dead_letter_id)`` (worker/contract/outcomes.py); in the backend's JSON,
             ``result.exc_type`` is "DeadLettered" and ``result.exc_message`` holds those three
             strings
    RETRY    the job waits in the job store (a retry's countdown, its account's rate limit, a
             paused account): ``Deferred(why)``; not ready yet
    PENDING  not started yet (or unknown)

:func:`outcome_of` reads any of them as one dict, for Python callers.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from celery.result import AsyncResult

from worker.contract.outcomes import DeadLettered


class JobResult(TypedDict):
    outcome: str  # archived | already_archived | duplicate | dead_lettered
    provider: str
    account: str
    chat_id: str
    attempts: int
    request_id: NotRequired[str]
    reason: NotRequired[str]  # dead_lettered
    detail: NotRequired[str]  # dead_lettered
    dead_letter_id: NotRequired[str]  # dead_lettered
    duplicate_of: NotRequired[str]  # duplicate: the job that holds the chat


def outcome_of(result: AsyncResult) -> dict[str, Any] | None:
    """The job's outcome as one dict, or None while it is not over. A dead-lettered job reads
    ``{"outcome": "dead_lettered", "reason", "detail", "dead_letter_id"}``."""
    state = result.state
    if state == "SUCCESS":
        return dict(result.result)
    if state == "FAILURE":
        error = result.result
        if isinstance(error, DeadLettered):
            return {
                "outcome": "dead_lettered",
                "reason": error.reason,
                "detail": error.detail,
                "dead_letter_id": error.dead_letter_id,
            }
        return {"outcome": "failed", "error": repr(error)}
    return None
