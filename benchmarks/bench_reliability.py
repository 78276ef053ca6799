"""Reliability benchmark: garbage, killed nodes and Redis restarts, every job counted.

    python -m benchmarks.bench_reliability [--fuzz 10000] [--valid 500]
        [--jobs 3000] [--kills 20] [--restarts 3] [--only fuzz|faults] [--json]

fuzz     N generated messages (tests/unit/test_envelope.py's strategy: mangled kombu envelopes
         and raw bytes) pushed onto the intake among V valid jobs, two worker nodes (prefork
         and threads pools). Reports worker exits, messages unaccounted for (neither a dead
         letter nor an outcome), valid jobs not archived.
faults   J jobs on three worker nodes (prefork -c 4) against an append-only Redis, with the
         settings' DEFAULTS (30 s leases): K times a node is SIGKILLed with its pool (a new one
         starts), R times Redis is killed and started again (0.3 s down). Reports jobs lost (no
         outcome), false dead letters, chats not archived, jobs left in the store, and how long
         the jobs running at each kill took to reach an outcome (the recovery time).

Real processes throughout: private redis-servers, the simulator over loopback, `celery -A worker
worker` nodes. Run one benchmark at a time on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import Settings
from tests.conftest import GREEN_ID, KEYS
from tests.integration.conftest import FAST, Cluster
from tests.unit.test_envelope import mangled_messages
from worker.contract import envelope
from worker.sandbox.local import PrivateRedis
from worker.sandbox.simulator import start_in_thread

# The faults section runs with the settings' defaults, not the integration tests' fast ones.
DEFAULTS = {
    name: str(Settings.model_fields[name.removeprefix("ARCHIVER_").lower()].default)
    for name in FAST
}


def generated(count: int) -> list[bytes]:
    found: list[bytes] = []

    @settings(max_examples=count, suppress_health_check=list(HealthCheck), deadline=None)
    @given(raw=mangled_messages() | st.binary(max_size=300))
    def collect(raw: bytes) -> None:
        found.append(raw)

    collect()
    return found[:count]


def done_at(cluster: Cluster, task_id: str) -> float | None:
    """When the job reached its outcome (unix seconds), or None if it has none."""
    done = cluster.app.AsyncResult(task_id).date_done
    if done is None:
        return None
    return (done if done.tzinfo else done.replace(tzinfo=UTC)).timestamp()


def rows(count: int, prefix: str) -> list[dict[str, str]]:
    return [
        {"provider": "green-api", "account": GREEN_ID, "chat_id": f"{prefix}{n:07d}@c.us"}
        for n in range(count)
    ]


def bench_fuzz(workdir: Path, count: int, valid_count: int) -> dict[str, Any]:
    garbage = generated(count)
    now = time.time()
    refused, accepted = 0, set()
    for raw in garbage:
        try:
            accepted.add(envelope.read(raw, now=now).task_id)
        except envelope.Refused:
            refused += 1
    with PrivateRedis() as server, start_in_thread() as simulator:
        env = {"ARCHIVER_UNKNOWN_ACCOUNT_GRACE": "1", "ARCHIVER_JANITOR_INTERVAL": "1"}
        (workdir / "fuzz").mkdir()
        cluster = Cluster(server.url, simulator, workdir / "fuzz", env=env, green_rate="200/s")
        try:
            cluster.sim.patch_account("green-api", GREEN_ID, rate_limits={"archiveChat": 200})
            valid = rows(valid_count, "7921")
            cluster.add_chats("green-api", [row["chat_id"] for row in valid])
            nodes = [
                cluster.start_worker("fuzz1", concurrency=4, pool="prefork"),
                cluster.start_worker("fuzz2", concurrency=4, pool="threads"),
            ]
            started = time.monotonic()
            half = valid_count // 2
            ids = [t for _, t in cluster.producer.enqueue_many(valid[:half]).enqueued]
            raw_broker = redis.Redis.from_url(server.url)
            random.shuffle(garbage)
            for start in range(0, len(garbage), 200):
                raw_broker.lpush("archive", *garbage[start : start + 200])
            ids += [t for _, t in cluster.producer.enqueue_many(valid[half:]).enqueued]
            ends = cluster.wait_outcomes(ids + sorted(accepted), timeout=600, step=0.5)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                invalid = sum(1 for _ in cluster.dead_letters.iter(reason="invalid_request"))
                if invalid >= refused:
                    break
                time.sleep(1)
            seconds = time.monotonic() - started
            exits = sum(1 for node in nodes if node.process.poll() is not None)  # type: ignore[union-attr]
            unread = int(raw_broker.llen("archive"))
            return {
                "messages": count,
                "refused": refused,
                "well_formed_ids": len(accepted),
                "dead_letters_invalid_request": invalid,
                "unaccounted": max(0, refused - invalid)
                + sum(1 for t in accepted if ends.get(t) is None)
                + unread,
                "worker_exits": exits,
                "valid_jobs": valid_count,
                "valid_archived": sum(
                    1 for t in ids if (ends.get(t) or {}).get("outcome") == "archived"
                ),
                "seconds": round(seconds, 1),
            }
        finally:
            cluster.close()


def bench_faults(workdir: Path, jobs: int, kills: int, restarts: int) -> dict[str, Any]:
    with PrivateRedis(appendonly=True) as server, start_in_thread() as simulator:
        # The provider answers in 100 ms and allows 30 calls/s: the load lasts about
        # jobs / 30 seconds, long enough for every kill and restart to hit jobs in flight.
        (workdir / "faults").mkdir()
        cluster = Cluster(
            server.url, simulator, workdir / "faults", env=DEFAULTS, green_rate="30/s"
        )
        try:
            load = rows(jobs, "7922")
            chats = [row["chat_id"] for row in load]
            cluster.add_chats("green-api", chats)
            # The provider allows what the accounts file says (its sliding one-second window).
            cluster.sim.patch_account(
                "green-api", GREEN_ID, faults={"latency_ms": 100}, rate_limits={"archiveChat": 30}
            )
            nodes = [cluster.start_worker(f"node{n}", concurrency=4) for n in range(3)]
            ids = [t for _, t in cluster.producer.enqueue_many(load).enqueued]
            faults = ["kill"] * kills + ["restart"] * restarts
            random.shuffle(faults)
            spacing = jobs / 30 / (len(faults) + 2)
            recoveries: list[float] = []
            watched: list[tuple[float, list[str]]] = []
            spawned = len(nodes)
            for fault in faults:
                time.sleep(spacing)
                if fault == "restart":
                    server.restart(
                        down_for=0.3, signum=random.choice([signal.SIGKILL, signal.SIGTERM])
                    )
                    continue
                # The jobs running now: the active set's members are "<task id>|<lease>".
                held = [m.split("|")[0] for m in cluster.redis.zrange(KEYS.active, 0, -1)]
                victim = random.choice([n for n in nodes if n.process.poll() is None])  # type: ignore[union-attr]
                victim.signal(signal.SIGKILL, group=True)
                # The jobs the killed node was running (its log names each job it received).
                log = victim.log()
                watched.append((time.time(), [t for t in held if f"[{t}] received" in log]))
                print(f"{time.strftime('%H:%M:%S')} killed {victim.log_path.stem}", file=sys.stderr)
                nodes.remove(victim)
                spawned += 1
                nodes.append(cluster.start_worker(f"node{spawned}", concurrency=4))
            ends = cluster.wait_outcomes(ids, timeout=900, step=0.5)
            for killed_at, held in watched:
                # From the kill to the moment the last of the node's jobs ended, as the result
                # backend dates it (a job without an outcome is counted as lost below). A kill
                # that caught the node between jobs has nothing to recover.
                ended = [t for t in (done_at(cluster, task_id) for task_id in held) if t]
                if ended:
                    recoveries.append(max(ended) - killed_at)
            lost = sum(1 for value in ends.values() if value is None)
            summary = cluster.sim.summary("green-api", GREEN_ID)
            return {
                "jobs": jobs,
                "kills": kills,
                "redis_restarts": restarts,
                "lost": lost,
                "outcomes": {
                    name: sum(1 for v in ends.values() if (v or {}).get("outcome") == name)
                    for name in ("archived", "already_archived", "dead_lettered")
                },
                "false_dead_letters": len(cluster.dead_letters),
                "chats_not_archived": summary["not_archived"],
                "left_in_store": cluster.stored(),
                "pending_marks_left": sum(
                    1 for _ in cluster.redis.scan_iter(KEYS.pending("*", "*"))
                ),
                "provider_429s": cluster.calls("green-api", "archiveChat", status=429),
                "recovery_seconds_max": round(max(recoveries, default=0.0), 1),
                "kills_that_caught_running_jobs": len(recoveries),
                "recovery_seconds": [round(r, 1) for r in recoveries],
                "lease_timeout": float(DEFAULTS["ARCHIVER_LEASE_TIMEOUT"]),
            }
        finally:
            cluster.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuzz", type=int, default=10_000)
    parser.add_argument("--valid", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--only", choices=["fuzz", "faults"])
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--keep", action="store_true", help="Keep the worker logs (folder printed)."
    )
    args = parser.parse_args()
    # Before anything builds a Celery app from the environment: nothing may reach a shared Redis.
    os.environ["ARCHIVER_BROKER_URL"] = "redis://127.0.0.1:1/15"
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as folder:
        workdir = Path(tempfile.mkdtemp(prefix="bench-reliability-")) if args.keep else Path(folder)
        if args.keep:
            print(f"logs in {workdir}", file=sys.stderr)
        if args.only in (None, "fuzz"):
            report["fuzz"] = bench_fuzz(workdir, args.fuzz, args.valid)
        if args.only in (None, "faults"):
            report["faults"] = bench_faults(workdir, args.jobs, args.kills, args.restarts)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for section, figures in report.items():
            print(f"== {section}")
            for name, value in figures.items():
                print(f"  {name}: {value}")
    fuzz, faults = report.get("fuzz", {}), report.get("faults", {})
    ok = (
        fuzz.get("worker_exits", 0) == 0
        and fuzz.get("unaccounted", 0) == 0
        and fuzz.get("valid_archived", 0) == fuzz.get("valid_jobs", 0)
        and faults.get("lost", 0) == 0
        and faults.get("false_dead_letters", 0) == 0
        and faults.get("recovery_seconds_max", 0) <= 60
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
