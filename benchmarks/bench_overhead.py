"""What chat-archiver costs a job, beside a bare Celery task doing the same provider call.

    python -m benchmarks.bench_overhead [--json] [--quick] [--rounds N] [--jobs N]
                                        [--idle-seconds S] [--probes N] [--keep-logs]
                                        [--tracing]

Both sides run one worker node (prefork ``-c 4``) against the same simulator (its own process)
and a private Redis, with the same Celery settings: late acks, prefetch 1, task and sent events
on (benchmarks/stock_app.py's ``stock.bare_archive``: one httpx POST, no limiter, no retries).
chat-archiver runs with 5 accounts at 1000/s (no effective limit). Rounds alternate the order
(bare first, then chat-archiver first, ...); figures are medians over rounds, and each speed is
a ratio to the bare task measured in the same rounds. Each run, on a flushed Redis and a fresh
node:

1. idle: for ``--idle-seconds`` nothing is enqueued: Redis round trips (read events) and
   commands per second the idle node costs;
2. latency: ``--probes`` single jobs, each enqueued when the last is done: enqueue -> the
   provider's call (the simulator stamps each call's arrival; same host, same clock);
3. throughput: the node paused, ``--jobs`` jobs enqueued, the node resumed: jobs/s to the last
   job done, the node's CPU per job (main and pool, /proc), and Redis's commands, round trips,
   CPU and bytes per job, the producer's included (chat-archiver's producer writes into the job
   store, the bare one publishes a message: each side's whole cost).

``--tracing``: chat-archiver with ARCHIVER_TRACING=otlp, its producer and node exporting every
span over OTLP/HTTP to a sink in this process that reads and discards them (the cost of making
and sending the spans; no collector's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import harness
from benchmarks.harness import (
    Bench,
    Node,
    account_id,
    chat_id,
    fmt,
    progress,
    ratio,
    scenario_account,
    target,
)
from worker.producer import ArchiveProducer

CONCURRENCY = 4
ACCOUNTS = 5
RATE = "1000/s"
KINDS = ("stock", "archiver")
LABELS = {"stock": "bare Celery", "archiver": "chat-archiver"}
# The targets (20): ratios to the bare task, and absolute Redis costs.
TARGET_JOBS = 1.0
TARGET_CPU = 1.1
TARGET_COMMANDS = 30.0
TARGET_ROUND_TRIPS = 8.0
TARGET_IDLE_ROUND_TRIPS = 2.0
TARGET_LATENCY = 1.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("bench_overhead")
    group.add_argument("--rounds", type=int, default=None, help="rounds of both runs (3)")
    group.add_argument("--jobs", type=int, default=None, help="jobs per throughput run (3000)")
    group.add_argument("--idle-seconds", type=float, default=None, help="idle window (15)")
    group.add_argument("--probes", type=int, default=None, help="single jobs timed (30)")
    group.add_argument(
        "--tracing", action="store_true", help="chat-archiver with tracing on (OTLP to a sink)"
    )


class SpanSink:
    """An OTLP/HTTP endpoint on loopback that reads each export and answers 200, for
    ``--tracing``: the exporters pay for sending, nothing is kept."""

    def __init__(self) -> None:
        received = self.received = [0, 0]  # posts, bytes

        class Discard(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", 0))
                self.rfile.read(size)
                received[0] += 1
                received[1] += size
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Discard)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.env = {
            "ARCHIVER_TRACING": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": (
                f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
            ),
        }


_sink: SpanSink | None = None


def _start(bench: Bench, kind: str, per_account: int, label: str) -> Node:
    bench.fresh([scenario_account(n, None, per_account) for n in range(1, ACCOUNTS + 1)])
    if kind == "stock":
        env = bench.stock_env(accounts=ACCOUNTS, events=True)
        [node] = bench.start_nodes(kind, 1, CONCURRENCY, env, label)
    else:
        extra = _sink.env if _sink is not None else {}
        env = bench.archiver_env(bench.accounts_file(ACCOUNTS, RATE), **extra)
        [node] = bench.start_nodes(kind, 1, CONCURRENCY, env, label, settle=ACCOUNTS)
    return node


def _enqueue(bench: Bench, kind: str, jobs: list[tuple[int, str]]) -> None:
    if kind == "stock":
        bench.enqueue_stock(bench.stock_producer(), jobs, bare=True)
    elif _sink is not None:
        traced = bench.settings.model_copy(update={"tracing": "otlp"})
        assert bench.redis is not None
        bench.enqueue(ArchiveProducer(bench.app(), traced, bench.redis), jobs)
    else:
        bench.enqueue(bench.producer(), jobs)


def _last_call(bench: Bench, n: int) -> float:
    assert bench.sim is not None
    counters = bench.sim.counters()["accounts"][f"{harness.PROVIDER}:{account_id(n)}"]
    return float(counters[harness.METHOD]["last_at"])


def one_run(bench: Bench, kind: str, args: argparse.Namespace, label: str) -> dict[str, Any]:
    assert bench.stats is not None
    jobs, probes, idle_seconds = args.jobs, args.probes, args.idle_seconds
    per_account = jobs // ACCOUNTS + probes
    node = _start(bench, kind, per_account, label)
    try:
        progress(f"{label}: idle for {idle_seconds:g} s")
        s0 = bench.stats.snapshot()
        time.sleep(idle_seconds)
        idle = bench.stats.snapshot() - s0

        progress(f"{label}: {probes} single jobs, one at a time")
        latencies = []
        for i in range(probes):
            n = 1 + i % ACCOUNTS  # each account's chats after those of the throughput run
            enqueued = time.time()
            _enqueue(bench, kind, [(n, chat_id(jobs // ACCOUNTS + i // ACCOUNTS))])
            seen, _ = bench.wait_lines([node], 1, timeout=30)
            if seen is None:
                raise RuntimeError(f"{label}: probe {i} never finished")
            latencies.append(_last_call(bench, n) - enqueued)
            time.sleep(0.2)  # idle again before the next one

        work = [(n, chat_id(i)) for i in range(jobs // ACCOUNTS) for n in range(1, ACCOUNTS + 1)]
        node.pause()
        time.sleep(0.2)
        p0 = bench.stats.snapshot()
        _enqueue(bench, kind, work)
        cpu0 = node.cpu()
        progress(f"{label}: {len(work)} jobs enqueued; node resumed")
        began = time.monotonic()
        node.resume()
        done_at, found = bench.wait_lines([node], len(work), timeout=600)
        ended = done_at if done_at is not None else time.monotonic()
        time.sleep(0.5)  # the last job's result and events land
        spent, cpu = bench.stats.snapshot() - p0, node.cpu() - cpu0
    finally:
        bench.stop_nodes([node])
    count = len(work)
    elapsed = ended - began
    return {
        "kind": kind,
        "complete": done_at is not None and found >= count,
        "jobs": count,
        "jobs_per_s": round(count / elapsed, 1),
        "worker_cpu_ms_per_job": round(cpu.total * 1000 / count, 3),
        "worker_main_cpu_ms_per_job": round(cpu.main * 1000 / count, 3),
        "worker_pool_cpu_ms_per_job": round(cpu.pool * 1000 / count, 3),
        "redis_per_job": spent.per(count),
        "latency_s": harness.summary(latencies, 4),
        "idle": {
            "seconds": round(idle.seconds, 2),
            "round_trips_per_s": round(idle.reads / idle.seconds, 2),
            "commands_per_s": round(idle.total / idle.seconds, 2),
            "by_command_per_s": {
                k: round(v / idle.seconds, 2)
                for k, v in sorted(idle.commands.items(), key=lambda item: -item[1])
            },
        },
    }


def overhead(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    global _sink
    if args.tracing and _sink is None:
        _sink = SpanSink()
        os.environ.update(_sink.env)  # this process's producer exports there too
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.jobs = args.jobs or (1500 if args.quick else 3000)
    args.idle_seconds = args.idle_seconds or (8.0 if args.quick else 15.0)
    args.probes = args.probes or (15 if args.quick else 30)
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for round_ in range(1, args.rounds + 1):
        order = KINDS if round_ % 2 else tuple(reversed(KINDS))
        for kind in order:
            label = f"{kind}-r{round_}"
            runs[kind].append(one_run(bench, kind, args, label))
    medians = {kind: _medians(rows) for kind, rows in runs.items()}
    bare, ours = medians["stock"], medians["archiver"]
    ratios = {
        name: ratio(ours[name], bare[name])
        for name in (
            "jobs_per_s",
            "worker_cpu_ms_per_job",
            "redis_commands",
            "redis_round_trips",
            "redis_cpu_ms",
            "redis_bytes_in",
            "latency_p50_s",
            "idle_round_trips_per_s",
        )
    }
    figures = {"rounds": args.rounds, "runs": runs, "medians": medians, "ratios": ratios}
    if _sink is not None:
        figures["tracing"] = {"exports": _sink.received[0], "bytes": _sink.received[1]}
    return figures


def _medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(statistics.median(present), 4) if present else None

    return {
        "jobs_per_s": median([r["jobs_per_s"] for r in rows]),
        "worker_cpu_ms_per_job": median([r["worker_cpu_ms_per_job"] for r in rows]),
        "worker_main_cpu_ms_per_job": median([r["worker_main_cpu_ms_per_job"] for r in rows]),
        "worker_pool_cpu_ms_per_job": median([r["worker_pool_cpu_ms_per_job"] for r in rows]),
        "redis_commands": median([r["redis_per_job"]["commands"] for r in rows]),
        "redis_round_trips": median([r["redis_per_job"]["round_trips"] for r in rows]),
        "redis_cpu_ms": median([r["redis_per_job"]["redis_cpu_ms"] for r in rows]),
        "redis_bytes_in": median([r["redis_per_job"]["bytes_in"] for r in rows]),
        "latency_p50_s": median([r["latency_s"]["p50"] for r in rows]),
        "idle_round_trips_per_s": median([r["idle"]["round_trips_per_s"] for r in rows]),
        "idle_commands_per_s": median([r["idle"]["commands_per_s"] for r in rows]),
        "complete": all(r["complete"] for r in rows),
    }


SECTIONS = {"overhead": overhead}


def targets(sections: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    section = sections.get("overhead")
    if not section:
        return []
    ratios, ours = section["ratios"], section["medians"]["archiver"]

    def at_most(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    jobs = ratios["jobs_per_s"]
    return [
        target(
            f"jobs/s ≥ {TARGET_JOBS:g}x bare Celery (same settings)",
            f"{fmt(jobs, '.2f', 'x')}",
            None if jobs is None else jobs >= TARGET_JOBS,
        ),
        target(
            f"worker CPU per job ≤ {TARGET_CPU:g}x bare",
            fmt(ratios["worker_cpu_ms_per_job"], ".2f", "x"),
            at_most(ratios["worker_cpu_ms_per_job"], TARGET_CPU),
        ),
        target(
            f"Redis commands per job ≤ {TARGET_COMMANDS:g}",
            fmt(ours["redis_commands"], ".1f"),
            at_most(ours["redis_commands"], TARGET_COMMANDS),
        ),
        target(
            f"Redis round trips per job ≤ {TARGET_ROUND_TRIPS:g}",
            fmt(ours["redis_round_trips"], ".1f"),
            at_most(ours["redis_round_trips"], TARGET_ROUND_TRIPS),
        ),
        target(
            f"idle node ≤ {TARGET_IDLE_ROUND_TRIPS:g} round trips/s",
            fmt(ours["idle_round_trips_per_s"], ".2f"),
            at_most(ours["idle_round_trips_per_s"], TARGET_IDLE_ROUND_TRIPS),
        ),
        target(
            f"enqueue -> provider call p50 ≤ {TARGET_LATENCY:g}x bare (idle)",
            fmt(ratios["latency_p50_s"], ".2f", "x"),
            at_most(ratios["latency_p50_s"], TARGET_LATENCY),
        ),
    ]


def print_sections(out: Console, sections: dict[str, dict[str, Any]]) -> None:
    section = sections.get("overhead")
    if not section:
        return
    medians, ratios = section["medians"], section["ratios"]
    table = Table(
        title=f"per job, medians of {section['rounds']} interleaved rounds "
        "(1 node -c 4, 5 accounts, no effective limit)",
        title_justify="left",
    )
    table.add_column("")
    table.add_column("chat-archiver", justify="right")
    table.add_column("bare Celery, same settings", justify="right")
    table.add_column("ratio", justify="right")
    rows = [
        ("jobs/s", "jobs_per_s", ".0f"),
        ("worker CPU ms", "worker_cpu_ms_per_job", ".2f"),
        ("Redis commands", "redis_commands", ".1f"),
        ("Redis round trips", "redis_round_trips", ".1f"),
        ("Redis CPU ms", "redis_cpu_ms", ".3f"),
        ("Redis bytes in", "redis_bytes_in", ".0f"),
        ("enqueue -> provider call p50 (idle), s", "latency_p50_s", ".4f"),
        ("idle node round trips/s", "idle_round_trips_per_s", ".2f"),
    ]
    ours, bare = medians["archiver"], medians["stock"]
    for name, key, spec in rows:
        table.add_row(
            name, fmt(ours[key], spec), fmt(bare[key], spec), fmt(ratios.get(key), ".2f", "x")
        )
    table.add_row(
        "worker CPU ms: main / pool",
        f"{fmt(ours['worker_main_cpu_ms_per_job'], '.2f')} / "
        f"{fmt(ours['worker_pool_cpu_ms_per_job'], '.2f')}",
        f"{fmt(bare['worker_main_cpu_ms_per_job'], '.2f')} / "
        f"{fmt(bare['worker_pool_cpu_ms_per_job'], '.2f')}",
        "",
    )
    out.print(table)
    if "tracing" in section:
        sent = section["tracing"]
        out.print(
            f"tracing on (OTLP to a sink): {sent['exports']} exports, {sent['bytes']} bytes",
            highlight=False,
        )
    detail = Table(title="every run", title_justify="left")
    for column in ("run", "jobs/s", "CPU ms", "cmds", "round trips", "p50 s", "idle rt/s", "ok"):
        detail.add_column(column, justify="right")
    for kind, rows_ in section["runs"].items():
        for n, row in enumerate(rows_, start=1):
            detail.add_row(
                f"{LABELS[kind]} {n}",
                fmt(row["jobs_per_s"], ".0f"),
                fmt(row["worker_cpu_ms_per_job"], ".2f"),
                fmt(row["redis_per_job"]["commands"], ".1f"),
                fmt(row["redis_per_job"]["round_trips"], ".1f"),
                fmt(row["latency_s"]["p50"], ".4f"),
                fmt(row["idle"]["round_trips_per_s"], ".2f"),
                "yes" if row["complete"] else "NO",
            )
    out.print(detail)
    by_command = section["runs"]["archiver"][0]["redis_per_job"]["by_command"]
    out.print(
        "chat-archiver's Redis commands per job (first round): "
        + ", ".join(f"{k} {v:g}" for k, v in by_command.items()),
        highlight=False,
    )
    idle = section["runs"]["archiver"][0]["idle"]["by_command_per_s"]
    out.print(
        "chat-archiver's idle node, commands/s: "
        + ", ".join(f"{k} {v:g}" for k, v in idle.items()),
        highlight=False,
    )


if __name__ == "__main__":
    harness.main(__doc__.splitlines()[0], [sys.modules[__name__]], __doc__)
