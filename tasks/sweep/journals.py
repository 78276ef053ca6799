"""Whether a GREEN-API sweep may believe the journals it lists (facts: tasks/providers/FACTS.md,
"Journals and the settings they need").

getChats has no timestamps, so a GREEN-API sweep calls a chat inactive when it is missing from
lastIncomingMessages and lastOutgoingMessages over the window. Those journals hold messages only
while the instance's settings are on, and only since they were turned on: a chat active last week
is missing from a journal turned on yesterday. So before it lists, a sweep

1. reads getSettings (at the listing rate, through the shared limiter) and refuses when a setting
   the journals need is off;
2. needs evidence that the journals were complete over the whole ``inactive_after`` window:
   either sweeps have seen the settings on, without a sighting off, since at least that long
   (the account's sightings in Redis, worker/stores/journal_evidence.py; a setting takes up to 5
   minutes to apply, so a first sighting counts from 5 minutes later), or the operator says so in
   the sweep policy (``journals_complete_since``), which a later sighting off overrules.

Sightings only see what sweeps saw: a setting turned off and on again between two sweeps goes
unnoticed (so does an operator's wrong statement). Sweeping or dry-running more often narrows that.

Wassenger needs none of this: its chat listing carries each chat's own ``lastMessageAt``, so a
chat's inactivity is read from the chat itself, not inferred from its absence elsewhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx

from config import Account, SweepPolicy
from config.errors import show
from config.units import DAY
from tasks.providers import GreenApiAdapter, ListingError
from tasks.providers.base import unreadable_answer
from tasks.providers.green_api import method_url
from tasks.sweep.calls import ListingCalls
from worker.stores.journal_evidence import JournalEvidence, Sightings

# The settings the journals need, all "yes": incomingWebhook for lastIncomingMessages;
# outgoingMessageWebhook for messages sent from the phone in lastOutgoingMessages; outgoingWebhook
# because an earlier revision of the LastOutgoingMessages page names it for that journal (the
# revisions disagree: requiring it can only refuse a sweep, never archive an active chat).
JOURNAL_SETTINGS = ("incomingWebhook", "outgoingMessageWebhook", "outgoingWebhook")
# "It may take up to 5 minutes for the settings to take effect."
SETTINGS_DELAY = 300.0


@dataclass(frozen=True)
class Verdict:
    """``refusal`` None: the journals may be believed over the window."""

    refusal: str | None
    complete_since: float | None = None


def read_settings(
    calls: ListingCalls, client: httpx.Client, account: Account, adapter: GreenApiAdapter
) -> dict[str, Any]:
    """GET getSettings, behind a permit of the account's limiter, retried like any listing."""
    return calls.call("getSettings", partial(_get_settings, adapter, client, account))


def _get_settings(
    adapter: GreenApiAdapter, client: httpx.Client, account: Account
) -> dict[str, Any]:
    method = "getSettings"
    request = adapter.build(client, method, "GET", method_url(account, method))
    started = time.monotonic()
    with adapter.listing(client, method, request) as response:
        response.read()
        try:
            settings = response.json()
        except (ValueError, RecursionError) as error:
            raise ListingError(method, unreadable_answer(error, started)) from None
    if not isinstance(settings, dict):
        raise ListingError(method, unreadable_answer(TypeError("not an object"), started))
    return settings


def settings_off(settings: dict[str, Any]) -> list[str]:
    """The settings the journals need that are not "yes" (missing counts as off)."""
    return [name for name in JOURNAL_SETTINGS if settings.get(name) != "yes"]


def judge(
    evidence: JournalEvidence,
    account: Account,
    policy: SweepPolicy,
    settings: dict[str, Any],
    now: float,
) -> Verdict:
    """Record what this sweep saw and say whether the journals cover the whole window."""
    off = settings_off(settings)
    if off:
        evidence.saw_off(account.key, now, off)
        shown = ", ".join(f"{name}={_value(settings.get(name))}" for name in off)
        return Verdict(
            f"GREEN-API setting {shown}: the journals miss messages, so a chat missing from them "
            "is not proven inactive (turn it on with setSettings or in the console; archiving "
            f"resumes once it has been on for inactive_after, {_days(policy.inactive_after)})"
        )
    sightings = evidence.saw_on(account.key, now)
    since, source = _complete_since(policy, sightings)
    need = policy.inactive_after
    if now - since >= need:
        return Verdict(None, since)
    return Verdict(
        f"journals proven complete only since {_moment(since)} ({source}), "
        f"{_days(max(0.0, now - since))} of the {_days(need)} inactive_after window: "
        f"nothing is archived before {_moment(since + need)}"
        + (
            ""
            if policy.journals_complete_since is not None
            else " (or state journals_complete_since in the sweep policy)"
        ),
        since,
    )


def _complete_since(policy: SweepPolicy, sightings: Sightings) -> tuple[float, str]:
    seen = (sightings.on_since or 0.0) + SETTINGS_DELAY
    stated = policy.journals_complete_since
    if stated is not None:
        if sightings.off_at is None or sightings.off_at < stated:
            return stated, "journals_complete_since"
        return seen, (
            f"first seen on by a sweep; journals_complete_since is overruled by "
            f"{sightings.off_settings} seen off at {_moment(sightings.off_at)}"
        )
    return seen, "first seen on by a sweep"


def _moment(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _days(seconds: float) -> str:
    if seconds >= DAY:
        return f"{seconds / DAY:.1f}d".replace(".0d", "d")
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h".replace(".0h", "h")
    return f"{seconds / 60:.0f}m"


def _value(value: object) -> str:
    return "missing" if value is None else show(value)
