"""Sweeps against the simulator over HTTP: which chats are selected, each chat enqueued once,
listing calls under the shared limiter. Sweeps run in this process; no worker is needed."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from config import Account, get_settings
from tasks.archive import ArchiveRunner, RunContext
from tasks.sweep import Sweeper, SweepSummary
from tests.conftest import CANARY, GREEN_ID, WASSENGER_CANARY, WASSENGER_ID, use_environment
from tests.support import JobDesk, run_cli
from worker.celery_app import create_app
from worker.contract import envelope
from worker.dispatch.router import Router
from worker.producer import ArchiveProducer
from worker.sandbox.simulator import SimulatorClient, SimulatorHandle, start_in_thread
from worker.services import Services, get_accounts, reset_services
from worker.stores.client import connect

pytestmark = pytest.mark.integration

DAY = 86400.0


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
        """chat id -> the job's source, for every job of the account on the intake (once each)."""
        account = GREEN_ID if provider == "green-api" else WASSENGER_ID
        jobs: dict[str, str] = {}
        for raw in self.services.redis.lrange("archive", 0, -1):
            _, kwargs, _ = envelope.unpack(raw)
            if (kwargs["provider"], kwargs["account"]) != (provider, account):
                continue
            assert kwargs["chat_id"] not in jobs, "a chat was enqueued twice"
            jobs[kwargs["chat_id"]] = kwargs["source"]
        return jobs


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with start_in_thread() as handle:
        yield handle


def write_accounts(
    path: Path, api_url: str, green_sweep: str, wassenger_sweep: str, listing_rate: str = "20/s"
) -> None:
    green_listing = "\n".join(
        f'{method} = "{listing_rate}"'
        for method in ("getChats", "lastIncomingMessages", "lastOutgoingMessages", "getChatHistory")
    )
    path.write_text(f"""
[[accounts]]
provider = "green-api"
id = "{GREEN_ID}"
api_url = "{api_url}"
token_env = "TEST_GREEN_TOKEN"
[accounts.rate_limits]
{green_listing}
[accounts.sweep]
{green_sweep}

[[accounts]]
provider = "wassenger"
id = "{WASSENGER_ID}"
api_url = "{api_url}"
token_env = "TEST_WASSENGER_TOKEN"
rate_limits = {{ listChats = "2/s" }}
[accounts.sweep]
{wassenger_sweep}
""")


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path, simulator: SimulatorHandle
) -> Iterator[SweepEnv]:
    accounts = tmp_path / "accounts.toml"
    write_accounts(
        accounts,
        simulator.url,
        green_sweep='inactive_after = "30d"\ninclude_groups = true',
        wassenger_sweep='inactive_after = "30d"\nstatuses = ["active", "resolved"]\n'
        'exclude_labels = ["vip"]',
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
    assert summary.status == "done", summary.error
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
    assert summary.status == "done", summary.error
    assert env.queued("green-api") == {
        "120363000000000005@g.us": "sweep",
        "79000000001@c.us": "sweep",
    }
    assert (summary.selected, summary.enqueued, summary.duplicates) == (2, 2, 0)
    assert summary.skipped == {"active": 2, "already archived": 1}
    assert summary.calls == {"lastIncomingMessages": 1, "lastOutgoingMessages": 1, "getChats": 1}


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
    assert summary.status == "done", summary.error
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
    assert sorted(s.status for s in summaries) == ["done", "skipped"]
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
    state = env.services.limiter.state(env.account("wassenger"), "listChats")
    assert state.granted == 4 and state.waited_seconds > 0.5


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
    assert (summary["status"], summary["enqueued"]) == ("done", 3)
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
    # Route the two queued jobs into the job store and run them as a worker would.
    services = env.services
    router = Router(
        connect(services.settings.broker_url, decode=False),
        services.jobs,
        services.dead_letters,
        services.keys,
        intake="archive",
        ready="archive.ready",
        node="test",
    )
    assert router.route().accepted == 2
    desk = JobDesk(services, get_accounts())
    runner = ArchiveRunner(services, get_accounts())
    for _ in range(2):
        task_id, kwargs, headers = desk.take()
        runner.run((), kwargs, RunContext(task_id, "w@h", headers))
    [dead] = list(env.services.dead_letters.iter())
    assert dead.reason == "no_messages" and dead.job["chat_id"] == "79000000002@c.us"

    env.sim.patch_account("green-api", GREEN_ID)  # nothing changes at the provider
    second = env.sweeper().sweep(env.account("green-api"), dry_run=True, list_chats=True)
    assert second.chats == []
    assert second.skipped == {"already archived": 1, "no incoming message": 1}
