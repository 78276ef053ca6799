"""GREEN-API instance settings and the two message journals they govern, as the simulator keeps
them (facts and sources: tasks/providers/FACTS.md, "Journals and the settings they need").

- ``getSettings`` answers the documented settings object: ``DEFAULT_SETTINGS`` overlaid with the
  account's own ``settings`` (a setting given as null is left out of the answer).
- lastIncomingMessages holds messages only while ``incomingWebhook`` is "yes", and only since it
  was last turned on; lastOutgoingMessages likewise with ``outgoingMessageWebhook``. Turning a
  setting off through the admin API ends its journal there; turning it on again starts it anew
  (messages from before are never there).
- The admin switch ``journals`` starts journals N days ago (``{"since_days_ago": N}``, or per
  journal ``incoming_since_days_ago`` / ``outgoing_since_days_ago``; ``null``: complete, the
  default), for "the settings were turned on N days ago".

The simulator knows each chat's newest message per direction only, so a chat whose newest message
falls outside a journal's span is absent from it altogether.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

DAY = 86400.0
DIRECTIONS = ("incoming", "outgoing")

# The response fields of GET getSettings, in the documented order, with the simulator's values:
# a configured instance whose journals are on (https://green-api.com/en/docs/api/account/GetSettings).
DEFAULT_SETTINGS: dict[str, Any] = {
    "wid": "",
    "countryInstance": "",
    "typeAccount": "",
    "webhookUrl": "",
    "webhookUrlToken": "",
    "delaySendMessagesMilliseconds": 5000,
    "markIncomingMessagesReaded": "no",
    "markIncomingMessagesReadedOnReply": "no",
    "sharedSession": "no",
    "outgoingWebhook": "yes",
    "outgoingMessageWebhook": "yes",
    "outgoingAPIMessageWebhook": "yes",
    "incomingWebhook": "yes",
    "deviceWebhook": "no",
    "statusInstanceWebhook": "no",
    "stateWebhook": "no",
    "enableMessagesHistory": "no",
    "keepOnlineStatus": "no",
    "pollMessageWebhook": "no",
    "incomingBlockWebhook": "yes",
    "incomingCallWebhook": "no",
}
# The setting each journal needs to record messages (LastIncomingMessages: "Receive webhooks on
# incoming messages and files"; LastOutgoingMessages: "Receive webhooks on messages sent from
# phone", API-sent messages being recorded anyway).
JOURNAL_SETTING = {"incoming": "incomingWebhook", "outgoing": "outgoingMessageWebhook"}
YES_NO = ("yes", "no")


class JournalSpecError(ValueError):
    """An admin request described settings or journals the simulator cannot hold."""


def settings_of(account_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The getSettings answer for an instance."""
    settings = dict(DEFAULT_SETTINGS)
    settings["wid"] = f"{account_id}@c.us"
    settings.update(overrides)
    # null: a field the answer leaves out (an API revision without it).
    return {name: value for name, value in settings.items() if value is not None}


def check_settings(settings: dict[str, Any]) -> None:
    for name in JOURNAL_SETTING.values():
        if name in settings and settings[name] not in (*YES_NO, None):
            raise JournalSpecError(f"settings.{name} must be 'yes', 'no' or null (left out)")


def setting_on(overrides: dict[str, Any], direction: str) -> bool:
    name = JOURNAL_SETTING[direction]
    return overrides.get(name, DEFAULT_SETTINGS[name]) == "yes"


@dataclass(slots=True)
class Journal:
    """When a journal recorded: from ``since`` (None: before any message) to ``until`` (None: it
    still records)."""

    since: float | None = None
    until: float | None = None

    def span(self, start: float) -> tuple[float, float]:
        """What a request for the messages since ``start`` gets: those at or after the first
        time, before the second."""
        low = start if self.since is None else max(start, self.since)
        return low, math.inf if self.until is None else self.until


@dataclass(slots=True)
class Journals:
    incoming: Journal = field(default_factory=Journal)
    outgoing: Journal = field(default_factory=Journal)

    def of(self, direction: str) -> Journal:
        return self.incoming if direction == "incoming" else self.outgoing

    def created(self, overrides: dict[str, Any], now: float) -> None:
        """An instance created with a journal's setting off has recorded nothing in it."""
        for direction in DIRECTIONS:
            if not setting_on(overrides, direction):
                self.of(direction).since = self.of(direction).until = now

    def settings_changed(self, before: dict[str, Any], after: dict[str, Any], now: float) -> None:
        """Turning a journal's setting off ends the journal now; turning it on starts it now."""
        for direction in DIRECTIONS:
            was, is_on = setting_on(before, direction), setting_on(after, direction)
            journal = self.of(direction)
            if was and not is_on:
                journal.until = now
            elif is_on and not was:
                journal.since, journal.until = now, None

    def update(self, spec: Any, now: float) -> None:
        """The admin switch: journals that began N days ago (null: complete)."""
        if not isinstance(spec, dict):
            raise JournalSpecError("journals is a JSON object")
        allowed = {"since_days_ago"} | {f"{d}_since_days_ago" for d in DIRECTIONS}
        unknown = set(spec) - allowed
        if unknown:
            raise JournalSpecError(f"unknown journals fields: {', '.join(sorted(unknown))}")
        for direction in DIRECTIONS:
            key = f"{direction}_since_days_ago"
            if key not in spec and "since_days_ago" not in spec:
                continue
            days = spec.get(key, spec.get("since_days_ago"))
            if days is not None and (
                isinstance(days, bool) or not isinstance(days, int | float) or days < 0
            ):
                raise JournalSpecError(f"journals.{key} must be a number of days >= 0, or null")
            self.of(direction).since = None if days is None else now - float(days) * DAY

    def to_dict(self) -> dict[str, Any]:
        return {
            direction: {"since": self.of(direction).since, "until": self.of(direction).until}
            for direction in DIRECTIONS
        }
