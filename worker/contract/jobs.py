"""The archive job contract, checked the same way by producers (refuse at enqueue) and by the
task (a malformed message that got through anyway is dead-lettered, never a crash).

Task ``archive.chat``, keyword arguments only:
    provider    "green-api" | "wassenger"
    account     GREEN-API idInstance or Wassenger device id, as a string
    chat_id     the chat, e.g. "79001234567@c.us"
    request_id  optional, the caller's id for tracing (at most 128 characters)
    source      optional, who asked (default "api"; sweeps say "sweep")
    sweep_run   optional, the sweep run that enqueued it (at most 64 characters): its final
                ending adds an archived chat to that run's record (worker/stores/sweep_runs.py)

Ids are normalised here, the one place producers and workers both go through, before anything
builds a Redis key, a queue name or a rate limit from them: surrounding whitespace dropped,
Wassenger's hex device ids and chat id suffixes lower-cased, ASCII digits only (see
config/providers.py). So ``"7105187566"``, ``" 7105187566"`` and ``"7105187566\n"`` are one
account with one rate limit, and ``"٧١٠٥١٨٧٥٦٦"`` (Arabic-Indic digits) is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from config import PROVIDERS
from config.errors import UserError, location, show

_REQUIRED = ("provider", "account", "chat_id")
_OPTIONAL_LIMITS = {"request_id": 128, "source": 64, "sweep_run": 64}
_FIELDS = (*_REQUIRED, *_OPTIONAL_LIMITS)
# A task id goes into Redis keys, delivery tags and log lines: the alphabet workers accept in a
# message's ``id`` header (worker/contract/envelope.py), which Celery's uuids fit.
TASK_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}\Z")


class InvalidJob(UserError, ValueError):
    """One line naming the field and the problem."""


@dataclass(frozen=True)
class ArchiveJob:
    provider: str
    account: str
    chat_id: str
    request_id: str | None = None
    source: str = "api"
    sweep_run: str | None = None

    @property
    def account_key(self) -> str:
        return f"{self.provider}:{self.account}"

    def kwargs(self) -> dict[str, Any]:
        """The task's keyword arguments: what goes into the message."""
        kwargs = {
            "provider": self.provider,
            "account": self.account,
            "chat_id": self.chat_id,
            "request_id": self.request_id,
            "source": self.source,
            "sweep_run": self.sweep_run,
        }
        return {key: value for key, value in kwargs.items() if value is not None}

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> ArchiveJob:
        if not isinstance(data, Mapping):
            raise InvalidJob(
                f"job: expected an object of keyword arguments, got {type(data).__name__}"
            )
        unknown = sorted(str(key) for key in data if key not in _FIELDS)
        if unknown:
            raise InvalidJob(
                f"{location([unknown[0]])}: unexpected field (expected {', '.join(_FIELDS)})"
            )
        for name in _REQUIRED:
            value = data.get(name)
            if value is None or value == "":
                raise InvalidJob(f"{name}: missing")
            if not isinstance(value, str):
                raise InvalidJob(f"{name}: must be a string, got {type(value).__name__}")
        provider = data["provider"].strip().lower()
        spec = PROVIDERS.get(provider)
        if spec is None:
            raise InvalidJob(
                f"provider: {show(data['provider'])} is not one of {', '.join(sorted(PROVIDERS))}"
            )
        try:
            account = spec.normalise_account_id(data["account"])
        except ValueError as error:
            raise InvalidJob(f"account: {error}") from None
        try:
            chat_id = spec.normalise_chat_id(data["chat_id"])
        except ValueError as error:
            raise InvalidJob(f"chat_id: {error}") from None
        optional: dict[str, str] = {}
        for name, limit in _OPTIONAL_LIMITS.items():
            value = data.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise InvalidJob(f"{name}: must be a string, got {type(value).__name__}")
            if len(value) > limit:
                raise InvalidJob(f"{name}: longer than {limit} characters")
            # Logged, stored and shown as given: a line break would forge a log line, and a
            # lone surrogate cannot be written to Redis at all.
            if not value.isprintable():
                raise InvalidJob(f"{name}: must be printable text on one line")
            if value:
                optional[name] = value
        return cls(provider=provider, account=account, chat_id=chat_id, **optional)


def parse_task_id(value: Any) -> str | None:
    """A producer row's optional ``task_id`` (a resend passes back the id it was given): None
    when absent or empty, else the id, or InvalidJob naming the field."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidJob(f"task_id: must be a string, got {type(value).__name__}")
    if not TASK_ID.match(value):
        raise InvalidJob(
            f"task_id: {show(value)} is not a task id (1-128 of A-Z a-z 0-9 _ . : @ -, "
            "starting with a letter or digit, as Celery's uuids are)"
        )
    return value


def job_summary(data: Any) -> dict[str, Any]:
    """What a dead letter records of a job that may be malformed: the known fields as given."""
    if isinstance(data, Mapping):
        return {key: data[key] for key in _FIELDS if key in data}
    return {"raw": repr(data)[:200]}
