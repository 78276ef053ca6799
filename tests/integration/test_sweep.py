"""Sweeps against the simulator over HTTP: which chats are selected, each chat enqueued once,
listing calls under the shared limiter. Sweeps run in this process; no worker is needed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from config import Account, get_settings
from tasks.archive.runner import ArchiveRunner, RunContext
from tasks.sweep import Sweeper, SweepSummary
from tests.conftest import CANARY, GREEN_ID, WASSENGER_CANARY, WASSENGER_ID, use_environment
from tests.support import JobDesk, run_cli, stored_jobs
from tests.unit.sweep_support import accounts_file
from tests.unit.test_compose import DEPLOY, ENV
from tests.unit.test_operator_readme import README, commands
from worker.celery_app import create_app
from worker.producer import ArchiveProducer
from worker.sandbox.simulator import SimulatorClient, SimulatorHandle
from worker.services import Services, get_accounts, get_services, reset_services
from worker.stores.endings import Endings
from worker.stores.jobs import StoredJob
from worker.stores.sweep_runs import SweepRuns

pytestmark = pytest.mark.integration

DAY = 86400.0
# The simulator's journals are complete unless a test says otherwise: the operator may say so.
STATED = 'journals_complete_since = "2026-01-01T00:00:00Z"'
# These tests select a large share of small accounts; the bound has tests of its own.
NO_SHARE = "max_share = 1.0"


@dataclass
class SweepEnv:
    services: Services
    sim: SimulatorClient
    producer: ArchiveProducer

    def account(self, provider: str) -> Account:
        return get_accounts().get(provider, GREEN_ID if provider == "green-api" else WASSENGER_ID)

    def sweeper(self) -> Sweeper:
        return Sweeper(self.services, producer=lambda: self.producer)

    def queued(self, provider: str) -> dict[str, str]:
        """chat id -> the job's source, for every job of the account in the job store (once
        each)."""
        account = GREEN_ID if provider == "green-api" else WASSENGER_ID
        jobs: dict[str, str] = {}
        for stored in stored_jobs(self.services):
            kwargs = stored.body.kwargs
            if (kwargs["provider"], kwargs["account"]) != (provider, account):
                continue
            assert kwargs["chat_id"] not in jobs, "a chat was enqueued twice"
            jobs[kwargs["chat_id"]] = kwargs["source"]
        return jobs


def write_accounts(path: Path, api_url: str, green_sweep: str, wassenger_sweep: str) -> None:
    """The accounts file at the listing rates these tests run at: GREEN-API 20/s, Wassenger 2/s."""
    accounts_file(
        path, api_url, green_sweep, wassenger_sweep, green_rate="20/s", wassenger_rate="2/s"
    )


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path, simulator: SimulatorHandle
) -> Iterator[SweepEnv]:
    accounts = tmp_path / "accounts.toml"
    write_accounts(
        accounts,
        simulator.url,
        green_sweep=f'inactive_after = "30d"\ninclude_groups = true\n{STATED}\n{NO_SHARE}',
        wassenger_sweep='inactive_after = "30d"\nstatuses = ["active", "resolved"]\n'
        f'exclude_labels = ["vip"]\n{NO_SHARE}',
    )
    services = use_environment(monkeypatch, redis_url, accounts).services
    app = create_app(get_settings())
    sim = SimulatorClient(simulator.url)
    sim.delete_accounts()
    sim.reset_counters()
    yield SweepEnv(services, sim, ArchiveProducer(app, services.settings, services.redis))
    sim.close()
    app.close()
    reset_services()


def days_ago(days: float | None) -> dict:
    return {} if days is None else {"last_incoming_days_ago": days}


WASSENGER_MIX = [
    {"id": "447000000001@c.us", **days_ago(60)},  # selected
    {"id": "447000000002@c.us", **days_ago(2)},  # active
    {"id": "447000000003@c.us", **days_ago(60), "archived": True},  # already archived
    {"id": "44700000000400000000@g.us", **days_ago(60)},  # a group: not asked for
    {"id": "1203630000000005@newsletter", **days_ago(60)},  # a channel: never
    {"id": "447000000006@c.us", **days_ago(60), "unread": 3},  # unread
    {"id": "447000000007@c.us", **days_ago(60), "status": "pending"},  # not in the statuses
    {"id": "447000000008@c.us", **days_ago(60), "labels": ["vip"]},  # excluded label
    {"id": "447000000009@c.us"},  # never active: selected
    {"id": "447000000010@c.us", **days_ago(31), "status": "resolved"},  # selected
]


def test_wassenger_selection_on_a_known_mix(env: SweepEnv) -> None:
    env.sim.put_account("wassenger", WASSENGER_ID, token=WASSENGER_CANARY, chats=WASSENGER_MIX)
    summary = env.sweeper().sweep(env.account("wassenger"), dry_run=True, list_chats=True)
    assert summary.status == "dry_run", summary.reason
    assert summary.would_be is None
    assert sorted(summary.chats or []) == [
        "447000000001@c.us",
        "447000000009@c.us",
        "447000000010@c.us",
    ]
    assert summary.skipped == {
        "active": 1,
        "already archived": 1,
        "group": 1,
        "channel": 1,
        "unread": 1,
        "label": 1,
    }
    assert env.queued("wassenger") == {}  # a dry run enqueues nothing


GREEN_MIX = [
    {"id": "79000000001@c.us", **days_ago(60)},  # selected
    {"id": "79000000002@c.us", **days_ago(2)},  # active (incoming)
    {
        "id": "79000000003@c.us",
        "last_incoming_days_ago": 60,
        "last_outgoing_days_ago": 5,
    },  # active (outgoing)
    {"id": "79000000004@c.us", **days_ago(60), "archived": True},  # already archived
    {"id": "120363000000000005@g.us", **days_ago(60)},  # selected (groups on)
]


def test_green_api_selection_and_enqueue(env: SweepEnv) -> None:
    env.sim.put_account("green-api", GREEN_ID, token=CANARY, chats=GREEN_MIX)
    summary = env.sweeper().sweep(env.account("green-api"))
    assert summary.status == "completed", summary.reason
    assert env.queued("green-api") == {
        "120363000000000005@g.us": "sweep",
        "79000000001@c.us": "sweep",
    }
    assert (summary.selected, summary.enqueued, summary.duplicates) == (2, 2, 0)
    assert summary.skipped == {"active": 2, "already archived": 1}
    assert summary.calls == {
        "getSettings": 1,
        "lastIncomingMessages": 1,
        "lastOutgoingMessages": 1,
        "getChats": 1,
    }


def test_a_selected_chat_that_is_no_valid_job_is_counted_not_lost(env: SweepEnv) -> None:
    chats = [{"id": "79000000001@c.us", **days_ago(60)}, {"id": "status@broadcast", **days_ago(60)}]
    env.sim.put_account("green-api", GREEN_ID, token=CANARY, chats=chats)
    summary = env.sweeper().sweep(env.account("green-api"))
    assert (summary.selected, summary.enqueued, summary.refused) == (2, 1, 1)
    assert summary.as_dict()["refused"] == 1
    assert env.queued("green-api") == {"79000000001@c.us": "sweep"}


def test_green_api_account_that_fills_the_message_windows(env: SweepEnv) -> None:
    """19,200 active chats: the 10,000-message windows are full, so the sweep finds the activity
    boundary in getChats order with getChatHistory, and still selects exactly the inactive."""
    env.sim.put_account(
        "green-api",
        GREEN_ID,
        token=CANARY,
        rate_limits={
            "getSettings": 20,
            "getChats": 20,
            "getChatHistory": 20,
            "lastIncomingMessages": 20,
            "lastOutgoingMessages": 20,
        },
        generate={
            "count": 24000,
            "inactive_ratio": 0.2,
            "inactive_days": 45,
            "active_days": 2,
            "group_ratio": 0.1,
            "archived_ratio": 0.05,
            "seed": 7,
        },
    )
    truth = set(env.sim.inactive("green-api", GREEN_ID, days=30))
    summary = env.sweeper().sweep(env.account("green-api"), dry_run=True, list_chats=True)
    assert summary.status == "dry_run", summary.reason
    assert set(summary.chats or []) == truth
    # The windows were full, so the boundary was searched: about log2(24,000 - 10,000) probes,
    # not one per chat.
    assert 10 <= summary.calls["getChatHistory"] <= 16
    assert summary.calls["getChats"] == summary.calls["getChatHistory"] + 2


def test_each_chat_once_across_sweeps_and_producers(env: SweepEnv) -> None:
    env.sim.put_account("wassenger", WASSENGER_ID, token=WASSENGER_CANARY, chats=WASSENGER_MIX)
    env.producer.enqueue(
        {"provider": "wassenger", "account": WASSENGER_ID, "chat_id": "447000000001@c.us"}
    )
    first = env.sweeper().sweep(env.account("wassenger"))
    second = env.sweeper().sweep(env.account("wassenger"))  # the jobs are still pending
    assert (first.enqueued, first.duplicates) == (2, 1)
    assert (second.enqueued, second.duplicates) == (0, 3)
    assert env.queued("wassenger") == {
        "447000000001@c.us": "api",
        "447000000009@c.us": "sweep",
        "447000000010@c.us": "sweep",
    }


def test_two_concurrent_sweeps_of_one_account(env: SweepEnv) -> None:
    # Slow answers, so the two sweeps overlap.
    env.sim.put_account(
        "wassenger",
        WASSENGER_ID,
        token=WASSENGER_CANARY,
        chats=WASSENGER_MIX,
        faults={"latency_ms": 300},
    )
    summaries: list[SweepSummary] = []
    threads = [
        threading.Thread(
            target=lambda: summaries.append(env.sweeper().sweep(env.account("wassenger")))
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(s.status for s in summaries) == ["completed", "skipped"]
    assert sorted(env.queued("wassenger")) == [
        "447000000001@c.us",
        "447000000009@c.us",
        "447000000010@c.us",
    ]


def test_listing_calls_take_permits_of_the_shared_limiter(env: SweepEnv) -> None:
    chats = [{"id": f"4470000{n:05d}@c.us", **days_ago(60 + n / 1000)} for n in range(350)]
    env.sim.put_account(
        "wassenger", WASSENGER_ID, token=WASSENGER_CANARY, chats=chats, rate_limits={"listChats": 2}
    )
    summary = env.sweeper().sweep(env.account("wassenger"), dry_run=True)
    assert summary.selected == 350
    assert summary.calls == {"listChats": 4}  # pages of 100; the fourth is short
    counters = env.sim.counters()["accounts"][f"wassenger:{WASSENGER_ID}"]["listChats"]
    assert counters["rate_limited"] == 0 and counters["peak_1s"] <= 2
    # The permits came from the limiter every worker shares: its key holds the next slot.
    limiter = env.services.limiter
    assert env.services.redis.exists(limiter.keys(env.account("wassenger"), "listChats")[0])


def test_sweep_command_dry_run_then_for_real(env: SweepEnv) -> None:
    env.sim.put_account("wassenger", WASSENGER_ID, token=WASSENGER_CANARY, chats=WASSENGER_MIX)
    target = ("--provider", "wassenger", "--account", WASSENGER_ID)
    dry = run_cli("sweep", *target, "--dry-run", "--list")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: nothing enqueued" in dry.stdout
    listed = [line.split()[-1] for line in dry.stdout.splitlines() if line.startswith("wassenger:")]
    assert sorted(listed) == ["447000000001@c.us", "447000000009@c.us", "447000000010@c.us"]
    assert env.queued("wassenger") == {}

    real = run_cli("sweep", *target, "--json")
    assert real.returncode == 0, real.stderr
    [summary] = json.loads(real.stdout)
    assert (summary["status"], summary["enqueued"]) == ("completed", 3)
    assert len(env.queued("wassenger")) == 3

    unknown = run_cli("sweep", "--provider", "wassenger", "--account", "0" * 24)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        "Error: no wassenger account '000000000000000000000000' in the accounts file"
    )


def test_a_chat_refused_for_no_incoming_message_is_not_swept_again(env: SweepEnv) -> None:
    """GREEN-API archives only chats with an incoming message: the first sweep's job for such a
    chat is dead-lettered once; later sweeps leave the chat alone instead of again."""
    env.sim.put_account(
        "green-api",
        GREEN_ID,
        token=CANARY,
        chats=[
            {"id": "79000000001@c.us", **days_ago(60)},
            {"id": "79000000002@c.us", "has_incoming": False, "last_outgoing_days_ago": 60},
        ],
    )
    first = env.sweeper().sweep(env.account("green-api"))
    assert first.enqueued == 2
    # Run the two stored jobs as a worker would.
    services = env.services
    desk = JobDesk(services, get_accounts())
    runner = ArchiveRunner(services, get_accounts(), Endings(services, env.producer.app.backend))
    for _ in range(2):
        task_id, kwargs, headers = desk.take()
        runner.run((), kwargs, RunContext(task_id, "w@h", headers))
    [dead] = list(env.services.dead_letters.iter())
    assert dead.reason == "no_messages" and dead.job["chat_id"] == "79000000002@c.us"

    env.sim.patch_account("green-api", GREEN_ID)  # nothing changes at the provider
    second = env.sweeper().sweep(env.account("green-api"), dry_run=True, list_chats=True)
    assert second.chats == []
    assert second.skipped == {"already archived": 1, "no incoming message": 1}


# -- a sweep archives only what it can prove inactive, and within its bound --------------------

ACTIVE_LAST_WEEK = "79000000010@c.us"
QUIET = [f"790000001{n:02d}@c.us" for n in range(1, 6)]
GUARDED_MIX = [
    {"id": ACTIVE_LAST_WEEK, **days_ago(7), "last_outgoing_days_ago": 8},
    *({"id": chat, **days_ago(45 + n)} for n, chat in enumerate(QUIET)),
    *({"id": f"7900000020{n}@c.us", **days_ago(1)} for n in range(4)),
]


def run_queued_jobs(env: SweepEnv, count: int) -> None:
    """Run the stored jobs as a worker would."""
    services = env.services
    assert services.jobs.counts().jobs == count
    desk = JobDesk(services, get_accounts())
    runner = ArchiveRunner(services, get_accounts(), Endings(services, env.producer.app.backend))
    for _ in range(count):
        job, headers = desk.take_job()
        context = RunContext(job.task_id, "w@h", headers, task=job.task)
        runner.run((), dict(job.body.kwargs), context)


def archived(env: SweepEnv) -> set[str]:
    return {
        chat["id"]
        for chat in GUARDED_MIX
        if env.sim.chat("green-api", GREEN_ID, chat["id"])["archived"]
    }


def use_green_policy(env: SweepEnv, tmp_path: Path, sweep: str) -> None:
    """Rewrite the accounts file with this GREEN-API sweep policy (the process reloads it)."""
    write_accounts(
        tmp_path / "accounts.toml",
        env.sim.url,
        green_sweep=sweep,
        wassenger_sweep='inactive_after = "30d"',
    )
    reset_services()
    env.services = get_services()


def test_incoming_journal_off_archives_nothing_and_says_why(env: SweepEnv, tmp_path: Path) -> None:
    env.sim.put_account(
        "green-api", GREEN_ID, token=CANARY, chats=GUARDED_MIX, settings={"incomingWebhook": "no"}
    )
    target = ("--provider", "green-api", "--account", GREEN_ID)
    refused = run_cli("sweep", *target)
    assert refused.returncode == 1
    assert "skipped: GREEN-API setting incomingWebhook='no'" in refused.stdout
    assert env.queued("green-api") == {}
    status = run_cli("status")
    assert f"sweep of green-api:{GREEN_ID} skipped" in status.stdout
    assert "incomingWebhook='no'" in status.stdout
    # The dry run still lists, and says why a real sweep archives nothing.
    dry = run_cli("sweep", *target, "--dry-run", "--list")
    assert dry.returncode == 0, dry.stderr
    assert "a real sweep would be skipped, archiving nothing" in dry.stdout
    assert archived(env) == set()


def test_journals_shorter_than_the_window_archive_nothing(env: SweepEnv, tmp_path: Path) -> None:
    """The instance's journals began 5 days ago: the chat active last week is missing from them
    and looks as quiet as the others. A sweep with no evidence of 30 days archives nothing."""
    env.sim.put_account(
        "green-api", GREEN_ID, token=CANARY, chats=GUARDED_MIX, journals={"since_days_ago": 5}
    )
    use_green_policy(env, tmp_path, f'inactive_after = "30d"\n{NO_SHARE}')
    target = ("--provider", "green-api", "--account", GREEN_ID)
    dry = run_cli("sweep", *target, "--dry-run", "--list", "--json")
    [summary] = json.loads(dry.stdout)
    # What the journals alone would have archived: the chat active last week among them.
    assert set(summary["chats"]) == {ACTIVE_LAST_WEEK, *QUIET}
    assert summary["would_be"] == "skipped"
    assert "journals proven complete only since" in summary["reason"]
    real = run_cli("sweep", *target, "--json")
    assert real.returncode == 1
    [summary] = json.loads(real.stdout)
    assert (summary["status"], summary["enqueued"]) == ("skipped", 0)
    assert "0m of the 30d inactive_after window" in summary["reason"]
    assert env.queued("green-api") == {}
    assert archived(env) == set()


def test_a_sweep_above_its_bound_archives_nothing_until_confirmed(
    env: SweepEnv, tmp_path: Path
) -> None:
    env.sim.put_account("green-api", GREEN_ID, token=CANARY, chats=GUARDED_MIX)
    use_green_policy(env, tmp_path, f'inactive_after = "30d"\n{STATED}\nmax_chats = 4')
    target = ("--provider", "green-api", "--account", GREEN_ID)
    held = run_cli("sweep", *target, "--json")
    assert held.returncode == 1
    [summary] = json.loads(held.stdout)
    run_id = summary["run"]
    assert (summary["status"], summary["held"], summary["enqueued"]) == ("held", 5, 0)
    assert env.queued("green-api") == {}
    status = run_cli("status")
    assert f"sweep run {run_id} of green-api:{GREEN_ID} is held: 5 chats" in status.stdout

    confirmed = run_cli("sweep", "--confirm", run_id)
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    assert f"run {run_id} confirmed: 5 enqueued" in confirmed.stdout
    assert sorted(env.queued("green-api")) == QUIET
    run_queued_jobs(env, 5)
    assert archived(env) == set(QUIET)
    services = env.services
    runs = SweepRuns(services.redis, services.keys, services.settings.sweep_run_retention)
    assert set(runs.iter_chats(run_id)) == set(QUIET)  # what `unarchive --sweep` restores
    assert f"sweep run {run_id}" not in run_cli("status").stdout
    listed = run_cli("sweep", "runs")
    assert run_id in listed.stdout and "completed" in listed.stdout

    # The undo: exactly the chats that run archived come back; a chat archived otherwise (by
    # hand, before) stays archived.
    other = GUARDED_MIX[-1]["id"]
    env.sim.add_chats("green-api", GREEN_ID, [{**GUARDED_MIX[-1], "archived": True}])
    undo = run_cli("unarchive", "--sweep", run_id)
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert undo.stdout.strip().endswith("read 5 rows: enqueued 5, already pending 0, refused 0")
    jobs = stored_jobs(services)
    assert {job.task for job in jobs} == {"archive.unarchive"}
    assert {job.body.kwargs["source"] for job in jobs} == {f"undo:{run_id}"}
    run_queued_jobs(env, 5)
    assert archived(env) == {other}
    unknown = run_cli("unarchive", "--sweep", "20200101T000000Z-000000")
    assert unknown.returncode == 2 and "no such sweep run" in unknown.stderr


def test_readme_sweep_commands_work_as_printed_on_the_local_demo(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path, simulator: SimulatorHandle
) -> None:
    """README's Sweeps commands, run as written against deploy/accounts.local.toml and the
    simulator serving deploy/demo-scenario.json ("Start here"), the simulator's port
    substituted."""
    sim = SimulatorClient(simulator.url)
    sim.delete_accounts()
    sim.load_scenario(json.loads((DEPLOY / "demo-scenario.json").read_text()))
    port = simulator.url.rsplit(":", 1)[1]
    accounts = tmp_path / "accounts.toml"
    accounts.write_text((DEPLOY / "accounts.local.toml").read_text().replace(":8080", f":{port}"))
    env = {
        "ARCHIVER_BROKER_URL": redis_url,
        "ARCHIVER_ACCOUNTS_FILE": str(accounts),
        "DEMO_GREEN_API_TOKEN": ENV["DEMO_GREEN_API_TOKEN"],
        "DEMO_WASSENGER_API_KEY": ENV["DEMO_WASSENGER_API_KEY"],
    }
    part = README[README.index("\n## Sweeps\n") : README.index("\n## Operating it\n")]
    lines = [argv for argv in commands(part) if "RUN_ID" not in argv]
    assert ["chat-archiver", "sweep"] in lines and ["chat-archiver", "sweep", "runs"] in lines
    for argv in lines:
        done = run_cli(*argv[1:], env=env)
        assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
    jobs = set()
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    for record in state.hvals("chat-archiver:jobs"):
        kwargs = StoredJob.parse("", record).body.kwargs
        jobs.add((kwargs["provider"], kwargs["chat_id"]))
    assert jobs == {
        ("green-api", "79001000011@c.us"),
        ("green-api", "79001000012@c.us"),
        ("wassenger", "447362053591@c.us"),
    }
    sim.close()
