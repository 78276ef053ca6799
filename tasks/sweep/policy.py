"""Which listed chats a sweep archives (the account's policy, config/sweep.py), when a sweep must
wait for an operator instead (its safety bound), and what a sweep reports."""

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
    """One sweep run, as it reports and as its record (worker/stores/sweep_runs.py) keeps it."""

    run: str
    provider: str
    account: str  # the account's id (``key`` is "provider:id")
    dry_run: bool
    started_at: float
    # completed | dry_run | skipped | held | failed (the sweeps metric's result)
    status: str = "completed"
    reason: str | None = None  # why it archived nothing (or, for a dry run, why it would not)
    would_be: str | None = None  # a dry run: "skipped" or "held" when a real run would be
    listed: int = 0
    selected: int = 0
    enqueued: int = 0
    duplicates: int = 0  # already pending: enqueued by someone else, not twice
    refused: int = 0  # selected, but not a valid job (a chat id of a shape we do not archive)
    held: int = 0  # selected and waiting for an operator's --confirm
    dropped: int = 0  # a confirmed run's held chats that are no longer inactive
    skipped: Counter[str] = field(default_factory=Counter)  # why a listed chat was left alone
    calls: Counter[str] = field(default_factory=Counter)  # listing calls by method
    seconds: float = 0.0
    ended_at: float | None = None
    confirmed_at: float | None = None
    chats: list[str] | None = None  # the selected chats, when asked for

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.account}"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"], data["calls"] = dict(self.skipped), dict(self.calls)
        if self.chats is None:
            del data["chats"]
        return data

    def record(self) -> dict[str, Any]:
        """What the run's record keeps: everything but the chats (they have sets of their own)."""
        data = self.as_dict()
        data.pop("chats", None)
        return data


def over_bound(policy: SweepPolicy, listed: int, selected: int) -> str | None:
    """Why a sweep that selected this many of the listed chats must wait for an operator."""
    if selected > policy.max_chats:
        return f"{selected} chats selected, more than max_chats = {policy.max_chats}"
    if selected > policy.max_share * listed:
        share = selected / listed if listed else 1.0
        return (
            f"{selected} of the {listed} chats listed selected ({share:.0%}), more than "
            f"max_share = {policy.max_share:g}"
        )
    return None


def bound_settled(policy: SweepPolicy, listed: int, selected: int) -> bool:
    """Whether listing more chats (all of them active) can no longer change ``over_bound``."""
    return selected > policy.max_chats or selected <= policy.max_share * listed


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
