"""An account's sweep policy: which inactive chats Celery beat archives, and when.

Written in the accounts file as ``[accounts.sweep]``; absent means the account is never swept.

    enabled         true        (the table's presence is the intent; false pauses it)
    inactive_after  "30d"       no message either way for at least this long
    schedule        "0 3 * * *" a crontab (UTC)            } one of the two;
    every           "6h"        or a fixed interval        } default: nightly at 03:00 UTC
    include_people  true        one-to-one chats
    include_groups  false       group chats (channels are never archived by a sweep)
    skip_unread     true        leave chats with unread messages (Wassenger reports unread
                                counts; GREEN-API's listings carry none, so there it cannot apply)
    statuses        (any)       Wassenger: only chats in these platform statuses
    exclude_labels  []          Wassenger: never chats carrying any of these labels
"""

from __future__ import annotations

from dataclasses import dataclass

from celery.schedules import crontab
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, field_validator, model_validator

from config.providers import WASSENGER
from config.units import parse_duration

DEFAULT_SCHEDULE = "0 3 * * *"


def parse_crontab(text: str) -> crontab:
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(
            f"schedule: {text!r} is not a crontab (5 fields: minute hour day month weekday)"
        )
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except ValueError as error:
        raise ValueError(f"schedule: {text!r} is not a crontab ({error})") from None


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
    statuses: list[StrictStr] | None = None
    exclude_labels: list[StrictStr] = []

    @field_validator("inactive_after", "every")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
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
