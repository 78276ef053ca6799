"""Which listed chats a sweep archives (the account's policy, config/sweep.py), and what a sweep
reports."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from config import SweepPolicy, UserError
from tasks.providers import ChatInfo


class SweepError(UserError):
    """A sweep asked for that cannot run (no policy, half an account): one line, no retry."""


@dataclass
class SweepSummary:
    account: str
    dry_run: bool
    status: str = "done"  # done | skipped | failed
    listed: int = 0
    selected: int = 0
    enqueued: int = 0
    duplicates: int = 0  # already pending: enqueued by someone else, not twice
    refused: int = 0  # selected, but not a valid job (a chat id of a shape we do not archive)
    skipped: Counter[str] = field(default_factory=Counter)  # why a listed chat was left alone
    calls: Counter[str] = field(default_factory=Counter)  # listing calls by method
    seconds: float = 0.0
    error: str | None = None
    chats: list[str] | None = None  # the selected chats, when asked for

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"], data["calls"] = dict(self.skipped), dict(self.calls)
        if self.chats is None:
            del data["chats"]
        return data


def skip_reason(policy: SweepPolicy, chat: ChatInfo, cutoff: float) -> str | None:
    """Why the policy leaves this chat alone, or None when it is to be archived."""
    if chat.kind == "channel":
        return "channel"
    if chat.kind == "group" and not policy.include_groups:
        return "group"
    if chat.kind == "user" and not policy.include_people:
        return "person"
    if chat.archived:
        return "already archived"
    if chat.last_activity is not None and chat.last_activity > cutoff:
        return "active"
    if policy.skip_unread and (chat.unread or 0) > 0:
        return "unread"
    if policy.statuses is not None and chat.status not in policy.statuses:
        return "status"
    if policy.exclude_labels.intersection(chat.labels):
        return "label"
    return None
