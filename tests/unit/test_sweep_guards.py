"""A sweep archives only what it can prove inactive (tasks/sweep/journals.py, sweeper.py): a
GREEN-API sweep reads getSettings and refuses when a journal setting is off, and archives nothing
until the journals are proven complete over the whole inactive_after window; Wassenger needs
neither. Against the simulator in a thread, with a real Redis."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.conftest import GREEN_ID
from tests.unit.sweep_support import DAY, Sweeps, days_ago, simulator, sweeps

__all__ = ["simulator", "sweeps"]

CHATS = [
    {"id": "79000000001@c.us", **days_ago(60)},  # inactive
    {"id": "79000000002@c.us", **days_ago(2)},  # active
    {"id": "79000000003@c.us", **days_ago(3)},  # active
    {"id": "79000000004@c.us", **days_ago(4)},  # active
]
STATED = 'journals_complete_since = "2026-01-01T00:00:00Z"'
OPEN_BOUND = "max_share = 1.0"


def policy(*lines: str) -> str:
    return "\n".join(['inactive_after = "30d"', *lines])


SETTINGS = ["incomingWebhook", "outgoingMessageWebhook", "outgoingWebhook"]


@pytest.mark.parametrize("setting", SETTINGS)
def test_a_journal_setting_off_refuses_the_sweep(
    sweeps: Callable[..., Sweeps], setting: str
) -> None:
    env = sweeps(green_sweep=policy(STATED, OPEN_BOUND))
    env.green(CHATS, settings={setting: "no"})
    summary = env.sweeper().sweep(env.account())
    assert summary.status == "skipped"
    assert summary.reason is not None and f"{setting}='no'" in summary.reason
    assert (summary.listed, summary.enqueued) == (0, 0)
    assert dict(summary.calls) == {"getSettings": 1}  # nothing listed
    assert env.queued() == {}
    # The metric, the run's record and the account's problem say so.
    assert env.counted_sweeps() == {f"green-api|{GREEN_ID}|skipped": "1"}
    assert env.runs.record(summary.run)["reason"] == summary.reason  # type: ignore[index]
    assert env.runs.problems()[f"green-api:{GREEN_ID}"]["run"] == summary.run


def test_a_setting_missing_from_get_settings_counts_as_off(sweeps: Callable[..., Sweeps]) -> None:
    env = sweeps(green_sweep=policy(STATED, OPEN_BOUND))
    env.green(CHATS, settings={"incomingWebhook": None})
    summary = env.sweeper().sweep(env.account())
    assert summary.status == "skipped"
    assert "incomingWebhook=missing" in (summary.reason or "")


def test_with_the_settings_on_and_stated_coverage_the_sweep_archives(
    sweeps: Callable[..., Sweeps],
) -> None:
    env = sweeps(green_sweep=policy(STATED, OPEN_BOUND))
    env.green(CHATS)
    summary = env.sweeper().sweep(env.account())
    assert summary.status == "completed", summary.reason
    assert set(env.queued()) == {"79000000001@c.us"}
    assert summary.calls["getSettings"] == 1
    assert env.counted_sweeps() == {f"green-api|{GREEN_ID}|completed": "1"}
    assert env.runs.problems() == {}


def test_no_coverage_evidence_archives_nothing_until_sweeps_saw_the_window(
    sweeps: Callable[..., Sweeps],
) -> None:
    """No statement: the first sweep that sees the settings on starts the evidence; a sweep
    archives once that sighting is older than inactive_after (and the 5 minutes a setting
    takes)."""
    env = sweeps(green_sweep=policy(OPEN_BOUND))
    env.green(CHATS)
    now = time.time()
    first = env.sweeper(clock=lambda: now - 30 * DAY - 360).sweep(env.account())
    assert first.status == "skipped"
    assert "journals proven complete only since" in (first.reason or "")
    assert "journals_complete_since" in (first.reason or "")  # how to state it
    assert env.queued() == {}
    # Evidence from 5 minutes after the first sighting: 30 days less a minute, two minutes ago.
    too_soon = env.sweeper(clock=lambda: now - 120).sweep(env.account())
    assert too_soon.status == "skipped"
    later = env.sweeper().sweep(env.account())
    assert later.status == "completed", later.reason
    assert set(env.queued()) == {"79000000001@c.us"}


def test_a_sighting_off_resets_the_evidence(sweeps: Callable[..., Sweeps]) -> None:
    env = sweeps(green_sweep=policy(OPEN_BOUND))
    env.green(CHATS)
    now = time.time()
    env.sweeper(clock=lambda: now - 40 * DAY).sweep(env.account())
    env.sim.patch_account("green-api", GREEN_ID, settings={"outgoingMessageWebhook": "no"})
    off = env.sweeper(clock=lambda: now - 10 * DAY).sweep(env.account())
    assert off.status == "skipped" and "outgoingMessageWebhook" in (off.reason or "")
    env.sim.patch_account("green-api", GREEN_ID, settings={"outgoingMessageWebhook": "yes"})
    env.sweeper(clock=lambda: now - 9 * DAY).sweep(env.account())
    summary = env.sweeper().sweep(env.account())
    # 40 days of sightings, broken 10 days ago: 9 days of evidence.
    assert summary.status == "skipped"
    assert "9d of the 30d inactive_after window" in (summary.reason or "")
    # What the sweeps saw, as worker/stores/journal_evidence.py keeps it.
    seen = env.services.redis.hgetall(env.services.keys.journals(env.account().key))
    assert float(seen["on_since"]) == pytest.approx(now - 9 * DAY)
    assert seen["off_settings"] == "outgoingMessageWebhook"


def test_a_sighting_off_after_the_statement_overrules_it(sweeps: Callable[..., Sweeps]) -> None:
    env = sweeps(green_sweep=policy(STATED, OPEN_BOUND))
    env.green(CHATS, settings={"incomingWebhook": "no"})
    env.sweeper(clock=lambda: time.time() - DAY).sweep(env.account())
    env.sim.patch_account("green-api", GREEN_ID, settings={"incomingWebhook": "yes"})
    summary = env.sweeper().sweep(env.account())
    assert summary.status == "skipped"
    assert "journals_complete_since is overruled by incomingWebhook seen off" in (
        summary.reason or ""
    )
    assert env.queued() == {}


def test_a_statement_shorter_than_the_window_archives_nothing(
    sweeps: Callable[..., Sweeps],
) -> None:
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 10 * DAY))
    env = sweeps(green_sweep=policy(f'journals_complete_since = "{since}"', OPEN_BOUND))
    env.green(CHATS)
    summary = env.sweeper().sweep(env.account())
    assert summary.status == "skipped"
    assert "(journals_complete_since), 10d of the 30d" in (summary.reason or "")


def test_a_dry_run_still_lists_and_says_why_nothing_would_be_archived(
    sweeps: Callable[..., Sweeps],
) -> None:
    env = sweeps(green_sweep=policy(OPEN_BOUND))
    env.green(CHATS)
    summary = env.sweeper().sweep(env.account(), dry_run=True, list_chats=True)
    assert summary.status == "dry_run"
    assert summary.would_be == "skipped"
    assert "journals proven complete only since" in (summary.reason or "")
    assert summary.chats == ["79000000001@c.us"]
    assert env.counted_sweeps() == {f"green-api|{GREEN_ID}|dry_run": "1"}
    assert env.runs.problems() == {}  # a dry run is no problem of the account's


def test_the_settings_are_read_at_the_listing_rate_through_the_limiter(
    sweeps: Callable[..., Sweeps],
) -> None:
    env = sweeps(green_sweep=policy(STATED, OPEN_BOUND))
    env.green(CHATS)
    env.sweeper().sweep(env.account(), dry_run=True)
    state = env.services.limiter.state(env.account(), "getSettings")
    assert state.allowed_per_second == 50  # the account's getSettings limit
    # Its one permit came from the limiter every worker shares: its key holds the next slot.
    tat = env.services.limiter.keys(env.account(), "getSettings")[0]
    assert env.services.redis.exists(tat)
    assert dict(env.sweeper().sweep(env.account(), dry_run=True).calls)["getSettings"] == 1


def test_wassenger_needs_no_settings_and_no_coverage(sweeps: Callable[..., Sweeps]) -> None:
    env = sweeps(wassenger_sweep=policy(OPEN_BOUND))
    env.wassenger([{"id": "447000000001@c.us", **days_ago(60)}])
    summary = env.sweeper().sweep(env.account("wassenger"))
    assert summary.status == "completed", summary.reason
    assert "getSettings" not in summary.calls
    assert set(env.queued()) == {"447000000001@c.us"}
