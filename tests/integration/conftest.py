"""A real deployment in miniature (worker/sandbox/cluster.py's LocalCluster): our own Redis, the
simulator over loopback HTTP, and real ``celery -A worker worker`` processes started the way the
README says."""

from __future__ import annotations

import gc
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import CANARY, GREEN_ID, KEYS, WASSENGER_CANARY, WASSENGER_ID, accounts_toml
from tests.support import eventually, run_cli
from worker.sandbox.cluster import LocalCluster
from worker.sandbox.local import free_port
from worker.sandbox.simulator import SimulatorClient, SimulatorHandle, start_in_thread
from worker.stores.deadletters import DeadLetter

pytestmark = pytest.mark.integration

# Fast retries, short leases: the same code paths, in seconds instead of minutes.
FAST = {
    "ARCHIVER_TRANSIENT_WAIT_MAX": "0.2",
    "ARCHIVER_RETRY_BUDGET": "2",
    "ARCHIVER_RETRY_COUNTDOWN": "0.3",
    "ARCHIVER_RETRY_COUNTDOWN_MAX": "1",
    "ARCHIVER_HTTP_CONNECT_TIMEOUT": "0.5",
    "ARCHIVER_HTTP_READ_TIMEOUT": "1",
    "ARCHIVER_TASK_TIME_LIMIT": "6",
    "ARCHIVER_SWEEP_TIME_LIMIT": "6",
    "ARCHIVER_CIRCUIT_COOLDOWN": "1",
    "ARCHIVER_CIRCUIT_COOLDOWN_MAX": "4",
    "ARCHIVER_RESULT_EXPIRES": "600",
    # A killed node's jobs come back within a few seconds instead of half a minute.
    "ARCHIVER_LEASE_TIMEOUT": "3",
    "ARCHIVER_JANITOR_INTERVAL": "0.5",
    "ARCHIVER_ACCOUNTS_RELOAD_INTERVAL": "0.5",
}


class Cluster(LocalCluster):
    """The shared LocalCluster on the test Redis, with the integration tests' fast settings, the
    canary tokens, the simulator (in this process) and what a test needs to drive and observe it."""

    def __init__(
        self,
        redis_url: str,
        simulator: SimulatorHandle,
        workdir: Path,
        env: dict[str, str] | None = None,
        wassenger_sweep: str | None = None,
        green_rate: str = "10/s",
        wassenger_rate: str = "10/s",
    ) -> None:
        self.simulator = simulator
        self.sim = SimulatorClient(simulator.url)
        accounts = workdir / "accounts.toml"
        accounts.write_text(
            accounts_toml(
                simulator.url,
                wassenger_sweep=wassenger_sweep,
                green_rate=green_rate,
                wassenger_rate=wassenger_rate,
            )
        )
        tokens = {"TEST_GREEN_TOKEN": CANARY, "TEST_WASSENGER_TOKEN": WASSENGER_CANARY}
        super().__init__(redis_url, accounts, workdir, {**tokens, **FAST, **(env or {})})
        os.environ.update(tokens)  # this process's producer and CLI read the same accounts
        self.sim.put_account("green-api", GREEN_ID, token=CANARY, chats=[])
        self.sim.put_account("wassenger", WASSENGER_ID, token=WASSENGER_CANARY, chats=[])
        self.sim.reset_counters()

    def start_flower(
        self,
        *options: str,
        user: str = "ops",
        password: str = "flower-pass",  # noqa: S107
    ) -> tuple[str, httpx.Client]:
        """A real Flower on this cluster, with basic auth: its URL and an API client, once it
        answers and its event receiver has had a moment to connect."""
        port = free_port()
        flower = self.start_process(
            ["flower", f"--port={port}", "--address=127.0.0.1", *options],
            "flower",
            {"FLOWER_BASIC_AUTH": f"{user}:{password}"},
        )
        url = f"http://127.0.0.1:{port}"
        api = httpx.Client(base_url=url, auth=(user, password), timeout=10)
        eventually(
            lambda: api.get("/healthcheck").status_code == 200,
            30,
            "Flower answering",
            0.2,
            ignoring=(httpx.TransportError,),
            context=lambda: flower.log()[-2000:],
        )
        time.sleep(1)  # its event receiver connects after the web server answers
        return url, api

    def add_chats(self, provider: str, chats: list[str], **fields: Any) -> None:
        account = GREEN_ID if provider == "green-api" else WASSENGER_ID
        self.sim.add_chats(provider, account, [{"id": chat, **fields} for chat in chats])

    def result(self, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """The job's outcome (worker/contract/results.py), once it has one."""
        found = eventually(
            lambda: self.outcome(task_id),
            timeout,
            f"an outcome for job {task_id}",
            step=0.05,
        )
        assert found.get("outcome") != "failed", found
        return found

    def dead_letter(self, result: dict[str, Any]) -> DeadLetter:
        entry = self.dead_letters.read(result["dead_letter_id"])
        assert entry is not None
        return entry

    def services_parked(self) -> int:
        """Jobs parked behind an open account circuit (any account)."""
        return sum(self.redis.llen(key) for key in self.redis.scan_iter(KEYS.parked("*")))

    def stored(self) -> int:
        """Jobs in the job store: accepted and not yet ended."""
        return int(self.redis.hlen(KEYS.jobs))

    def calls(self, provider: str, method: str, status: int | None = None) -> int:
        """Calls the simulator saw (all of them, or those it answered with `status`)."""
        account = GREEN_ID if provider == "green-api" else WASSENGER_ID
        counter = self.sim.counters()["accounts"].get(f"{provider}:{account}", {}).get(method, {})
        if status is not None:
            return int(counter.get("by_status", {}).get(str(status), 0))
        return int(counter.get("calls", 0))

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=self.env, stdin=input, timeout=60)

    def close(self) -> None:
        super().close()
        self.sim.close()


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with start_in_thread() as handle:
        yield handle


@pytest.fixture(scope="module")
def module_redis_url(redis_server: object) -> Iterator[str]:
    url = f"redis://{redis_server.host}:{redis_server.port}/1"  # type: ignore[attr-defined]
    yield url
    redis.Redis.from_url(url).flushdb()  # our own server: nobody else's data


@pytest.fixture(scope="module")
def cluster(
    module_redis_url: str, simulator: SimulatorHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """One worker for a whole module: starting Celery costs seconds, the tests share it."""
    c = Cluster(module_redis_url, simulator, tmp_path_factory.mktemp("cluster"))
    c.start_worker()
    yield c
    # Results from send_task sit in reference cycles (vine promises) until the cyclic collector
    # runs; collected later, after Redis stops, each fails to unsubscribe from its __del__.
    gc.collect()
    c.close()


@pytest.fixture
def fresh_cluster(redis_url: str, simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster with no worker yet, for tests that start, stop and kill workers themselves."""
    c = Cluster(redis_url, simulator, tmp_path)
    yield c
    c.close()
