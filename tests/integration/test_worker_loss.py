"""Workers die; jobs do not: late acks, Redis redelivery and the delivery cap, with SIGKILLs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.conftest import GREEN_ID
from tests.integration.conftest import Cluster
from tests.support import eventually
from worker.producer import enqueue_many

pytestmark = pytest.mark.integration


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent pid; the command name (field 2) may hold spaces, so split after it.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def test_sigkilled_worker_loses_no_job(fresh_cluster: Cluster) -> None:
    cluster = fresh_cluster
    chats = [f"7900000{n:04d}@c.us" for n in range(8)]
    cluster.add_chats("green-api", chats)
    # Slow answers keep jobs in flight when the worker dies.
    cluster.sim.patch_account("green-api", GREEN_ID, faults={"latency_ms": 800})
    first = cluster.start_worker("doomed", concurrency=2)
    rows = [{"provider": "green-api", "account": GREEN_ID, "chat_id": chat} for chat in chats]
    task_ids = [task_id for _, task_id in enqueue_many(rows, producer=cluster.producer).enqueued]
    eventually(lambda: cluster.calls("green-api", "archiveChat") >= 2, 20, "no job started")

    first.signal(signal.SIGKILL, group=True)  # the main process and its pool, mid-job
    first.process.wait(10)  # type: ignore[union-attr]
    cluster.sim.patch_account("green-api", GREEN_ID, faults={"latency_ms": 0})
    cluster.start_worker("rescuer", concurrency=2)

    # Unacknowledged jobs come back after the visibility timeout (12 s here).
    outcomes = [cluster.result(task_id, timeout=60)["outcome"] for task_id in task_ids]
    assert set(outcomes) <= {"archived", "already_archived"}
    for chat in chats:
        assert cluster.sim.chat("green-api", GREEN_ID, chat)["archived"] is True


def test_job_that_kills_its_worker_every_time_is_dead_lettered(fresh_cluster: Cluster) -> None:
    cluster = fresh_cluster
    cluster.add_chats("green-api", ["79000000666@c.us"])
    # Each delivery hangs at the provider long enough for us to kill the process running it.
    cluster.sim.patch_account("green-api", GREEN_ID, faults={"latency_ms": 5000})
    worker = cluster.start_worker("victim", concurrency=1)
    [(_, task_id)] = enqueue_many(
        [{"provider": "green-api", "account": GREEN_ID, "chat_id": "79000000666@c.us"}],
        producer=cluster.producer,
    ).enqueued
    max_deliveries = cluster.settings.max_deliveries
    for delivery in range(1, max_deliveries + 1):
        eventually(
            lambda d=delivery: cluster.calls("green-api", "archiveChat") >= d,
            30,
            f"delivery {delivery} never reached the provider",
        )
        for child in children(worker.pid):
            os.kill(child, signal.SIGKILL)  # the pool process dies mid-job, like a segfault
    result = cluster.result(task_id, timeout=60)
    assert result["outcome"] == "dead_lettered" and result["reason"] == "worker_lost"
    # The delivery after the cap calls nobody: it goes straight to the dead letters.
    assert cluster.calls("green-api", "archiveChat") == max_deliveries
    entry = cluster.dead_letter(result)
    assert entry.job["chat_id"] == "79000000666@c.us"
    assert f"began {max_deliveries + 1} runs that never ended" in entry.detail


def test_a_lost_broker_connection_leaves_running_jobs_their_leases(fresh_cluster: Cluster) -> None:
    """Celery forgets the requests it holds, running ones included, when its broker connection
    drops (Consumer.on_close); the node renews the leases of the runs still going all the same.
    A lease that ran out would hand the job out again: a second provider call, and one more run
    counted lost towards worker_lost (a Sentinel failover drops the connection each time). After
    it the node still runs as many jobs at once as it has slots (Celery would otherwise lower
    its prefetch for the runs going then, and never raise it again on a queue read without
    acknowledgements)."""
    cluster = fresh_cluster
    chats = [f"7900000077{n}@c.us" for n in range(4)]
    cluster.add_chats("green-api", chats)
    # Each call takes three leases (3 s each, renewed every second) to answer.
    cluster.sim.patch_account("green-api", GREEN_ID, faults={"latency_ms": 9000})
    slow = {"ARCHIVER_HTTP_READ_TIMEOUT": "20", "ARCHIVER_TASK_TIME_LIMIT": "90"}
    node = cluster.start_worker("held", concurrency=2, env=slow)
    rows = [{"provider": "green-api", "account": GREEN_ID, "chat_id": chat} for chat in chats]
    first = [t for _, t in enqueue_many(rows[:2], producer=cluster.producer).enqueued]
    eventually(lambda: cluster.calls("green-api", "archiveChat") == 2, 20, "both calls began")
    # Every client connection of this Redis, the consumer's among them, is closed under it.
    cluster.redis.execute_command("CLIENT", "KILL", "TYPE", "normal")
    eventually(lambda: "Connection to broker lost" in node.log(), 10, "the consumer reconnected")
    for task_id in first:
        result = cluster.result(task_id, timeout=40)
        assert result["outcome"] == "archived", result
    assert cluster.calls("green-api", "archiveChat") == 2
    assert "lease ran out" not in node.log()
    # Both slots again: the next two calls go out together, not one after the other.
    second = [t for _, t in enqueue_many(rows[2:], producer=cluster.producer).enqueued]
    eventually(lambda: cluster.calls("green-api", "archiveChat") == 4, 6, "two calls at once")
    for task_id in second:
        assert cluster.result(task_id, timeout=40)["outcome"] == "archived"
    assert cluster.stored() == 0
