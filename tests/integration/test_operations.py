"""Operating it: JSON logs, a graceful SIGTERM, and Flower watching every outcome."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CANARY, GREEN_ID, WASSENGER_CANARY, WASSENGER_ID
from tests.integration.conftest import Cluster
from tests.support import eventually
from worker.sandbox.simulator import SimulatorHandle

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(redis_url: str, simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(redis_url, simulator, tmp_path)
    yield c
    c.close()


def test_json_logs_one_line_per_job_outcome(cluster: Cluster) -> None:
    cluster.add_chats("green-api", ["79000000001@c.us"])
    worker = cluster.start_worker(extra=["--log-format", "json"])
    archived = cluster.producer.enqueue(
        {
            "provider": "green-api",
            "account": GREEN_ID,
            "chat_id": "79000000001@c.us",
            "request_id": "r-1",
        }
    )
    missing = cluster.producer.enqueue(
        {"provider": "green-api", "account": GREEN_ID, "chat_id": "79000000404@c.us"}
    )
    cluster.result(archived)
    cluster.result(missing)
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    outcomes = {
        line["job_id"]: line
        for line in lines
        if line.get("logger") == "chat_archiver.jobs" and "outcome" in line
    }
    assert outcomes[archived]["outcome"] == "archived"
    assert outcomes[archived]["request_id"] == "r-1"
    assert outcomes[missing]["outcome"] == "dead_lettered"
    assert outcomes[missing]["reason"] == "chat_not_found"
    for line in outcomes.values():
        assert {"provider", "account", "chat_id", "attempts", "duration", "time", "level"} <= set(
            line
        )
    assert CANARY not in worker.log()


def test_sigterm_lets_jobs_in_flight_finish_and_loses_none(cluster: Cluster) -> None:
    chats = [f"7900000{n:04d}@c.us" for n in range(6)]
    cluster.add_chats("green-api", chats)
    cluster.sim.patch_account(
        "green-api", GREEN_ID, faults={"latency_ms": 700}
    )  # under the 1 s read timeout
    worker = cluster.start_worker("leaving", concurrency=2)
    ids = [
        cluster.producer.enqueue({"provider": "green-api", "account": GREEN_ID, "chat_id": chat})
        for chat in chats
    ]
    # And one job waiting out a 429's Retry-After: in the job store, not in the worker.
    cluster.add_chats("wassenger", ["447000000429@c.us"])
    cluster.sim.patch_account("wassenger", WASSENGER_ID, retry_after=4, faults={"fail_next": [429]})
    held = cluster.producer.enqueue(
        {"provider": "wassenger", "account": WASSENGER_ID, "chat_id": "447000000429@c.us"}
    )
    eventually(
        lambda: (
            cluster.calls("green-api", "archiveChat") >= 2
            and cluster.app.AsyncResult(held).state == "RETRY"
        ),
        20,
        "two calls under way and the 429 waiting",
        0.05,
        context=lambda: worker.log()[-2000:],
    )
    started = cluster.calls("green-api", "archiveChat")
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)  # a deploy: warm shutdown
    assert worker.process is not None
    worker.process.wait(30)
    # It waited for the two jobs in flight (0.7 s at the provider), and not much longer.
    assert 0.3 < time.monotonic() - signalled < 15
    finished = [task_id for task_id in ids if cluster.app.AsyncResult(task_id).ready()]
    # Every job that had started finished; the worker did not start the rest.
    assert started <= len(finished) < len(ids)
    # The others went back to the queue, unacknowledged: a new worker finishes them.
    cluster.sim.patch_account("green-api", GREEN_ID, faults={"latency_ms": 0})
    cluster.start_worker("arriving", concurrency=2)
    outcomes = [cluster.result(task_id, timeout=60)["outcome"] for task_id in ids]
    assert outcomes == ["archived"] * 6
    assert cluster.result(held, timeout=60)["outcome"] == "archived"


def test_flower_shows_every_outcome_and_no_secret(cluster: Cluster) -> None:
    _, api = cluster.start_flower()
    flower = cluster.processes[-1]

    cluster.add_chats("green-api", ["79000000001@c.us"])
    cluster.add_chats("wassenger", ["447000000001@c.us"], archived=True)
    jobs = {
        "archived": ("green-api", GREEN_ID, "79000000001@c.us"),
        "already_archived": ("wassenger", WASSENGER_ID, "447000000001@c.us"),
        "dead_lettered": ("green-api", GREEN_ID, "79000000404@c.us"),
    }
    # Enqueued in bulk before any worker runs: only the task-sent events (sent as one list
    # message per batch) can tell Flower about them yet.
    result = cluster.producer.enqueue_many(
        dict(zip(("provider", "account", "chat_id"), job, strict=True)) for job in jobs.values()
    )
    ids = dict(zip(jobs, (task_id for _, task_id in result.enqueued), strict=True))
    eventually(
        lambda: all(task_id in api.get("/api/tasks").json() for task_id in ids.values()),
        20,
        "Flower hearing the jobs were sent",
        0.2,
    )
    queued = api.get("/api/tasks").json()[ids["archived"]]
    assert queued["sent"] is not None and queued["received"] is None
    cluster.start_worker()
    for task_id in ids.values():
        cluster.result(task_id)

    expected = {"archived": "SUCCESS", "already_archived": "SUCCESS", "dead_lettered": "FAILURE"}

    def seen() -> dict[str, Any] | None:
        tasks = api.get("/api/tasks").json()
        states = {outcome: tasks.get(ids[outcome], {}).get("state") for outcome in ids}
        return tasks if states == expected else None

    tasks = eventually(seen, 20, "Flower showing every outcome", 0.3)
    for outcome, task_id in ids.items():
        seen = tasks[task_id]
        assert seen["name"] == "archive.chat"
        assert jobs[outcome][2] in seen["kwargs"]
    for outcome in ("archived", "already_archived"):
        assert f"'outcome': '{outcome}'" in tasks[ids[outcome]]["result"]
    # A dead-lettered job reads as failed at a glance, with its reason as the exception.
    assert "chat_not_found" in tasks[ids["dead_lettered"]]["exception"]

    assert "flower_events_total" in api.get("/metrics").text
    everything = api.get("/api/tasks").text + api.get("/api/workers").text
    for secret in (CANARY, WASSENGER_CANARY):
        assert secret not in everything
        assert secret not in flower.log()
