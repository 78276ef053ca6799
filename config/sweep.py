"""An account's sweep policy: which inactive chats Celery beat archives, and when.

Written in the accounts file as ``[accounts.sweep]``; absent means the account is never swept.

    enabled         true        (the table's presence is the intent; false pauses it)
    inactive_after  "30d"       no message either way for at least this long (1h to 3650d)
    schedule        "0 3 * * *" a crontab (UTC)            } one of the two;
    every           "6h"        or a fixed interval        } default: nightly at 03:00 UTC
                                (at least 1s: beat would flood the broker below that)
    include_people  true        one-to-one chats
    include_groups  false       group chats (channels are never archived by a sweep)
    skip_unread     true        leave chats with unread messages (Wassenger reports unread
                                counts; GREEN-API's listings carry none, so there it cannot apply)
    statuses        (any)       Wassenger: only chats in these platform statuses
    exclude_labels  []          Wassenger: never chats carrying any of these labels
    max_share       0.25        a sweep that would archive more than this share of the chats its
    max_chats       2000        listing returned, or more chats than this, archives nothing and
                                is held until an operator confirms it (`chat-archiver sweep
                                --confirm RUN_ID`)
    journals_complete_since     GREEN-API: the operator's word that the instance's journals have
                    (none)      been complete since this time (ISO 8601 with a zone,
                                "2026-11-01T00:00:00Z"); see tasks/sweep/journals.py

Why these bounds: a sweep of a steady account archives the chats that went quiet since the last
one, a small share of the account. A sweep about to archive a quarter of it is far more likely
to be reading incomplete evidence (journals reset, a listing that changed shape) than to be
right, and is worth a person's look before it acts; 2,000 chats is more than a nightly sweep of
all but the largest accounts archives, yet few enough to review, and undo, in minutes. The share
also guards small accounts, where a count never would. The first sweep of an account with years
of backlog is held by design: look at it (`--dry-run --list`), then confirm it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from config.errors import one_line, show
from config.providers import GREEN_API
from config.units import DAY, format_duration, parse_duration

if TYPE_CHECKING:
    from celery.schedules import crontab

DEFAULT_SCHEDULE = "0 3 * * *"

# Below a second between sweeps beat would flood the broker; above that, a sweep that is still
# running makes the next tick skip (its per-account lock), so short intervals only waste calls.
MIN_EVERY = 1.0
# Archiving chats quiet for less than an hour is not archiving inactive chats: most likely a
# unit slip ("6m" read as six months is six minutes), which would archive nearly everything.
MIN_INACTIVE_AFTER = 3600.0
MAX_INACTIVE_AFTER = 3650 * DAY
_CRONTAB_MAX_LENGTH = 200

_Label = Annotated[StrictStr, StringConstraints(min_length=1, max_length=100)]

DEFAULT_MAX_SHARE = 0.25
DEFAULT_MAX_CHATS = 2000
# A count above this is no bound at all (an account holds far fewer chats).
MAX_MAX_CHATS = 10_000_000


def parse_crontab(text: str) -> crontab:
    # Imported here: Celery is heavy, and only sweep policies with a schedule need it.
    from celery.schedules import crontab

    fields = text.split() if len(text) <= _CRONTAB_MAX_LENGTH else []
    if len(fields) != 5:
        raise ValueError(f"{show(text)} is not a crontab (5 fields: minute hour day month weekday)")
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except Exception as error:
        # Celery's parser raises ValueError for most mistakes, but not for all of them (a step
        # of 0 divides by zero): any failure to parse what a person wrote is that person's to fix.
        why = one_line(str(error))[:100] or type(error).__name__
        raise ValueError(f"{show(text)} is not a crontab ({why})") from None


def parse_moment(text: str) -> float:
    """An ISO 8601 time with its zone ("2026-11-01T00:00:00Z"), as unix time. A time without a
    zone is refused: read in the wrong zone it would claim hours of evidence nobody has."""
    if len(text) > 64:
        raise ValueError(f"{show(text)} is not an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f'{show(text)} is not an ISO 8601 time (e.g. "2026-11-01T00:00:00Z")'
        ) from None
    return _aware(moment, show(text))


def _aware(moment: datetime, shown: str) -> float:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{shown} has no time zone (write Z for UTC)")
    return moment.timestamp()


def _bounded(name: str, text: str, low: float, high: float) -> float:
    seconds = parse_duration(text)
    if not low <= seconds <= high:
        raise ValueError(
            f"{show(text)}: {name} must be between {format_duration(low)} "
            f"and {format_duration(high)}"
        )
    return seconds


@dataclass(frozen=True)
class SweepPolicy:
    enabled: bool
    inactive_after: float  # seconds
    schedule: str | None  # crontab text, or None when `every` is set
    every: float | None  # seconds
    include_people: bool
    include_groups: bool
    skip_unread: bool
    statuses: frozenset[str] | None
    exclude_labels: frozenset[str]
    max_share: float = DEFAULT_MAX_SHARE
    max_chats: int = DEFAULT_MAX_CHATS
    journals_complete_since: float | None = None  # unix time, GREEN-API only


class SweepEntry(BaseModel):
    """``[accounts.sweep]`` as written."""

    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool = True
    inactive_after: StrictStr = "30d"
    schedule: StrictStr | None = None
    every: StrictStr | None = None
    include_people: StrictBool = True
    include_groups: StrictBool = False
    skip_unread: StrictBool = True
    statuses: Annotated[list[_Label], Field(max_length=100)] | None = None
    exclude_labels: Annotated[list[_Label], Field(max_length=100)] = []
    max_share: Annotated[StrictFloat, Field(gt=0, le=1)] = DEFAULT_MAX_SHARE
    max_chats: Annotated[StrictInt, Field(ge=1, le=MAX_MAX_CHATS)] = DEFAULT_MAX_CHATS
    # A string, or TOML's own date-time (written without quotes).
    journals_complete_since: StrictStr | datetime | None = None

    @field_validator("inactive_after")
    @classmethod
    def _inactive_after(cls, value: str) -> str:
        _bounded("inactive_after", value, MIN_INACTIVE_AFTER, MAX_INACTIVE_AFTER)
        return value

    @field_validator("every")
    @classmethod
    def _every(cls, value: str | None) -> str | None:
        if value is not None:
            _bounded("every", value, MIN_EVERY, MAX_INACTIVE_AFTER)
        return value

    @field_validator("schedule")
    @classmethod
    def _crontab(cls, value: str | None) -> str | None:
        if value is not None:
            parse_crontab(value)
        return value

    @field_validator("journals_complete_since")
    @classmethod
    def _moment(cls, value: str | datetime | None) -> str | datetime | None:
        if value is not None:
            moment = _since(value)
            if moment > time.time():
                raise ValueError(f"{_shown(value)} is in the future")
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> SweepEntry:
        if self.schedule is not None and self.every is not None:
            raise ValueError("schedule or every: give one of them, not both")
        return self

    def policy(self, provider: str) -> SweepPolicy:
        if provider == GREEN_API and (self.statuses is not None or self.exclude_labels):
            raise ValueError("sweep.statuses and sweep.exclude_labels apply to Wassenger only")
        if provider != GREEN_API and self.journals_complete_since is not None:
            # Wassenger's listing carries each chat's last activity: no journals to vouch for.
            raise ValueError("sweep.journals_complete_since applies to GREEN-API only")
        return SweepPolicy(
            enabled=self.enabled,
            inactive_after=parse_duration(self.inactive_after),
            schedule=None if self.every else (self.schedule or DEFAULT_SCHEDULE),
            every=parse_duration(self.every) if self.every else None,
            include_people=self.include_people,
            include_groups=self.include_groups,
            skip_unread=self.skip_unread,
            statuses=frozenset(self.statuses) if self.statuses is not None else None,
            exclude_labels=frozenset(self.exclude_labels),
            max_share=float(self.max_share),
            max_chats=self.max_chats,
            journals_complete_since=(
                None
                if self.journals_complete_since is None
                else _since(self.journals_complete_since)
            ),
        )


def _shown(value: str | datetime) -> str:
    return show(value) if isinstance(value, str) else value.isoformat()


def _since(value: str | datetime) -> float:
    if isinstance(value, datetime):
        return _aware(value, _shown(value))
    return parse_moment(value)
