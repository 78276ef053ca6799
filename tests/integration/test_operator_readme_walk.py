"""README's bare-host walk through the simulator ("Running it for real"), run as written: the
simulator serving deploy/demo-scenario.json, a worker reading deploy/accounts.local.toml,
`chat-archiver enqueue --file deploy/demo-jobs.jsonl`, then `chat-archiver dlq list`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import eventually
from tests.unit.test_compose import DEPLOY, ENV, ROOT
from worker.sandbox.local import WORKER_READY, CeleryProcess, free_port
from worker.sandbox.simulator import SimulatorClient

pytestmark = pytest.mark.integration


def test_the_bare_host_walk_through_the_simulator_works(redis_url: str, tmp_path: Path) -> None:
    """README's simulator walk, with two substitutions: the test Redis for localhost:6379 and a
    free port for 8080 (which may be taken here)."""
    port = free_port()
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        (DEPLOY / "accounts.local.toml").read_text().replace(":8080", f":{port}"),
    )
    env = {
        **os.environ,
        "ARCHIVER_BROKER_URL": redis_url,
        "ARCHIVER_ACCOUNTS_FILE": str(accounts),
        "DEMO_GREEN_API_TOKEN": ENV["DEMO_GREEN_API_TOKEN"],
        "DEMO_WASSENGER_API_KEY": ENV["DEMO_WASSENGER_API_KEY"],
    }
    cli = [sys.executable, "-m", "worker.cli"]
    simulator = subprocess.Popen(
        [*cli, "simulate", "--port", str(port), "--scenario", "deploy/demo-scenario.json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = CeleryProcess(
        ["worker", "-l", "INFO", "-c", "2", "--without-gossip", "--without-mingle"],
        env,
        tmp_path / "worker.log",
        cwd=ROOT,
    )
    try:
        worker.start().wait_for_log(WORKER_READY, timeout=60)
        enqueued = subprocess.run(
            [*cli, "enqueue", "--file", "deploy/demo-jobs.jsonl"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert enqueued.returncode == 0, enqueued.stdout + enqueued.stderr
        assert enqueued.stdout.strip() == "read 11 rows: enqueued 11, already pending 0, refused 0"

        def three_dead_letters() -> list[dict[str, Any]] | None:
            listed = subprocess.run(
                [*cli, "dlq", "list", "--json"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            found = json.loads(listed.stdout)
            return found if len(found) >= 3 else None

        dead = eventually(three_dead_letters, 60, "three dead letters", 0.5)
        assert sorted(e["job"]["request_id"] for e in dead) == ["demo-11", "demo-6", "demo-7"]
        with SimulatorClient(f"http://127.0.0.1:{port}") as sim:
            assert sim.chat("green-api", "1101000001", "79001000001@c.us")["archived"]
            assert sim.chat("wassenger", "64a1f0c2b3d4e5f601234567", "447362053577@c.us")[
                "archived"
            ]
    finally:
        worker.stop()
        simulator.terminate()
        simulator.wait(10)
