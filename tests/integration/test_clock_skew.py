"""A node whose clock is wrong keeps the job store's times: every time compared with them comes
from Redis's clock. The node runs under libfaketime (Debian's faketime), its wall clock 30 s
ahead or behind; a job's retry countdown (3 s here) still takes 3 s, not 33 s or none."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import GREEN_ID
from tests.host_tools import libfaketime, require
from tests.integration.conftest import Cluster
from worker.sandbox.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

COUNTDOWN = 3.0


@pytest.fixture
def cluster(redis_url: str, simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Cluster]:
    require("faketime")
    env = {
        # One attempt, then a countdown of 3 s (jittered up to 3.6 s) in the job store.
        "ARCHIVER_TRANSIENT_ATTEMPTS": "1",
        "ARCHIVER_RETRY_COUNTDOWN": str(COUNTDOWN),
        "ARCHIVER_RETRY_COUNTDOWN_MAX": str(COUNTDOWN),
    }
    made = Cluster(redis_url, simulator, tmp_path, env=env)
    yield made
    made.close()


def skewed(offset: str) -> dict[str, str]:
    """The environment that runs a process with its wall clock moved by ``offset``; its
    monotonic clock (what it sleeps and measures intervals with) is left alone."""
    return {
        "LD_PRELOAD": str(libfaketime()),
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


@pytest.mark.parametrize("offset", ["+30s", "-30s"])
def test_a_retry_countdown_runs_on_redis_clock_whatever_the_nodes_clock(
    cluster: Cluster, offset: str
) -> None:
    chat = "79150000001@c.us"
    cluster.add_chats("green-api", [chat])
    node = cluster.start_worker("skewed", concurrency=2, env=skewed(offset))
    # The node really lives 30 s away: its log lines are stamped with its clock.
    skew = float(offset[:-1])
    stamps = re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+: ", node.log(), re.M)
    last = datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert abs(last.timestamp() - time.time() - skew) < 5, (stamps[-1], offset)
    cluster.sim.patch_account("green-api", GREEN_ID, faults={"fail_next": [503]})
    started = time.monotonic()
    task_id = cluster.producer.enqueue(
        {"provider": "green-api", "account": GREEN_ID, "chat_id": chat}
    )
    assert cluster.result(task_id, timeout=COUNTDOWN + abs(skew) + 20)["outcome"] == "archived"
    took = time.monotonic() - started
    # The countdown (3-3.6 s) and little else: not 33 s ahead, not at once behind.
    assert COUNTDOWN <= took < COUNTDOWN * 1.2 + 3, took
    assert cluster.calls("green-api", "archiveChat", 503) == 1
    assert cluster.calls("green-api", "archiveChat", 200) == 1
