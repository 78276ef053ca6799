"""The archive pipeline end to end: producer → Redis → a real worker → simulator over HTTP."""

from __future__ import annotations

import json
import uuid

import pytest
from kombu import Connection

from tests.conftest import CANARY, GREEN_ID, WASSENGER_CANARY, WASSENGER_ID
from tests.integration.conftest import Cluster
from tests.support import eventually
from worker.contract.jobs import InvalidJob
from worker.producer import enqueue_archive, enqueue_many

pytestmark = pytest.mark.integration


def test_archived_and_already_archived(cluster: Cluster) -> None:
    cluster.add_chats("green-api", ["79000000001@c.us"])
    cluster.add_chats("wassenger", ["447000000001@c.us"], archived=True)
    green = enqueue_archive("green-api", GREEN_ID, "79000000001@c.us", producer=cluster.producer)
    wassenger = enqueue_archive(
        "wassenger", WASSENGER_ID, "447000000001@c.us", producer=cluster.producer
    )
    assert cluster.result(green)["outcome"] == "archived"
    assert cluster.result(wassenger)["outcome"] == "already_archived"
    assert cluster.sim.chat("green-api", GREEN_ID, "79000000001@c.us")["archived"] is True


def test_chat_not_found_is_dead_lettered_once_never_retried(cluster: Cluster) -> None:
    before = cluster.calls("green-api", "archiveChat")
    task_id = enqueue_archive(
        "green-api",
        GREEN_ID,
        "79000000404@c.us",
        request_id="r-404",
        source="it",
        producer=cluster.producer,
    )
    result = cluster.result(task_id)
    assert result["outcome"] == "dead_lettered" and result["reason"] == "chat_not_found"
    assert cluster.calls("green-api", "archiveChat") == before + 1
    entry = cluster.dead_letter(result)
    assert entry.job == {
        "provider": "green-api",
        "account": GREEN_ID,
        "chat_id": "79000000404@c.us",
        "request_id": "r-404",
        "source": "it",
    }
    assert entry.http_status == 400 and "not found" in entry.excerpt
    assert entry.task_id == task_id and entry.worker.startswith("w1@")


def test_5xx_burst_is_retried_then_archived(cluster: Cluster) -> None:
    cluster.add_chats("wassenger", ["447000000503@c.us"])
    cluster.sim.patch_account("wassenger", WASSENGER_ID, faults={"fail_next": [503, 502]})
    task_id = enqueue_archive(
        "wassenger", WASSENGER_ID, "447000000503@c.us", producer=cluster.producer
    )
    result = cluster.result(task_id)
    assert result["outcome"] == "archived" and result["attempts"] == 3


def test_persistent_5xx_ends_in_retries_exhausted(cluster: Cluster) -> None:
    cluster.add_chats("wassenger", ["447000000599@c.us"])
    cluster.sim.patch_account(
        "wassenger", WASSENGER_ID, faults={"error_ratio": 1.0, "error_statuses": [503]}
    )
    try:
        task_id = enqueue_archive(
            "wassenger", WASSENGER_ID, "447000000599@c.us", producer=cluster.producer
        )
        result = cluster.result(task_id)
    finally:
        cluster.sim.patch_account("wassenger", WASSENGER_ID, faults={"error_ratio": 0.0})
    assert result["reason"] == "retries_exhausted"
    entry = cluster.dead_letter(result)
    # 3 tenacity attempts in each of 1 + 2 (the retry budget) runs.
    assert entry.http_status == 503 and entry.attempts == 9
    assert entry.first_attempt_at < entry.last_attempt_at


def test_bad_input_is_refused_at_enqueue_and_dead_lettered_at_the_worker(cluster: Cluster) -> None:
    with pytest.raises(InvalidJob, match="chat_id:"):
        enqueue_archive("green-api", GREEN_ID, "not a chat", producer=cluster.producer)
    # A service that skips our producer and sends garbage: dead-lettered, the worker survives.
    bad = cluster.app.send_task("archive.chat", kwargs={"provider": "green-api", "chat_id": 5})
    positional = cluster.app.send_task("archive.chat", args=["green-api", GREEN_ID])
    for task_id in (bad.id, positional.id):
        result = cluster.result(task_id)
        assert result["reason"] == "invalid_request"
    assert "account: missing" in cluster.result(bad.id)["detail"]
    typo = cluster.app.send_task("archive.chatt", kwargs={"provider": "green-api"})
    with Connection(cluster.redis_url) as connection:
        producer = connection.Producer()
        producer.publish(
            b"\x00not json",
            routing_key="archive",
            content_type="application/json",
            content_encoding="binary",
            headers={"task": "archive.chat", "id": str(uuid.uuid4())},
        )
    cluster.add_chats("green-api", ["79000000777@c.us"])
    after = enqueue_archive("green-api", GREEN_ID, "79000000777@c.us", producer=cluster.producer)
    assert cluster.result(after)["outcome"] == "archived"  # still alive and working
    details = [entry.detail for entry in cluster.dead_letters.iter(reason="invalid_request")]
    assert any("'archive.chatt' is not a task of ours" in detail for detail in details), details
    assert any("content-encoding: 'binary' is not utf-8" in detail for detail in details)
    assert typo.id in {e.task_id for e in cluster.dead_letters.iter(reason="invalid_request")}


def test_dlq_replay_archives_the_job_once_the_chat_exists(cluster: Cluster) -> None:
    task_id = enqueue_archive("green-api", GREEN_ID, "79000000888@c.us", producer=cluster.producer)
    entry = cluster.dead_letter(cluster.result(task_id))
    listed = cluster.cli("dlq", "list", "--reason", "chat_not_found", "--json")
    assert listed.returncode == 0, listed.stderr
    assert entry.id in {item["id"] for item in json.loads(listed.stdout)}

    cluster.add_chats("green-api", ["79000000888@c.us"])
    replayed = cluster.cli("dlq", "replay", entry.id)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    new_task = replayed.stdout.split(" as job ")[1].split()[0]
    assert cluster.result(new_task)["outcome"] == "archived"
    assert cluster.dead_letters.read(entry.id) is None
    assert cluster.sim.chat("green-api", GREEN_ID, "79000000888@c.us")["archived"] is True


def test_bulk_enqueue_reaches_every_outcome(cluster: Cluster) -> None:
    chats = [f"7900000{n:04d}@c.us" for n in range(40)]
    cluster.add_chats("green-api", chats[:30])
    rows = [{"provider": "green-api", "account": GREEN_ID, "chat_id": chat} for chat in chats]
    result = enqueue_many(rows, producer=cluster.producer)
    outcomes = [cluster.result(task_id)["outcome"] for _, task_id in result.enqueued]
    assert outcomes.count("archived") == 30 and outcomes.count("dead_lettered") == 10


@pytest.mark.last_in_module
def test_zz_canary_token_is_nowhere(cluster: Cluster) -> None:
    """Runs last in this module: after every outcome kind above, including a timeout, a
    connection error and an unauthorized account, neither token is in a log line or in any key
    or value this run wrote to Redis."""
    cluster.add_chats("green-api", ["79000000999@c.us"])
    cluster.sim.patch_account(
        "green-api",
        GREEN_ID,
        faults={"timeout_after_success_ms": 30000},
    )
    slow = enqueue_archive("green-api", GREEN_ID, "79000000999@c.us", producer=cluster.producer)
    # The server archived, the client timed out; the retry answers "already archived".
    assert cluster.result(slow, timeout=60)["outcome"] == "already_archived"
    assert "79000000999@c.us (attempt 1): no answer: timeout" in cluster.logs()
    cluster.sim.patch_account(
        "green-api", GREEN_ID, faults={"timeout_after_success_ms": 0}, token="rotated-token-123456"
    )
    # The provider no longer takes our token: the account pauses and the job waits, parked.
    refused = enqueue_archive("green-api", GREEN_ID, "79000000999@c.us", producer=cluster.producer)
    eventually(lambda: cluster.services_parked(), 20, "the job parked")
    # Waiting, not done: RETRY if it ran and met the 401, PENDING if the dispatcher found the
    # account already paused and parked it before it ran.
    assert cluster.app.AsyncResult(refused).state in ("RETRY", "PENDING")
    # The canary scan below covers the parked job's stored message too.
    cluster.sim.patch_account("green-api", GREEN_ID, token=CANARY)
    # A probe finds the account answering again; the job completes by itself.
    assert cluster.result(refused, timeout=30)["outcome"] == "already_archived"

    logs = cluster.logs()
    assert "HTTP Request" not in logs  # httpx's per-request INFO lines are held back
    for secret in (CANARY, WASSENGER_CANARY):
        assert secret not in logs
        for key in cluster.redis.scan_iter("*"):
            assert secret not in key
            dumped = cluster.redis.dump(key) or b""
            assert secret.encode() not in dumped, key


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_every_pool_with_celerys_event_loop_takes_the_dispatchers_jobs(
    fresh_cluster: Cluster, pool: str
) -> None:
    """The dispatcher hands jobs to the consumer on Celery's event loop, which the prefork pool
    (every other test here) and these two pools all run."""
    chats = [f"7900000{n:04d}@c.us" for n in range(6)]
    fresh_cluster.add_chats("green-api", chats)
    fresh_cluster.start_worker(pool=pool)
    result = enqueue_many(
        [{"provider": "green-api", "account": GREEN_ID, "chat_id": c} for c in chats],
        producer=fresh_cluster.producer,
    )
    outcomes = [fresh_cluster.result(task_id)["outcome"] for _, task_id in result.enqueued]
    assert outcomes == ["archived"] * len(chats)
