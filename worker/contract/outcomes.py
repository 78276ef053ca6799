"""The outcome model: the one vocabulary adapters, tasks, dead letters, logs and metrics share.

Every provider answer means exactly one ``Verdict``::

    Kind.SUCCESS       archived, already_archived,           -> the job is done
                       unarchived, already_unarchived
    Kind.PERMANENT     chat_not_found, no_messages,          -> dead letter at once, never retried
                       invalid_request, unexpected_response
    Kind.ACCOUNT       unauthorized, account_unavailable     -> every job of the account would fail
                       (asleep, starting, not authorized,       the same way: pause the account
                       device not operative...),
                       quota_exceeded, misconfigured
                       (an unknown route, a proxy's page)
    Kind.TRANSIENT     5xx, 499, timeouts, connection        -> retry (tenacity, then Celery)
                       errors
    Kind.RATE_LIMITED  429                                   -> slow the account, run again;
                                                                never a failure

A job ends in exactly one ``Outcome``; a dead-lettered job also carries a ``Reason``. A job for
a chat that another job is already archiving ends as ``duplicate`` without calling the provider.
Reasons that are not provider answers come from the job itself (``unknown_account``,
``invalid_request``), from running out of retries (``retries_exhausted``), from a job that never
finishes because it kills its worker (``worker_lost``) and from a bug of ours
(``internal_error``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from config.errors import ArchiverError


class Outcome(StrEnum):
    ARCHIVED = "archived"
    ALREADY_ARCHIVED = "already_archived"
    DEAD_LETTERED = "dead_lettered"
    # Another job for the same chat was pending or running (its id is in the result's
    # `duplicate_of`): that job makes the provider call. Not an error.
    DUPLICATE = "duplicate"
    # The undo of an archive (GREEN-API unarchiveChat, Wassenger DELETE .../archive).
    UNARCHIVED = "unarchived"
    ALREADY_UNARCHIVED = "already_unarchived"


class Reason(StrEnum):
    # Per job: this job can never succeed as it is.
    CHAT_NOT_FOUND = "chat_not_found"
    NO_MESSAGES = "no_messages"
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_ACCOUNT = "unknown_account"
    UNEXPECTED_RESPONSE = "unexpected_response"
    RETRIES_EXHAUSTED = "retries_exhausted"
    WORKER_LOST = "worker_lost"
    INTERNAL_ERROR = "internal_error"
    # Per account: every job of the account fails the same way until someone fixes it.
    UNAUTHORIZED = "unauthorized"
    ACCOUNT_UNAVAILABLE = "account_unavailable"
    QUOTA_EXCEEDED = "quota_exceeded"
    # The provider does not know the request's route (a 404 that is not its documented "chat not
    # found", a wrong api_url, a proxy's page): a setting to fix, never a job's fault.
    MISCONFIGURED = "misconfigured"


ACCOUNT_REASONS = frozenset(
    {Reason.UNAUTHORIZED, Reason.ACCOUNT_UNAVAILABLE, Reason.QUOTA_EXCEEDED, Reason.MISCONFIGURED}
)


class Kind(StrEnum):
    SUCCESS = "success"
    PERMANENT = "permanent"
    ACCOUNT = "account"
    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class Verdict:
    """What one provider answer means."""

    kind: Kind
    outcome: Outcome | None = None  # set for SUCCESS
    reason: Reason | None = None  # set for PERMANENT and ACCOUNT

    def __post_init__(self) -> None:
        if (self.kind is Kind.SUCCESS) != (self.outcome is not None):
            raise ValueError("a SUCCESS verdict, and only it, has an outcome")
        if (self.kind in (Kind.PERMANENT, Kind.ACCOUNT)) != (self.reason is not None):
            raise ValueError("PERMANENT and ACCOUNT verdicts, and only they, have a reason")
        if self.kind is Kind.ACCOUNT and self.reason not in ACCOUNT_REASONS:
            raise ValueError(f"{self.reason} is not an account-level reason")

    def __str__(self) -> str:
        return str(self.outcome or self.reason or self.kind)


ARCHIVED = Verdict(Kind.SUCCESS, outcome=Outcome.ARCHIVED)
ALREADY_ARCHIVED = Verdict(Kind.SUCCESS, outcome=Outcome.ALREADY_ARCHIVED)
UNARCHIVED = Verdict(Kind.SUCCESS, outcome=Outcome.UNARCHIVED)
ALREADY_UNARCHIVED = Verdict(Kind.SUCCESS, outcome=Outcome.ALREADY_UNARCHIVED)
CHAT_NOT_FOUND = Verdict(Kind.PERMANENT, reason=Reason.CHAT_NOT_FOUND)
NO_MESSAGES = Verdict(Kind.PERMANENT, reason=Reason.NO_MESSAGES)
INVALID_REQUEST = Verdict(Kind.PERMANENT, reason=Reason.INVALID_REQUEST)
UNEXPECTED_RESPONSE = Verdict(Kind.PERMANENT, reason=Reason.UNEXPECTED_RESPONSE)
UNAUTHORIZED = Verdict(Kind.ACCOUNT, reason=Reason.UNAUTHORIZED)
ACCOUNT_UNAVAILABLE = Verdict(Kind.ACCOUNT, reason=Reason.ACCOUNT_UNAVAILABLE)
QUOTA_EXCEEDED = Verdict(Kind.ACCOUNT, reason=Reason.QUOTA_EXCEEDED)
MISCONFIGURED = Verdict(Kind.ACCOUNT, reason=Reason.MISCONFIGURED)
TRANSIENT = Verdict(Kind.TRANSIENT)
RATE_LIMITED = Verdict(Kind.RATE_LIMITED)


# -- how a job that did not end in success reads in Celery's result backend and in Flower --------


class DeadLettered(ArchiverError):
    """The job's final state is FAILURE with this exception: Flower counts it as failed and shows
    ``reason: detail``. Its arguments (the JSON result's ``exc_message``) are the reason, the
    detail and the dead letter's id, for consumers in any language."""

    def __init__(self, reason: str, detail: str = "", dead_letter_id: str = "") -> None:
        super().__init__(reason, detail, dead_letter_id)
        self.reason = reason
        self.detail = detail
        self.dead_letter_id = dead_letter_id

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


class Deferred(Exception):
    """The job waits in Redis to run again (a retry's countdown, its account's rate limit, a
    paused account): its state is RETRY, which Flower shows as retried, and it is not ready."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why

    def __str__(self) -> str:
        return self.why
