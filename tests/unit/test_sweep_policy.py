"""A sweep policy's selection (tasks/sweep/policy.py) and its checks at load (config/sweep.py),
rule by rule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from config import ConfigError, SweepPolicy
from config.accounts import parse_accounts
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


# -- the safety bound and the journals statement ------------------------------------------------

GREEN_ACCOUNT = {
    "provider": "green-api",
    "id": "7105187566",
    "api_url": "https://7105.api.greenapi.com",
    "token_env": "SWEEP_POLICY_TOKEN",
}


WASSENGER_ACCOUNT = {
    "provider": "wassenger",
    "id": "61b37a069cba0c15d6c81c8e",
    "token_env": "SWEEP_POLICY_TOKEN",
}


def load(
    monkeypatch: pytest.MonkeyPatch,
    sweep: dict[str, object],
    account: dict[str, str] = GREEN_ACCOUNT,
) -> SweepPolicy:
    monkeypatch.setenv("SWEEP_POLICY_TOKEN", "abcdefghijklmnopqrstuvwxyz012345")
    [loaded] = list(parse_accounts({"accounts": [{**account, "sweep": sweep}]}, "accounts.toml"))
    assert loaded.sweep is not None
    return loaded.sweep


def test_the_bound_and_the_statement_default_and_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    default = load(monkeypatch, {})
    assert (default.max_share, default.max_chats, default.journals_complete_since) == (
        0.25,
        2000,
        None,
    )
    stated = load(
        monkeypatch,
        {"max_share": 1, "max_chats": 10, "journals_complete_since": "2026-11-01T00:00:00Z"},
    )
    assert (stated.max_share, stated.max_chats) == (1.0, 10)
    assert stated.journals_complete_since == 1793491200.0
    with_offset = load(monkeypatch, {"journals_complete_since": "2026-11-01T02:00:00+02:00"})
    assert with_offset.journals_complete_since == 1793491200.0
    # TOML's own date-time, written without quotes, is taken as well.
    native = load(monkeypatch, {"journals_complete_since": datetime(2026, 11, 1, tzinfo=UTC)})
    assert native.journals_complete_since == 1793491200.0


@pytest.mark.parametrize(
    ("sweep", "error"),
    [
        ({"max_share": 0}, "sweep.max_share: Input should be greater than 0"),
        ({"max_share": 1.5}, "sweep.max_share: Input should be less than or equal to 1"),
        ({"max_share": "25%"}, "sweep.max_share: Input should be a valid number"),
        ({"max_chats": 0}, "sweep.max_chats: Input should be greater than or equal to 1"),
        ({"max_chats": 2.5}, "sweep.max_chats: Input should be a valid integer"),
        (
            {"journals_complete_since": "2026-11-01"},
            "sweep.journals_complete_since: '2026-11-01' has no time zone (write Z for UTC)",
        ),
        (
            {"journals_complete_since": "last month"},
            "sweep.journals_complete_since: 'last month' is not an ISO 8601 time",
        ),
        (
            {"journals_complete_since": "2999-01-01T00:00:00Z"},
            "sweep.journals_complete_since: '2999-01-01T00:00:00Z' is in the future",
        ),
    ],
)
def test_a_wrong_bound_or_statement_is_one_line_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, sweep: dict[str, object], error: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load(monkeypatch, sweep)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("accounts.toml: account 1 (green-api 7105187566): " + error), message


def test_a_journals_statement_is_refused_for_wassenger(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="journals_complete_since applies to GREEN-API only"):
        load(monkeypatch, {"journals_complete_since": "2026-11-01T00:00:00Z"}, WASSENGER_ACCOUNT)
