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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from config.errors import one_line, show
from config.providers import WASSENGER
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

    @model_validator(mode="after")
    def _one_schedule(self) -> SweepEntry:
        if self.schedule is not None and self.every is not None:
            raise ValueError("schedule or every: give one of them, not both")
        return self

    def policy(self, provider: str) -> SweepPolicy:
        if provider != WASSENGER and (self.statuses is not None or self.exclude_labels):
            raise ValueError("sweep.statuses and sweep.exclude_labels apply to Wassenger only")
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
        )
