"""A sweep policy's selection (tasks/sweep/policy.py) and its checks at load (config/sweep.py),
rule by rule."""

from __future__ import annotations

import pytest

from config.sweep import SweepEntry
from tasks.providers import ChatInfo
from tasks.sweep import skip_reason

CUTOFF = 1_000_000.0


def policy(**fields: object) -> object:
    return SweepEntry.model_validate(fields).policy("wassenger")


def chat(**fields: object) -> ChatInfo:
    values: dict = {"id": "447000000001@c.us", "kind": "user", "archived": False, **fields}
    values.setdefault("last_activity", CUTOFF - 1)
    return ChatInfo(**values)


@pytest.mark.parametrize(
    ("fields", "chat_fields", "reason"),
    [
        ({}, {}, None),
        ({}, {"kind": "channel"}, "channel"),
        ({}, {"kind": "group"}, "group"),
        ({"include_groups": True}, {"kind": "group"}, None),
        ({"include_people": False}, {}, "person"),
        ({}, {"archived": True}, "already archived"),
        ({}, {"last_activity": CUTOFF + 1}, "active"),
        ({}, {"unread": 2}, "unread"),
        ({"skip_unread": False}, {"unread": 2}, None),
        ({"statuses": ["resolved"]}, {"status": "active"}, "status"),
        ({"statuses": ["resolved"]}, {"status": "resolved"}, None),
        ({"exclude_labels": ["vip"]}, {"labels": ("vip", "x")}, "label"),
        ({"exclude_labels": ["vip"]}, {"labels": ("x",)}, None),
    ],
)
def test_each_rule_of_the_policy_selects_or_skips(
    fields: dict[str, object], chat_fields: dict[str, object], reason: str | None
) -> None:
    assert skip_reason(policy(**fields), chat(**chat_fields), CUTOFF) == reason  # type: ignore[arg-type]


def test_a_schedule_and_an_interval_together_are_refused() -> None:
    with pytest.raises(ValueError, match="schedule or every: give one of them, not both"):
        SweepEntry.model_validate({"schedule": "0 3 * * *", "every": "6h"})


@pytest.mark.parametrize("fields", [{"statuses": ["resolved"]}, {"exclude_labels": ["vip"]}])
def test_wassenger_only_filters_are_refused_for_green_api(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="apply to Wassenger only"):
        SweepEntry.model_validate(fields).policy("green-api")
    assert SweepEntry.model_validate(fields).policy("wassenger") is not None
