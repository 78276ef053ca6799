"""What the sweep unit tests share: the simulator in a thread, an accounts file with the sweep
policies a test gives, a producer on the test Redis, and reading what a sweep enqueued."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from config import Account, get_settings
from tasks.sweep import Sweeper
from tests.conftest import CANARY, GREEN_ID, WASSENGER_CANARY, WASSENGER_ID, use_environment
from tests.support import stored_jobs
from worker.celery_app import create_app
from worker.producer import ArchiveProducer
from worker.sandbox.simulator import SimulatorClient, SimulatorHandle, start_in_thread
from worker.services import Services, get_accounts, reset_services
from worker.stores.sweep_runs import SweepRuns

DAY = 86400.0
GREEN_LISTING = (
    "getSettings",
    "getChats",
    "lastIncomingMessages",
    "lastOutgoingMessages",
    "getChatHistory",
)
UNLIMITED_SIM = {method: None for method in GREEN_LISTING}


def days_ago(days: float) -> dict[str, float]:
    return {"last_incoming_days_ago": days, "last_outgoing_days_ago": days}


@dataclass
class Sweeps:
    services: Services
    sim: SimulatorClient
    producer: ArchiveProducer

    @property
    def runs(self) -> SweepRuns:
        return SweepRuns(
            self.services.redis, self.services.keys, self.services.settings.sweep_run_retention
        )

    def counted_sweeps(self) -> dict[str, str]:
        """The sweeps counter as the exporter reads it: "provider|account|result" -> runs."""
        return dict(self.services.redis.hgetall(self.services.keys.metrics_sweeps))

    def account(self, provider: str = "green-api") -> Account:
        return get_accounts().get(provider, GREEN_ID if provider == "green-api" else WASSENGER_ID)

    def sweeper(self, clock: Callable[[], float] = time.time) -> Sweeper:
        return Sweeper(self.services, producer=lambda: self.producer, clock=clock)

    def queued(self) -> dict[str, dict[str, Any]]:
        """chat id -> its job's keyword arguments, for every job in the job store."""
        jobs = {}
        for job in stored_jobs(self.services):
            kwargs = job.body.kwargs
            assert kwargs["chat_id"] not in jobs, "a chat was enqueued twice"
            jobs[kwargs["chat_id"]] = kwargs
        return jobs

    def green(self, chats: list[dict[str, Any]], **spec: Any) -> None:
        self.sim.put_account(
            "green-api", GREEN_ID, token=CANARY, rate_limits=UNLIMITED_SIM, chats=chats, **spec
        )

    def wassenger(self, chats: list[dict[str, Any]], **spec: Any) -> None:
        self.sim.put_account(
            "wassenger",
            WASSENGER_ID,
            token=WASSENGER_CANARY,
            rate_limits={"listChats": None},
            chats=chats,
            **spec,
        )


def accounts_file(
    path: Path,
    api_url: str,
    green_sweep: str,
    wassenger_sweep: str,
    *,
    green_rate: str = "50/s",
    wassenger_rate: str = "50/s",
) -> Path:
    """Both test accounts with these sweep policies; ``green_rate`` for each GREEN-API listing
    method, ``wassenger_rate`` for Wassenger's listChats."""
    rates = "\n".join(f'{method} = "{green_rate}"' for method in GREEN_LISTING)
    path.write_text(f"""
[[accounts]]
provider = "green-api"
id = "{GREEN_ID}"
api_url = "{api_url}"
token_env = "TEST_GREEN_TOKEN"
[accounts.rate_limits]
{rates}
[accounts.sweep]
{green_sweep}

[[accounts]]
provider = "wassenger"
id = "{WASSENGER_ID}"
api_url = "{api_url}"
token_env = "TEST_WASSENGER_TOKEN"
rate_limits = {{ listChats = "{wassenger_rate}" }}
[accounts.sweep]
{wassenger_sweep}
""")
    return path


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with start_in_thread() as handle:
        yield handle


@pytest.fixture
def sweeps(
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    tmp_path: Path,
    simulator: SimulatorHandle,
) -> Iterator[Callable[..., Sweeps]]:
    """Call it with the two accounts' sweep policies (TOML lines) to get a Sweeps."""
    made: list[tuple[SimulatorClient, Any]] = []

    def configure(green_sweep: str = "", wassenger_sweep: str = "", **settings: str) -> Sweeps:
        path = tmp_path / "accounts.toml"
        accounts_file(path, simulator.url, green_sweep, wassenger_sweep)
        services = use_environment(monkeypatch, redis_url, path, **settings).services
        app = create_app(get_settings())
        sim = SimulatorClient(simulator.url)
        sim.delete_accounts()
        made.append((sim, app))
        return Sweeps(services, sim, ArchiveProducer(app, services.settings, services.redis))

    yield configure
    for sim, app in made:
        sim.close()
        app.close()
    reset_services()
