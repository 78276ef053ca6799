"""The archive job contract, checked the same way by producers (refuse at enqueue) and by the
task (a malformed message that got through anyway is dead-lettered, never a crash).

Task ``archive.chat``, keyword arguments only:
    provider    "green-api" | "wassenger"
    account     GREEN-API idInstance or Wassenger device id, as a string
    chat_id     the chat, e.g. "79001234567@c.us"
    request_id  optional, the caller's id for tracing (at most 128 characters)
    source      optional, who asked (default "api"; sweeps say "sweep")
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from config import PROVIDERS

TASK_NAME = "archive.chat"
_REQUIRED = ("provider", "account", "chat_id")
_OPTIONAL_LIMITS = {"request_id": 128, "source": 64}
_FIELDS = (*_REQUIRED, *_OPTIONAL_LIMITS)


class InvalidJob(ValueError):
    """One line naming the field and the problem."""


@dataclass(frozen=True)
class ArchiveJob:
    provider: str
    account: str
    chat_id: str
    request_id: str | None = None
    source: str = "api"

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
        }
        return {key: value for key, value in kwargs.items() if value is not None}

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> ArchiveJob:
        if not isinstance(data, Mapping):
            raise InvalidJob(
                f"job: expected an object of keyword arguments, got {type(data).__name__}"
            )
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise InvalidJob(f"{unknown[0]}: unexpected field (expected {', '.join(_FIELDS)})")
        for name in _REQUIRED:
            value = data.get(name)
            if value is None or value == "":
                raise InvalidJob(f"{name}: missing")
            if not isinstance(value, str):
                raise InvalidJob(f"{name}: must be a string, got {type(value).__name__}")
        provider, account, chat_id = (data[name].strip() for name in _REQUIRED)
        spec = PROVIDERS.get(provider)
        if spec is None:
            raise InvalidJob(f"provider: {provider!r} is not one of {', '.join(sorted(PROVIDERS))}")
        if not spec.account_id_pattern.match(account):
            raise InvalidJob(f"account: {account!r} is not a {provider} {spec.account_id_hint}")
        if not spec.chat_id_pattern.match(chat_id):
            raise InvalidJob(
                f"chat_id: {chat_id!r} is not a {provider} chat id ({spec.chat_id_hint})"
            )
        optional: dict[str, str] = {}
        for name, limit in _OPTIONAL_LIMITS.items():
            value = data.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise InvalidJob(f"{name}: must be a string, got {type(value).__name__}")
            if len(value) > limit:
                raise InvalidJob(f"{name}: longer than {limit} characters")
            if value:
                optional[name] = value
        return cls(provider=provider, account=account, chat_id=chat_id, **optional)


def job_summary(data: Any) -> dict[str, Any]:
    """What a dead letter records of a job that may be malformed: the known fields as given."""
    if isinstance(data, Mapping):
        return {key: data[key] for key in _FIELDS if key in data}
    return {"raw": repr(data)[:200]}
