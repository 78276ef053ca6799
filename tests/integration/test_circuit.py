"""The circuit breaker with real workers: a bad token and a thousand jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import CANARY, GREEN_ID
from tests.integration.conftest import Cluster
from tests.support import eventually
from worker.sandbox.local import free_port
from worker.sandbox.simulator import SimulatorHandle

pytestmark = pytest.mark.integration


def scrape(cluster: Cluster) -> str:
    """Start `chat-archiver metrics`, read /metrics once, stop it."""
    port = free_port()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "metrics", "--port", str(port)],
        env={**os.environ, **cluster.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return eventually(
            lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text,
            20,
            "the exporter answering",
            0.1,
            ignoring=(httpx.TransportError,),
        )
    finally:
        exporter.terminate()
        exporter.wait(10)


JOBS = 1000


def test_a_bad_token_costs_a_handful_of_calls_then_everything_archives(
    redis_url: str, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    cluster = Cluster(
        redis_url,
        simulator,
        tmp_path,
        green_rate="1000/s",
        env={
            "ARCHIVER_CIRCUIT_COOLDOWN": "1",
            "ARCHIVER_CIRCUIT_COOLDOWN_MAX": "2",
        },
    )
    try:
        chats = [f"79{n:011d}@c.us" for n in range(JOBS)]
        # The provider expects another token than the one we hold: every call answers 401.
        cluster.sim.put_account(
            "green-api",
            GREEN_ID,
            token="the-right-token-0000",
            rate_limits={"archiveChat": None},
            chats=[{"id": chat} for chat in chats],
        )
        cluster.producer.enqueue_many(
            {"provider": "green-api", "account": GREEN_ID, "chat_id": chat} for chat in chats
        )
        cluster.start_worker("w1", concurrency=4)
        cluster.start_worker("w2", concurrency=4)

        eventually(
            lambda: cluster.services_parked() >= JOBS,
            60,
            f"{JOBS} jobs parked",
            0.2,
            context=lambda: f"parked {cluster.services_parked()}",
        )
        time.sleep(5)  # a few probe rounds while still broken
        outage_calls = cluster.calls("green-api", "archiveChat")
        # The first jobs in flight, then one probe per cooldown (1 s, then 2 s).
        assert outage_calls <= 15, outage_calls
        assert len(cluster.dead_letters) == 0

        # An operator looking now sees the paused account, in status and in the metrics.
        # One paused account among working ones needs a person but is not unhealthy, unless
        # the operator says how many paused accounts are.
        status = cluster.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        assert cluster.cli("status", "--max-paused", "0").returncode == 1
        report = json.loads(status.stdout)
        assert any(
            f"green-api:{GREEN_ID} paused (unauthorized)" in line for line in report["attention"]
        )
        [green] = report["accounts"]["paused"]
        assert green["account"] == f"green-api:{GREEN_ID}" and green["parked"] >= JOBS - 1
        metrics = scrape(cluster)
        # Labels as on every metric: provider, and the account's id alone (issue 11).
        account = f'account="{GREEN_ID}",provider="green-api"'
        assert f'chat_archiver_account_paused{{{account},reason="unauthorized"}} 1.0' in metrics
        assert f"chat_archiver_parked_jobs{{{account}}}" in metrics

        # Someone fixes the token: the provider now accepts ours. Nobody replays anything.
        refused = cluster.calls("green-api", "archiveChat", status=401)
        cluster.sim.patch_account("green-api", GREEN_ID, token=CANARY)
        eventually(
            lambda: cluster.sim.summary("green-api", GREEN_ID)["archived"] >= JOBS,
            120,
            "every chat archived",
            0.5,
            context=lambda: str(cluster.sim.summary("green-api", GREEN_ID)),
        )
        assert len(cluster.dead_letters) == 0
        # Each chat archived by exactly one call, and no 401 after the fix but a probe that was
        # already on its way when the token changed.
        assert cluster.calls("green-api", "archiveChat", status=200) == JOBS
        assert cluster.calls("green-api", "archiveChat", status=401) <= refused + 1

        # And afterwards: all well, and the outcomes are counted for Prometheus.
        status = cluster.cli("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "all well" in status.stdout
        metrics = scrape(cluster)
        assert (
            f'chat_archiver_jobs_total{{account="{GREEN_ID}",outcome="archived",'
            f'provider="green-api",reason=""}} {float(JOBS)}'
        ) in metrics
        assert "chat_archiver_provider_request_seconds_bucket" in metrics
    finally:
        cluster.close()
