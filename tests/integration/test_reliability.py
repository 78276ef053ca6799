"""Nothing lost, nothing stuck: a real worker fleet under generated garbage, Redis restarts (an
append-only Redis, killed and started again) and SIGKILLed nodes. Every job is counted.

The figures at full scale (10,000 fuzzed messages, 20 kills and 3 restarts under 3,000 jobs, with
default settings) come from benchmarks/bench_reliability.py; these tests are the same
checks, sized for CI."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import GREEN_ID, KEYS
from tests.integration.conftest import Cluster
from tests.support import eventually
from tests.unit.test_envelope import mangled_messages
from worker.contract import envelope
from worker.sandbox.local import PrivateRedis
from worker.sandbox.simulator import SimulatorHandle
from worker.stores.jobs import Held, JobBody, JobStore, NewJob
from worker.stores.keys import Keys

pytestmark = pytest.mark.integration


def jobs(chats: list[str]) -> list[dict[str, str]]:
    return [{"provider": "green-api", "account": GREEN_ID, "chat_id": chat} for chat in chats]


def settled(cluster: Cluster, task_ids: list[str], timeout: float) -> dict[str, dict]:
    return {task_id: cluster.result(task_id, timeout=timeout) for task_id in task_ids}


def nothing_left_behind(cluster: Cluster) -> None:
    """Every job ended: none stored, no chat's pending mark left to block a new request."""
    eventually(lambda: cluster.stored() == 0, 20, "the job store empty")
    assert list(cluster.redis.scan_iter(KEYS.pending("*", "*"))) == []


@pytest.fixture
def aof_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis(appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture
def aof_cluster(
    aof_redis: PrivateRedis, simulator: SimulatorHandle, tmp_path: Path
) -> Iterator[Cluster]:
    cluster = Cluster(aof_redis.url, simulator, tmp_path, green_rate="200/s")
    yield cluster
    cluster.close()


def test_redis_restarts_under_load_lose_nothing_and_invent_nothing(
    aof_cluster: Cluster, aof_redis: PrivateRedis
) -> None:
    cluster = aof_cluster
    chats = [f"7911{n:07d}@c.us" for n in range(300)]
    cluster.add_chats("green-api", chats)
    # Answers take 150 ms: every restart finds jobs half-way through their provider call.
    cluster.sim.patch_account("green-api", GREEN_ID, faults={"latency_ms": 150})
    workers = [cluster.start_worker(f"w{n}", concurrency=4) for n in (1, 2)]
    result = cluster.producer.enqueue_many(jobs(chats))
    task_ids = [task_id for _, task_id in result.enqueued]
    assert len(task_ids) == 300

    for _ in range(3):
        eventually(lambda: cluster.calls("green-api", "archiveChat") > 30, 30, "calls under way")
        before = cluster.calls("green-api", "archiveChat")
        aof_redis.restart(down_for=0.3, signum=random.choice([signal.SIGKILL, signal.SIGTERM]))
        eventually(
            lambda b=before: cluster.calls("green-api", "archiveChat") > b + 30,
            60,
            "calls again after the restart",
        )

    outcomes = settled(cluster, task_ids, timeout=120)
    # Exactly one true outcome each: archived, or already archived when a run that had called
    # the provider lost its reply in the restart and the job ran again. No dead letter: the
    # provider had every chat.
    assert {o["outcome"] for o in outcomes.values()} <= {"archived", "already_archived"}
    assert len(cluster.dead_letters) == 0, [e.detail for e in cluster.dead_letters.iter()]
    assert all(cluster.sim.chat("green-api", GREEN_ID, chat)["archived"] for chat in chats)
    assert all(worker.process.poll() is None for worker in workers)  # type: ignore[union-attr]
    nothing_left_behind(cluster)


def test_sigkilled_nodes_jobs_come_back_within_a_lease(
    fresh_cluster: Cluster,
) -> None:
    """Kill whole nodes (main process and pool) again and again under load: every job reaches
    an outcome, each chat is archived, and a killed node's jobs run again within the lease
    (3 s here, 30 s by default) and the janitor's interval."""
    cluster = fresh_cluster
    chats = [f"7912{n:07d}@c.us" for n in range(240)]
    cluster.add_chats("green-api", chats)
    cluster.sim.patch_account("green-api", GREEN_ID, faults={"latency_ms": 300})
    cluster.start_worker("steady", concurrency=2)
    result = cluster.producer.enqueue_many(jobs(chats))
    task_ids = [task_id for _, task_id in result.enqueued]

    lease = cluster.settings.lease_timeout + cluster.settings.janitor_interval
    recoveries = []
    for kill in range(4):
        doomed = cluster.start_worker(f"doomed{kill}", concurrency=3)
        # Wait until the doomed node holds running jobs, then kill it and everything it forked.
        held = eventually(
            lambda: [m.split("|")[0] for m in cluster.redis.zrange(KEYS.active, 0, -1)],
            30,
            "runs under way",
        )
        doomed.signal(signal.SIGKILL, group=True)
        doomed.process.wait(10)  # type: ignore[union-attr]
        killed_at = time.monotonic()
        # Each job the fleet held then reaches an outcome; those that were on the killed node
        # only through their lease running out.
        for task_id in held:
            cluster.result(task_id, timeout=lease + 30)
        recoveries.append(time.monotonic() - killed_at)

    outcomes = settled(cluster, task_ids, timeout=120)
    assert {o["outcome"] for o in outcomes.values()} <= {"archived", "already_archived"}
    assert len(cluster.dead_letters) == 0
    assert all(cluster.sim.chat("green-api", GREEN_ID, chat)["archived"] for chat in chats)
    assert max(recoveries) < lease + 10, recoveries
    nothing_left_behind(cluster)


def test_a_message_lost_between_dispatch_and_a_worker_runs_again(fresh_cluster: Cluster) -> None:
    """The gap celery#7950 describes (a message popped from the queue and lost before kombu
    records it) costs nothing: the job's lease, taken when it was dispatched, runs out, and the
    janitor gives the job back."""
    cluster = fresh_cluster
    cluster.add_chats("green-api", ["79130000001@c.us", "79130000002@c.us"])
    worker = cluster.start_worker("w1", concurrency=1)
    warm = cluster.producer.enqueue(jobs(["79130000002@c.us"])[0])
    assert cluster.result(warm)["outcome"] == "archived"  # the node is up and has its accounts
    worker.signal(signal.SIGSTOP)  # frozen while we play a producer and its dispatcher
    try:
        task_id = "lost-in-transit"
        keys = Keys("chat-archiver")
        store = JobStore(
            cluster.redis, keys, lease=cluster.settings.lease_timeout, claim_ttl=60, probe_ttl=60
        )
        account = f"green-api:{GREEN_ID}"
        job = NewJob(
            task_id,
            account,
            "archive.chat",
            keys.pending(account, "79130000001@c.us"),
            JobBody(jobs(["79130000001@c.us"])[0]),
        )
        assert store.submit([job], held=Held.SKIP) == ["new"]
        # Handed out (its lease taken), and its message never delivered.
        [lost] = eventually(lambda: store.dispatch(1).jobs, 10, "the dispatch")
        assert lost.task_id == task_id
    finally:
        worker.signal(signal.SIGCONT)
    lost_at = time.monotonic()
    assert cluster.result(task_id, timeout=30)["outcome"] == "archived"
    waited = time.monotonic() - lost_at
    assert waited < cluster.settings.lease_timeout + cluster.settings.janitor_interval + 5
    assert "gave back 1 jobs whose lease ran out" in cluster.logs()


# -- generated garbage ---------------------------------------------------------------------------

FUZZED: list[bytes] = []


@settings(max_examples=1500, suppress_health_check=list(HealthCheck), deadline=None)
@given(raw=mangled_messages() | st.binary(max_size=300))
def collect(raw: bytes) -> None:
    FUZZED.append(raw)


@pytest.fixture
def fuzz_cluster(redis_url: str, simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Cluster]:
    # The generator's well-formed jobs are for an account no accounts file names: they wait a
    # second for one that does, then end as unknown_account dead letters, an outcome like any.
    cluster = Cluster(redis_url, simulator, tmp_path, env={"ARCHIVER_UNKNOWN_ACCOUNT_GRACE": "1"})
    yield cluster
    cluster.close()


def test_no_message_stops_a_worker_and_every_one_is_accounted_for(
    fuzz_cluster: Cluster,
) -> None:
    cluster = fuzz_cluster
    collect()
    garbage = FUZZED[:1500]
    now = time.time()
    refused, accepted_ids = 0, []
    for raw in garbage:
        try:
            accepted_ids.append(envelope.read(raw, now=now).task_id)
        except envelope.Refused:
            refused += 1
    assert refused > 1000  # what the generator makes is mostly garbage
    chats = [f"7914{n:07d}@c.us" for n in range(60)]
    cluster.add_chats("green-api", chats)
    # Both pools: the message never reaches either (the router reads it), but a pool is where a
    # bad message used to stop a node.
    workers = [
        cluster.start_worker("w1", concurrency=2, pool="prefork"),
        cluster.start_worker("w2", concurrency=2, pool="threads"),
    ]

    raw_broker = redis.Redis.from_url(cluster.redis_url)
    valid = [task_id for _, task_id in cluster.producer.enqueue_many(jobs(chats[:30])).enqueued]
    random.shuffle(garbage)
    for start in range(0, len(garbage), 100):
        raw_broker.lpush("archive", *garbage[start : start + 100])
    valid += [task_id for _, task_id in cluster.producer.enqueue_many(jobs(chats[30:])).enqueued]

    outcomes = settled(cluster, valid, timeout=120)
    assert all(o["outcome"] == "archived" for o in outcomes.values())

    # Every message is accounted for: a dead letter for each refused one, and the well-formed
    # jobs the generator made (one id: they are one job) end in an outcome of their own.
    def invalid() -> int:
        return sum(1 for _ in cluster.dead_letters.iter(reason="invalid_request"))

    eventually(lambda: invalid() >= refused, 60, f"{refused} refused messages dead-lettered")
    assert invalid() == refused
    for task_id in set(accepted_ids):
        assert cluster.result(task_id, timeout=60)["outcome"] == "dead_lettered"
    for worker in workers:
        assert worker.process.poll() is None, worker.log()[-3000:]  # type: ignore[union-attr]
    assert "Unrecoverable error" not in cluster.logs()
    assert cluster.redis.llen("archive") == 0  # nothing left unread
