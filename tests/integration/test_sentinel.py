"""Redis Sentinel, tested by real failovers: a master, its replica and three Sentinels
(worker/sandbox/local.py's SentinelGroup), several real worker nodes, and a producer enqueueing
3,000 jobs while the Sentinels move the master twice by ``SENTINEL FAILOVER`` and once after a
SIGKILL. Every process reaches Redis only through the Sentinels (ARCHIVER_BROKER_URL and
ARCHIVER_REDIS_URL are the group's sentinel:// URL).

Run alone (make test runs the ``alone`` tests after the rest): it counts what a busy machine
can change."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import kombu.exceptions
import pytest
import redis
import yaml

from tests.conftest import CANARY, GREEN_ID, KEYS, WASSENGER_CANARY, WASSENGER_ID, accounts_toml
from tests.integration.conftest import Cluster
from tests.support import eventually
from worker.sandbox.cluster import settings_from
from worker.sandbox.local import WORKER_READY, CeleryProcess, SentinelGroup, worker_process
from worker.sandbox.simulator import SimulatorHandle
from worker.stores.client import connect, set_outage_grace

pytestmark = [pytest.mark.integration, pytest.mark.alone]

JOBS = 3000
# Per account, in calls a second: the simulator refuses (429) a call above its provider's limit,
# and the accounts file gives our limiter the same limit.
RATE = 40
# The producer enqueues in batches this large, one every PACE seconds: the jobs keep coming
# through all the failovers, as they would from a real service.
BATCH = 60
PACE = 0.6


@dataclass
class Producer:
    """A service enqueueing jobs through the failovers: a call that fails (Redis unreachable, or
    refusing writes) is made again, as README tells producers to; a chat already pending answers
    with its job's id, so a batch stored before its reply was lost is not stored twice."""

    cluster: Cluster
    rows: list[dict[str, str]]
    task_ids: set[str] = field(default_factory=set)
    failed_calls: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            for start in range(0, len(self.rows), BATCH):
                batch = self.rows[start : start + BATCH]
                while True:
                    try:
                        result = self.cluster.producer.enqueue_many(batch)
                        break
                    except (redis.RedisError, kombu.exceptions.OperationalError):
                        self.failed_calls += 1
                        time.sleep(0.2)
                assert not result.refused, result.refused
                self.task_ids.update(task_id for _, task_id in result.enqueued)
                self.task_ids.update(task_id for _, task_id in result.duplicates)
                time.sleep(PACE)
        finally:
            self.done.set()


class Archived:
    """Jobs archived so far, read from the outcome counters on whichever node is master now
    (the counters are written in the same step as each job's ending)."""

    def __init__(self, group: SentinelGroup) -> None:
        self.group = group

    def on(self, port: int) -> int | None:
        try:
            counts = redis.Redis("127.0.0.1", port, socket_timeout=1).hgetall(KEYS.metrics_outcomes)
        except redis.RedisError:
            return None
        return sum(
            int(value)
            for name, value in counts.items()
            if name.decode().split("|")[2] in ("archived", "already_archived")
        )

    def first_after(self, started: float, old_port: int, timeout: float = 60.0) -> float:
        """Seconds from ``started`` until a job ends on the master the Sentinels name instead of
        ``old_port`` (counted from what that node held when they named it)."""
        deadline = time.monotonic() + timeout
        baseline: int | None = None
        port: int | None = None
        while time.monotonic() < deadline:
            if port is None:
                named = self.group.master_port()
                if named is not None and named != old_port:
                    port = named
            if port is not None:
                count = self.on(port)
                if count is not None and baseline is None:
                    baseline = count
                elif count is not None and baseline is not None and count > baseline:
                    return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"no job archived within {timeout}s of the failover")


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    with SentinelGroup() as started:
        yield started


@pytest.fixture
def ha_cluster(
    group: SentinelGroup, simulator: SimulatorHandle, tmp_path: Path
) -> Iterator[Cluster]:
    cluster = Cluster(
        group.url,
        simulator,
        tmp_path,
        env={
            "ARCHIVER_SENTINEL_MASTER": group.name,
            # A run may wait out a failover (writes refused until the new master has its replica
            # back: some ten seconds) within its time limit.
            "ARCHIVER_TASK_TIME_LIMIT": "60",
        },
        green_rate=f"{RATE}/s",
        wassenger_rate=f"{RATE}/s",
    )
    cluster.sim.patch_account("green-api", GREEN_ID, rate_limits={"archiveChat": RATE})
    cluster.sim.patch_account("wassenger", WASSENGER_ID, rate_limits={"archive": RATE})
    yield cluster
    cluster.close()


def test_jobs_survive_sentinel_failovers_and_a_killed_master(
    ha_cluster: Cluster, group: SentinelGroup
) -> None:
    cluster = ha_cluster
    half = JOBS // 2
    green = [f"7914{n:07d}@c.us" for n in range(half)]
    wassenger = [f"4479{n:08d}@c.us" for n in range(JOBS - half)]
    cluster.add_chats("green-api", green)
    cluster.add_chats("wassenger", wassenger)
    rows = [{"provider": "green-api", "account": GREEN_ID, "chat_id": c} for c in green]
    rows += [{"provider": "wassenger", "account": WASSENGER_ID, "chat_id": c} for c in wassenger]
    rows = [row for pair in zip(rows[:half], rows[half:], strict=True) for row in pair]

    began = time.monotonic()
    nodes = [cluster.start_worker(f"ha{n}", concurrency=3, wait=False) for n in range(3)]
    for node in nodes:
        node.wait_for_log(WORKER_READY, timeout=90)

    producer = Producer(cluster, rows)
    threading.Thread(target=producer.run, name="producer", daemon=True).start()
    archived = Archived(group)
    eventually(lambda: (archived.on(group.master().port) or 0) >= 200, 60, "jobs archived")

    recoveries: list[tuple[str, float]] = []
    for kind in ("SENTINEL FAILOVER", "SIGKILL of the master", "SENTINEL FAILOVER"):
        old = group.wait_settled(timeout=60)
        if kind.startswith("SIGKILL"):
            port, started = group.kill_master(timeout=60)
        else:
            started = time.monotonic()
            port = group.failover(timeout=60, settle=False)
        assert port != old
        try:
            recoveries.append((kind, archived.first_after(started, old)))
        except AssertionError as error:
            raise AssertionError(f"{kind}: {error}\n{cluster.logs()[-4000:]}") from None

    assert producer.done.wait(120), "the producer did not finish"
    task_ids = sorted(producer.task_ids)
    outcomes = cluster.wait_outcomes(task_ids, timeout=120, step=1.0)
    calls = {
        p: cluster.calls(p, m) for p, m in (("green-api", "archiveChat"), ("wassenger", "archive"))
    }
    refused = {
        p: cluster.calls(p, m, 429)
        for p, m in (("green-api", "archiveChat"), ("wassenger", "archive"))
    }
    print(
        f"\n{len(task_ids)} jobs on {len(nodes)} nodes, {len(recoveries)} failovers, "
        f"{time.monotonic() - began:.1f}s in all"
    )
    for kind, seconds in recoveries:
        print(f"  {kind}: first job archived again {seconds:.2f}s later")
    print(f"  producer calls that failed and were made again: {producer.failed_calls}")
    print(f"  provider calls: {sum(calls.values())}, {sum(refused.values())} answered 429")
    logs = cluster.logs()
    outlived = logs.count("its lease ran out): not recorded")
    print(f"  runs that outlived their lease: {outlived}")

    # Every job ended once, in a true outcome: archived, or already archived when a run whose
    # ending a failover lost ran again.
    missing = [task_id for task_id, outcome in outcomes.items() if outcome is None]
    assert not missing, f"{len(missing)} jobs without an outcome, e.g. {missing[:3]}"
    kinds = {str(outcome["outcome"]) for outcome in outcomes.values() if outcome is not None}
    assert kinds <= {"archived", "already_archived"}, [
        outcome
        for outcome in outcomes.values()
        if outcome and outcome["outcome"] not in ("archived", "already_archived")
    ][:5]
    assert len(task_ids) == JOBS  # one job per chat: a call made again stored nothing twice
    # A job runs twice only when a 429 sent it back, or a write of its dispatch or ending was
    # lost with the killed master's last milliseconds. Leases taken back while their runs waited
    # out a failover, or dropped with Celery's requests at a reconnect, made 1-6 runs outlive
    # their lease and 3-6 calls more than jobs and 429s in every run before they were fixed.
    again = sum(calls.values()) - JOBS - sum(refused.values())
    assert outlived <= 1 and again <= 2, (outlived, again)
    assert len(cluster.dead_letters) == 0, [e.detail for e in cluster.dead_letters.iter()]
    for provider, account in (("green-api", GREEN_ID), ("wassenger", WASSENGER_ID)):
        summary = cluster.sim.summary(provider, account)
        assert summary["not_archived"] == 0, summary
        # README: a failover may hand out again the permits of the writes it lost, at most one
        # call early per account and failover, which the provider may refuse (429).
        assert refused[provider] <= len(recoveries), refused
    # The nodes followed the master by themselves: none exited, none needed a restart.
    assert all(node.process is not None and node.process.poll() is None for node in nodes)
    eventually(lambda: cluster.stored() == 0, 30, "the job store empty")
    assert list(cluster.redis.scan_iter(KEYS.pending("*", "*"))) == []
    assert len(recoveries) == 3
    # The master refuses writes without its replica: no worker warned it could lose them.
    assert "Redis Sentinel: the master requires" not in cluster.logs()
    # The command reaches the same Redis through the Sentinels.
    status = cluster.cli("status")
    assert status.returncode == 0, status.stderr


def test_a_command_sent_as_the_master_moves_lands_on_the_new_master(group: SentinelGroup) -> None:
    """A write sent just after SENTINEL FAILOVER meets the old master refusing writes (its replica
    has left to become master) and then the new master refusing them until it has a replica in
    sync again. Our client waits through both on the new master and writes there once; redis-py
    alone raises the first refusal, or retries on the old master until its budget runs out."""
    old = group.wait_settled()
    settings = settings_from(
        {"ARCHIVER_REDIS_URL": group.url, "ARCHIVER_SENTINEL_MASTER": group.name}
    )
    set_outage_grace(30)
    try:
        client = connect(group.url, settings=settings)
        client.set("before", "1")
        group.sentinel().execute_command("SENTINEL", "FAILOVER", group.name)
        # The Sentinels have promoted the replica; the client's connection is to the old master.
        eventually(lambda: group.master_port() not in (None, old), 10, "the replica promoted")
        started = time.monotonic()
        assert client.incr("written") == 1
        waited = time.monotonic() - started
    finally:
        set_outage_grace(1.0)
    new = group.wait_settled(timeout=60)
    assert new != old
    assert redis.Redis("127.0.0.1", new).get("written") == b"1"
    assert waited < 30, waited  # within the grace, not at its end


def test_beat_keeps_its_schedule_through_a_failover(group: SentinelGroup, tmp_path: Path) -> None:
    """``celery -A worker beat`` holds RedBeat's lock and sends due sweeps on the Sentinels'
    master, before and after it moves; the compose file's health check (RedBeat's own client,
    from the app's redbeat options) finds the lock on the new master."""
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        accounts_toml("http://127.0.0.1:9", wassenger_sweep='every = "1s"\ninactive_after = "30d"')
    )
    env = {
        "ARCHIVER_BROKER_URL": group.url,
        "ARCHIVER_SENTINEL_MASTER": group.name,
        "ARCHIVER_ACCOUNTS_FILE": str(accounts),
        "TEST_GREEN_TOKEN": CANARY,
        "TEST_WASSENGER_TOKEN": WASSENGER_CANARY,
    }
    beat = CeleryProcess(["beat", "-l", "INFO"], env, tmp_path / "beat.log").start()
    try:
        beat.wait_for_log("beat: Acquired lock", 60)
        group.failover()
        sent = beat.log().count("Sending due task")
        eventually(
            lambda: beat.log().count("Sending due task") > sent + 2,
            30,
            "sweeps sent after the failover",
            0.2,
            context=lambda: beat.log()[-3000:],
        )
        assert beat.process is not None and beat.process.poll() is None
        check = subprocess.run(
            [sys.executable, "-c", compose_beat_healthcheck()],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stderr[-2000:]
    finally:
        beat.stop()


def test_a_worker_says_when_a_failover_can_lose_acknowledged_writes(tmp_path: Path) -> None:
    """Redis's default, min-replicas-to-write 0, lost 1,440 of 3,000 jobs in the test above (the
    old master took writes for ten seconds after its replica was promoted): a worker says so."""
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(accounts_toml("http://127.0.0.1:9"))
    with SentinelGroup(min_replicas_to_write=0) as unfenced:
        env = {
            "ARCHIVER_BROKER_URL": unfenced.url,
            "ARCHIVER_SENTINEL_MASTER": unfenced.name,
            "ARCHIVER_ACCOUNTS_FILE": str(accounts),
            "TEST_GREEN_TOKEN": CANARY,
            "TEST_WASSENGER_TOKEN": WASSENGER_CANARY,
        }
        node = worker_process(env, tmp_path / "w.log", name="unfenced").start()
        try:
            node.wait_for_log("Redis Sentinel: the master requires 0 of its 1 replicas in sync", 60)
        finally:
            node.stop()


def compose_beat_healthcheck() -> str:
    """docker-compose.yml's health check of beat: the Python it runs."""
    compose = yaml.safe_load((Path(__file__).parents[2] / "docker-compose.yml").read_text())
    test = compose["services"]["beat"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    return str(test[3])
