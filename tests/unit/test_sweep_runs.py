"""Every sweep run has an id and a record (worker/stores/sweep_runs.py); a run above its safety
bound archives nothing and is held until an operator confirms it; the job's final ending records
the chats a run archived. Against the simulator in a thread, with a real Redis."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
import respx

from tasks.archive.runner import ArchiveRunner, RunContext
from tasks.sweep import SweepError
from tests.conftest import CANARY, GREEN_ID, WASSENGER_ID
from tests.support import JobDesk, run_cli
from tests.unit.sweep_support import DAY, Sweeps, days_ago, simulator, sweeps
from worker.services import get_accounts
from worker.stores.endings import Endings
from worker.stores.sweep_runs import SweepRuns, new_run_id
from worker.views.status import sweep_findings

__all__ = ["simulator", "sweeps"]

STATED = 'journals_complete_since = "2026-01-01T00:00:00Z"'
INACTIVE = [f"7900000{n:04d}@c.us" for n in range(6)]
ACTIVE = [f"7911111{n:04d}@c.us" for n in range(14)]
CHATS = [{"id": chat, **days_ago(60 + n)} for n, chat in enumerate(INACTIVE)] + [
    {"id": chat, **days_ago(1)} for chat in ACTIVE
]


def green_policy(*lines: str) -> str:
    return "\n".join(['inactive_after = "30d"', STATED, *lines])


# -- the bound -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bound", "why"),
    [
        ("max_chats = 5", "6 chats selected, more than max_chats = 5"),
        ("max_share = 0.25", "6 of the 20 chats listed selected (30%), more than max_share = 0.25"),
    ],
)
def test_a_sweep_above_its_bound_archives_nothing_and_is_held(
    sweeps: Callable[..., Sweeps], bound: str, why: str
) -> None:
    env = sweeps(green_sweep=green_policy(bound))
    env.green(CHATS)
    summary = env.sweeper().sweep(env.account())
    assert (summary.status, summary.reason) == ("held", why)
    assert (summary.selected, summary.held, summary.enqueued) == (6, 6, 0)
    assert env.queued() == {}
    runs = env.runs
    assert set(runs.iter_chats(summary.run, "selected")) == set(INACTIVE)
    assert runs.held() == {f"green-api:{GREEN_ID}": summary.run}
    assert env.counted_sweeps() == {f"green-api|{GREEN_ID}|held": "1"}
    attention: list[str] = []
    found = sweep_findings(env.services, attention)
    assert found["held"][0]["run"] == summary.run and found["held"][0]["chats"] == 6
    assert attention == [
        f"sweep run {summary.run} of green-api:{GREEN_ID} is held: 6 chats wait for an operator "
        f"({why}): chat-archiver sweep --confirm {summary.run}"
    ]


def test_within_the_default_bound_a_sweep_archives(sweeps: Callable[..., Sweeps]) -> None:
    env = sweeps(green_sweep=green_policy())  # max_share 0.25, max_chats 2000
    env.green(CHATS[1:])  # 5 of 19: 26%
    assert env.sweeper().sweep(env.account()).status == "held"
    env.green([*CHATS[2:], {"id": "79222220000@c.us", **days_ago(1)}])  # 4 of 19: 21%
    summary = env.sweeper().sweep(env.account())
    assert summary.status == "completed"
    assert set(env.queued()) == set(INACTIVE[2:])


def test_a_dry_run_says_a_real_run_would_be_held(sweeps: Callable[..., Sweeps]) -> None:
    env = sweeps(green_sweep=green_policy("max_chats = 5"))
    env.green(CHATS)
    summary = env.sweeper().sweep(env.account(), dry_run=True, list_chats=True)
    assert (summary.status, summary.would_be) == ("dry_run", "held")
    assert sorted(summary.chats or []) == INACTIVE
    assert env.runs.held() == {}


def test_confirm_enqueues_exactly_the_held_chats_still_inactive(
    sweeps: Callable[..., Sweeps],
) -> None:
    env = sweeps(green_sweep=green_policy("max_chats = 5"))
    env.green(CHATS)
    held = env.sweeper().sweep(env.account())
    assert held.status == "held"
    # Meanwhile one held chat gets a message, and a new chat goes quiet (not held: left for the
    # next sweep).
    env.sim.add_chats(
        "green-api",
        GREEN_ID,
        [
            {"id": INACTIVE[0], "last_incoming": time.time()},
            {"id": "79333330000@c.us", **days_ago(90)},
        ],
    )
    confirmed = env.sweeper().confirm(env.account(), held.run)
    assert (confirmed.status, confirmed.enqueued, confirmed.dropped) == ("completed", 5, 1)
    queued = env.queued()
    assert set(queued) == set(INACTIVE[1:])
    assert {job["sweep_run"] for job in queued.values()} == {held.run}
    assert {job["source"] for job in queued.values()} == {"sweep"}
    runs = env.runs
    record = runs.record(held.run)
    assert record is not None and record["status"] == "completed" and record["confirmed_at"]
    assert set(runs.iter_chats(held.run, "enqueued")) == set(INACTIVE[1:])
    assert runs.held() == {}
    assert env.counted_sweeps() == {
        f"green-api|{GREEN_ID}|held": "1",
        f"green-api|{GREEN_ID}|completed": "1",
    }
    with pytest.raises(SweepError, match=f"sweep run {held.run} is completed, not held"):
        env.sweeper().confirm(env.account(), held.run)


def test_confirm_refuses_unknown_superseded_and_other_accounts_runs(
    sweeps: Callable[..., Sweeps],
) -> None:
    env = sweeps(green_sweep=green_policy("max_chats = 5"))
    env.green(CHATS)
    first = env.sweeper().sweep(env.account()).run
    second = env.sweeper().sweep(env.account()).run
    with pytest.raises(SweepError, match=f"{first} was superseded by {second}"):
        env.sweeper().confirm(env.account(), first)
    with pytest.raises(SweepError, match="no sweep run 20990101T000000Z-000000"):
        env.sweeper().confirm(env.account(), "20990101T000000Z-000000")
    with pytest.raises(SweepError, match=f"is of green-api:{GREEN_ID}"):
        env.sweeper().confirm(env.account("wassenger"), second)
    assert env.queued() == {}


def test_confirm_rechecks_the_journals(sweeps: Callable[..., Sweeps]) -> None:
    env = sweeps(green_sweep=green_policy("max_chats = 5"))
    env.green(CHATS)
    held = env.sweeper().sweep(env.account())
    env.sim.patch_account("green-api", GREEN_ID, settings={"incomingWebhook": "no"})
    with pytest.raises(SweepError, match=f"{held.run} stays held: GREEN-API setting incoming"):
        env.sweeper().confirm(env.account(), held.run)
    assert env.queued() == {}
    assert env.runs.held() == {f"green-api:{GREEN_ID}": held.run}


def test_a_completed_run_releases_the_accounts_held_run(sweeps: Callable[..., Sweeps]) -> None:
    env = sweeps(green_sweep=green_policy("max_chats = 5"))
    env.green(CHATS)
    env.sweeper().sweep(env.account())
    env.green(CHATS[2:])  # 4 selected: within the bound
    assert env.sweeper().sweep(env.account()).status == "completed"
    assert env.runs.held() == {}


def test_wassenger_lists_past_the_cutoff_only_as_far_as_the_share_needs(
    sweeps: Callable[..., Sweeps],
) -> None:
    """Oldest first, 60 inactive chats then 300 active: proving 60 is at most a quarter needs
    240 chats listed, three pages of 100, not all four."""
    env = sweeps(wassenger_sweep='inactive_after = "30d"')
    chats = [{"id": f"4470000{n:05d}@c.us", **days_ago(90 - n / 100)} for n in range(60)] + [
        {"id": f"4471111{n:05d}@c.us", **days_ago(1 - n / 1000)} for n in range(300)
    ]
    env.wassenger(chats)
    summary = env.sweeper().sweep(env.account("wassenger"), dry_run=True)
    assert (summary.selected, summary.listed, summary.would_be) == (60, 240, None)
    assert summary.calls == {"listChats": 3}
    env.wassenger(chats[:100])  # 60 of 100: held, known once the listing ends
    summary = env.sweeper().sweep(env.account("wassenger"), dry_run=True)
    assert (summary.listed, summary.would_be) == (100, "held")


# -- records, retention, the archived set --------------------------------------------------------


def test_every_run_has_a_record_newest_first_and_kept_for_the_retention(
    sweeps: Callable[..., Sweeps],
) -> None:
    env = sweeps(
        green_sweep=green_policy("max_share = 1.0"),
        wassenger_sweep='inactive_after = "30d"\nmax_share = 1.0',
        sweep_run_retention="7200",
    )
    env.green(CHATS)
    env.wassenger([{"id": "447000000001@c.us", **days_ago(60)}])
    dry = env.sweeper().sweep(env.account(), dry_run=True)
    real = env.sweeper().sweep(env.account())
    other = env.sweeper().sweep(env.account("wassenger"))
    runs = env.runs
    assert [r["run"] for r in runs.runs()] == [other.run, real.run, dry.run]
    assert [r["run"] for r in runs.runs(f"green-api:{GREEN_ID}")] == [real.run, dry.run]
    record = runs.record(real.run)
    assert record is not None
    assert {key: record[key] for key in ("provider", "account", "status", "enqueued")} == {
        "provider": "green-api",
        "account": GREEN_ID,
        "status": "completed",
        "enqueued": 6,
    }
    assert record["started_at"] <= record["ended_at"]
    assert set(runs.iter_chats(real.run, "enqueued")) == set(INACTIVE)
    redis = env.services.redis
    keys = env.services.keys
    for key in (keys.sweep_run(real.run), keys.sweep_run_chats(real.run, "enqueued")):
        assert 7000 < redis.ttl(key) <= 7200
    # An index entry older than the retention goes when the next run ends.
    redis.zadd(keys.sweep_runs, {"19700101T000000Z-000000": 1.0})
    env.sweeper().sweep(env.account(), dry_run=True)
    assert "19700101T000000Z-000000" not in redis.zrange(keys.sweep_runs, 0, -1)


def test_sweep_runs_command_lists_recent_runs(sweeps: Callable[..., Sweeps]) -> None:
    env = sweeps(green_sweep=green_policy("max_chats = 5"))
    env.green(CHATS)
    held = env.sweeper().sweep(env.account())
    listed = run_cli("sweep", "runs", "--provider", "green-api", "--account", GREEN_ID)
    assert listed.returncode == 0, listed.stderr
    assert held.run in listed.stdout and "held" in listed.stdout
    none = run_cli("sweep", "runs", "--provider", "wassenger", "--account", WASSENGER_ID)
    assert none.returncode == 0 and held.run not in none.stdout


def test_run_ids_sort_by_time() -> None:
    assert new_run_id(1_800_000_000.0).startswith("20270115T080000Z-")
    assert new_run_id(1_700_000_000.0) < new_run_id(1_800_000_000.0)


@pytest.mark.parametrize(
    ("answer", "recorded"),
    [
        ((200, ""), True),  # archived
        ((400, '{"message": "ArchiveChatError: already archive=true"}'), True),
        ((400, '{"message": "ArchiveChatError: chat with id x not found"}'), False),
    ],
)
def test_the_jobs_ending_records_the_chats_a_run_archived(
    sweeps: Callable[..., Sweeps], answer: tuple[int, str], recorded: bool
) -> None:
    """The hook in worker/stores/endings.py: a job carrying sweep_run adds its chat to the run's
    archived set at its final ending, when it archived or found the chat archived."""
    env = sweeps(green_sweep=green_policy())
    services, accounts = env.services, get_accounts()
    desk = JobDesk(services, accounts)
    client = httpx.Client(timeout=2)
    endings = Endings(services, env.producer.app.backend)
    runner = ArchiveRunner(
        services, accounts, endings, client_factory=lambda: client, sleep=lambda _: None
    )
    chat = "79000000001@c.us"
    desk.put({"provider": "green-api", "account": GREEN_ID, "chat_id": chat, "sweep_run": "run-1"})
    task_id, kwargs, headers = desk.take()
    assert kwargs["sweep_run"] == "run-1"
    url = f"{env.account().api_url}/waInstance{GREEN_ID}/archiveChat/{CANARY}"
    with respx.mock() as mock:
        mock.post(url).respond(answer[0], text=answer[1])
        runner.run((), kwargs, RunContext(task_id, "w@h", headers))
    runs = SweepRuns(services.redis, services.keys, services.settings.sweep_run_retention)
    assert set(runs.iter_chats("run-1")) == ({chat} if recorded else set())
    if recorded:
        ttl = services.redis.ttl(services.keys.sweep_run_chats("run-1", "archived"))
        assert 29 * DAY < ttl <= 30 * DAY
