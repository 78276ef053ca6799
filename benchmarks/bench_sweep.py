"""Sweep benchmark: one account with 100,000 chats, 20% inactive, at the providers' listing rates.

    python -m benchmarks.bench_sweep [--chats 100000] [--json]

For each provider it runs ``chat-archiver sweep`` as its own process (the code a worker's
archive.sweep task runs) against the simulator, which enforces the listing limits, and reports:
jobs enqueued (and found in the job store), listing calls per method, time spent waiting
for the shared limiter's permits against everything else, and the sweeping process's peak RSS.
Then it checks each chat once: the same chats swept again, enqueued again in bulk and sent again
with raw send_task while their jobs are pending, before real workers run them all: the provider
must see exactly one archive call per distinct chat.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from celery.result import AsyncResult
from rich.console import Console
from rich.table import Table

from benchmarks import harness
from config import Settings
from worker.celery_app import create_app
from worker.producer import ArchiveProducer
from worker.sandbox.local import WORKER_READY, PrivateRedis, free_port, worker_process
from worker.sandbox.simulator import SimulatorClient
from worker.stores.keys import Keys

GREEN_ID = "7200000001"
WASSENGER_ID = "72000000000000000000aa01"
DUP_ID = "7200000002"  # the each-chat-once account: no useful limit, so the run is quick
TOKENS = {
    "BENCH_GREEN": "benchgreentoken0001",
    "BENCH_WASSENGER": "benchwassengerkey01",
    "BENCH_DUP": "benchduplicatetok01",
}
ROOT = harness.ROOT


def accounts_toml(api_url: str) -> str:
    # Every inactive chat: the simulator gives most generated chats unread messages, which the
    # default policy (skip_unread) would rightly leave alone.
    # Archiving a fifth of 100,000 chats in one sweep is what the benchmark measures: no bound.
    sweep = (
        '[accounts.sweep]\ninactive_after = "30d"\ninclude_groups = true\nskip_unread = false\n'
        "max_share = 1.0\nmax_chats = 10000000\n"
    )
    # The simulator's journals are complete from the start: say so, or GREEN-API sweeps wait.
    green_sweep = sweep + 'journals_complete_since = "2026-01-01T00:00:00Z"\n'
    return f"""
[[accounts]]
provider = "green-api"
id = "{GREEN_ID}"
api_url = "{api_url}"
token_env = "BENCH_GREEN"
{green_sweep}
[[accounts]]
provider = "wassenger"
id = "{WASSENGER_ID}"
api_url = "{api_url}"
token_env = "BENCH_WASSENGER"
{sweep}
[[accounts]]
provider = "green-api"
id = "{DUP_ID}"
api_url = "{api_url}"
token_env = "BENCH_DUP"
rate_limit = "1000/s"
[accounts.rate_limits]
getChats = "50/s"
lastIncomingMessages = "50/s"
lastOutgoingMessages = "50/s"
getChatHistory = "50/s"
getSettings = "50/s"
{green_sweep}"""


def start_simulator(port: int, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "simulate", "--port", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    client = SimulatorClient(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 20
    while True:
        try:
            client.health()
            return process
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def peak_rss_of(command: list[str], env: dict[str, str]) -> tuple[bytes, bytes, int, float]:
    """Run a command; (stdout, stderr, return code, its own peak RSS in MB) via wait4."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # Files, not pipes: nothing can block on a full pipe while we wait4 for the child's own
        # rusage (ru_maxrss is in KiB on Linux).
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return out.read(), err.read(), process.returncode, usage.ru_maxrss / 1024


def run_sweep(env: dict[str, str], provider: str, account: str) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "worker.cli",
        "sweep",
        "--provider",
        provider,
        "--account",
        account,
        "--json",
    ]
    started = time.monotonic()
    stdout, stderr, code, peak_mb = peak_rss_of(command, env)
    elapsed = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"sweep failed ({code}): {stderr.decode()[-2000:]}")
    [summary] = json.loads(stdout)
    return {"summary": summary, "elapsed": round(elapsed, 2), "peak_rss_mb": round(peak_mb, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=100_000)
    parser.add_argument("--dup-chats", type=int, default=2_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    harness.use_private_redis()
    console = Console(stderr=args.json)
    workdir = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    figures: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "chats": args.chats}
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    private = PrivateRedis(port=harness.REDIS_PORT).start()
    simulator = start_simulator(sim_port, workdir / "simulator.log")
    workers: list[Any] = []
    try:
        accounts = workdir / "accounts.toml"
        accounts.write_text(accounts_toml(sim_url))
        env = {
            **os.environ,
            **TOKENS,
            "ARCHIVER_BROKER_URL": private.url,
            "ARCHIVER_ACCOUNTS_FILE": str(accounts),
            "PYTHONPATH": str(ROOT),
        }
        sim = SimulatorClient(sim_url)
        generate = {
            "count": args.chats,
            "inactive_ratio": 0.2,
            "inactive_days": 45,
            "active_days": 2,
            "group_ratio": 0.1,
            "seed": 3,
        }
        # The simulator enforces the listing limits the accounts file gives the limiter
        # (GREEN-API 1/s per listing method; Wassenger's conservative default of 2/s).
        sim.put_account("green-api", GREEN_ID, token=TOKENS["BENCH_GREEN"], generate=generate)
        sim.put_account(
            "wassenger",
            WASSENGER_ID,
            token=TOKENS["BENCH_WASSENGER"],
            generate=generate,
            rate_limits={"listChats": 2},
        )
        state = redis.Redis.from_url(private.url, decode_responses=True)

        # Producers (a sweep among them) write jobs into the job store; no worker runs here.
        jobs = Keys(Settings(broker_url=private.url).key_prefix).jobs
        for provider, account in (("green-api", GREEN_ID), ("wassenger", WASSENGER_ID)):
            truth = len(sim.inactive(provider, account, days=30))
            sim.reset_counters()
            queued_before = int(state.hlen(jobs))
            result = run_sweep(env, provider, account)
            summary = result["summary"]
            counters = sim.counters()["accounts"][f"{provider}:{account}"]
            limits = {"green-api": 1.0, "wassenger": 2.0}[provider]
            waited = _permit_wait(state, provider, account)
            figures[provider] = {
                "inactive_truth": truth,
                "enqueued": summary["enqueued"],
                "queued": int(state.hlen(jobs)) - queued_before,
                "listing_calls": summary["calls"],
                "provider_429s": sum(c.get("rate_limited", 0) for c in counters.values()),
                "sweep_seconds": summary["seconds"],
                "permit_wait_seconds": round(waited, 2),
                "other_seconds": round(summary["seconds"] - waited, 2),
                "listing_rate_per_method": limits,
                "peak_rss_mb": result["peak_rss_mb"],
            }

        # The sweeps above left 40,000 jobs in the job store for accounts at 10/s and 5/s:
        # forget them (this Redis is ours), so the workers below serve only the duplicate test.
        state.flushdb()
        figures["each_chat_once"] = _each_chat_once(
            env, sim, private, accounts, workdir, args.dup_chats, workers
        )
    finally:
        for worker in workers:
            worker.stop()
        simulator.terminate()
        simulator.wait(10)
        private.stop()
    _report(console, figures)
    if args.json:
        print(json.dumps(figures, indent=2))
    return 0


def _permit_wait(state: redis.Redis, provider: str, account: str) -> float:
    """Seconds the sweep slept for permits, summed over its listing methods (limiter stats)."""
    total = 0
    for key in state.scan_iter(f"chat-archiver:limiter:{provider}:{account}:*:stats"):
        total += int(state.hget(key, "waited_us") or 0)
    return total / 1_000_000


def _each_chat_once(
    env: dict[str, str],
    sim: SimulatorClient,
    private: PrivateRedis,
    accounts: Path,
    workdir: Path,
    chats: int,
    workers: list[Any],
) -> dict[str, Any]:
    """The target: duplicates asked for through sweeps and producers while the first jobs are
    pending cost nothing. Then, apart: raw send_task duplicates, which skip the producer."""
    sim.put_account(
        "green-api",
        DUP_ID,
        token=TOKENS["BENCH_DUP"],
        rate_limits={
            "archiveChat": None,
            "getChats": 50,
            "getChatHistory": 50,
            "lastIncomingMessages": 50,
            "lastOutgoingMessages": 50,
        },
        generate={
            "count": chats * 5,
            "inactive_ratio": 0.2,
            "inactive_days": 45,
            "active_days": 2,
            "group_ratio": 0.0,
            "seed": 5,
        },
    )
    inactive = sim.inactive("green-api", DUP_ID, days=30)
    os.environ.update(TOKENS)
    settings = Settings(broker_url=private.url)
    app = create_app(settings)
    producer = ArchiveProducer(app, settings, redis.Redis.from_url(private.url))
    sim.reset_counters()
    # No worker yet: every job stays pending while its duplicates are asked for.
    first = run_sweep(env, "green-api", DUP_ID)["summary"]
    again = run_sweep(env, "green-api", DUP_ID)["summary"]
    rows = [{"provider": "green-api", "account": DUP_ID, "chat_id": chat} for chat in inactive]
    bulk = producer.enqueue_many(rows)
    for n in range(2):
        worker = worker_process(env, workdir / f"dup-worker-{n}.log", name=f"dup{n}", concurrency=4)
        worker.start()
        workers.append(worker)
    for worker in workers:
        worker.wait_for_log(WORKER_READY, timeout=60)
    calls = _wait_for_calls(sim, len(inactive))

    # Raw send_task duplicates skip the producer's claim: the worker catches one only if its
    # twin is still pending or running when it starts. Here each chat's job and its raw twin
    # are sent together, so some twins run after the first job ended and call again (the
    # provider answers "already archived").
    raw_chats = [f"79{n:011d}@c.us" for n in range(900_000, 900_200)]
    sim.add_chats("green-api", DUP_ID, [{"id": chat} for chat in raw_chats])
    raw_rows = [{"provider": "green-api", "account": DUP_ID, "chat_id": chat} for chat in raw_chats]
    producer.enqueue_many(raw_rows)
    raw = [app.send_task("archive.chat", kwargs=row).id for row in raw_rows]
    raw_calls = _wait_for_calls(sim, calls + len(raw_chats)) - calls
    raw_outcomes = [AsyncResult(task_id, app=app).get(timeout=120)["outcome"] for task_id in raw]
    # Results sit in reference cycles (vine promises) until the cyclic collector runs; collected
    # after Redis stops, each one's __del__ prints a traceback as it fails to unsubscribe.
    gc.collect()
    app.close()
    return {
        "distinct_chats": len(inactive),
        "enqueue_requests": first["enqueued"]
        + first["duplicates"]
        + again["enqueued"]
        + again["duplicates"]
        + len(bulk.enqueued)
        + len(bulk.duplicates),
        "first_sweep_enqueued": first["enqueued"],
        "second_sweep_duplicates": again["duplicates"],
        "bulk_duplicates": len(bulk.duplicates),
        "provider_archive_calls": calls,
        "raw_send_task": {
            "chats": len(raw_chats),
            "provider_calls": raw_calls,
            "outcomes": {o: raw_outcomes.count(o) for o in sorted(set(raw_outcomes))},
        },
    }


def _wait_for_calls(sim: SimulatorClient, at_least: int, timeout: float = 300) -> int:
    """archiveChat calls on the duplicate account, once they reach `at_least` and settle."""
    deadline = time.monotonic() + timeout

    def calls() -> int:
        counters = sim.counters()["accounts"][f"green-api:{DUP_ID}"]
        return int(counters.get("archiveChat", {}).get("calls", 0))

    while calls() < at_least and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # anything late would show up now
    return calls()


def _report(console: Console, figures: dict[str, Any]) -> None:
    console.print(f"[bold]{figures['command']}[/bold]")
    table = Table(
        "", "GREEN-API", "Wassenger", title=f"one account, {figures['chats']:,} chats, 20% inactive"
    )
    green, wassenger = figures["green-api"], figures["wassenger"]
    rows = [
        ("inactive chats (simulator truth)", "inactive_truth"),
        ("jobs enqueued", "enqueued"),
        ("jobs in the job store", "queued"),
        ("provider 429s", "provider_429s"),
        ("sweep seconds", "sweep_seconds"),
        ("  waiting for listing permits", "permit_wait_seconds"),
        ("  everything else", "other_seconds"),
        ("peak RSS of the sweeping process (MB)", "peak_rss_mb"),
    ]
    for label, key in rows:
        table.add_row(label, str(green[key]), str(wassenger[key]))
    table.add_row(
        "listing calls", json.dumps(green["listing_calls"]), json.dumps(wassenger["listing_calls"])
    )
    table.add_row(
        "listing limit per method (calls/s)",
        str(green["listing_rate_per_method"]),
        str(wassenger["listing_rate_per_method"]),
    )
    console.print(table)
    verdict = Table("target", "figure", "result", title="targets")
    for provider, data in (("GREEN-API", green), ("Wassenger", wassenger)):
        verdict.add_row(
            f"{provider}: all inactive chats enqueued",
            f"{data['enqueued']:,} of {data['inactive_truth']:,}",
            _mark(data["enqueued"] == data["inactive_truth"] == data["queued"]),
        )
        verdict.add_row(
            f"{provider}: peak RSS < 150 MB",
            f"{data['peak_rss_mb']} MB",
            _mark(data["peak_rss_mb"] < 150),
        )
        verdict.add_row(
            f"{provider}: listing bounded by the listing rate",
            f"{data['permit_wait_seconds']}s waiting of {data['sweep_seconds']}s",
            _mark(data["provider_429s"] == 0),
        )
    once = figures["each_chat_once"]
    verdict.add_row(
        "duplicate enqueues (sweeps, producer): provider calls = distinct chats",
        f"{once['provider_archive_calls']:,} calls, {once['distinct_chats']:,} chats "
        f"({once['enqueue_requests']:,} requests)",
        _mark(once["provider_archive_calls"] == once["distinct_chats"]),
    )
    console.print(verdict)
    raw = once["raw_send_task"]
    console.print(
        f"Apart from the target: {raw['chats']} chats each enqueued through the producer and "
        f"sent again with raw send_task made {raw['provider_calls']} provider calls; the raw "
        f"messages ended {raw['outcomes']}. A raw message skips the producer's claim, so the "
        "worker treats it as a duplicate only while its twin is still pending or running."
    )


def _mark(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]MISS[/red]"


if __name__ == "__main__":
    sys.exit(main())
