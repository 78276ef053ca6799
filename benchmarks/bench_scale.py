"""The cost of a job at 5, 1,000 and 5,000 configured accounts, beside a bare Celery task.

    python -m benchmarks.bench_scale [--json] [--quick] [--rounds N] [--jobs N]
                                            [--idle-seconds S] [--keep-logs]

One worker node, prefork ``-c 4``, every account at 1000/s (no effective limit; the simulator
enforces none). Each run, on a flushed Redis and a fresh node:

1. idle: the node is ready and has published its accounts; for ``--idle-seconds`` nothing is
   enqueued: Redis commands/s and bytes/s the idle node costs, its CPU;
2. jobs: the node is paused (SIGSTOP to its process group), ``--jobs`` jobs are enqueued with
   ``enqueue_many`` (their Redis cost is measured apart: "producer"), the node resumes; jobs/s
   from resume to the last job's "succeeded" line in its log; the node's CPU (main process and
   pool children, /proc utime + stime), and everything Redis counted (commands inside Lua
   scripts included, bytes in, its own CPU), per job;
3. status (first round): ``chat-archiver status`` and ``status --json`` against that idle node:
   wall time, output size, exit code, the Redis commands it issued.

Runs: stock Celery's bare task (``stock.bare_archive``, the same HTTP call, no limiter) with
Celery's defaults and with chat-archiver's Celery settings (task and sent events on); then
chat-archiver with 5, 1,000 and 5,000 configured accounts, jobs spread over all configured
accounts (at 5,000 accounts 3,000 jobs land on 3,000 different accounts) and over 5 of them.
Rounds alternate the order (the second round runs it backwards); figures are medians over rounds.
Speeds are reported as ratios to baselines of the same run: 5 configured accounts, and the bare
task with the same Celery settings.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import harness
from benchmarks.harness import (
    Bench,
    account_id,
    chat_id,
    fmt,
    progress,
    ratio,
    scenario_account,
    target,
)

CONCURRENCY = 4
RATE = "1000/s"  # the accounts file's largest rate: no effective limit
ACCOUNT_COUNTS = (5, 1000, 5000)
TARGET_JOBS_RATIO = 0.9
TARGET_COST_RATIO = 1.1
TARGET_OVERHEAD = 0.8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("bench_scale")
    group.add_argument("--rounds", type=int, default=None, help="rounds of every run (2)")
    group.add_argument("--jobs", type=int, default=None, help="jobs per run (3000)")
    group.add_argument(
        "--idle-seconds", type=float, default=None, help="idle measurement per run (10)"
    )
    group.add_argument(
        "--runs",
        nargs="+",
        default=None,
        help="only these runs (bare-defaults bare-events archiver-5 archiver-1000 "
        "archiver-5000 archiver-1000-over5 archiver-5000-over5)",
    )


def _plan(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    """(kind, configured accounts, spread) of one round, in order."""
    runs: list[tuple[str, int, str]] = []
    if not args.quick:
        runs.append(("stock", 5, "defaults"))
    runs.append(("stock", 5, "events"))
    for count in ACCOUNT_COUNTS:
        runs.append(("archiver", count, "all"))
    if not args.quick:
        for count in ACCOUNT_COUNTS[1:]:
            runs.append(("archiver", count, "5"))
    if getattr(args, "runs", None):
        runs = [run for run in runs if run_key(*run) in args.runs]
    return runs


def run_key(kind: str, count: int, spread: str) -> str:
    if kind == "stock":
        return f"bare-{spread}"
    return f"archiver-{count}" + ("" if spread == "all" or count == 5 else "-over5")


def one_run(
    bench: Bench,
    kind: str,
    count: int,
    spread: str,
    jobs: int,
    idle_seconds: float,
    with_status: bool,
) -> dict[str, Any]:
    assert bench.stats is not None and bench.redis is not None and bench.sim is not None
    with_jobs = count if spread == "all" else min(5, count)
    per_account = math.ceil(jobs / with_jobs)
    work = [(n, chat_id(i)) for i in range(per_account) for n in range(1, with_jobs + 1)][:jobs]
    bench.fresh(
        [
            scenario_account(n, None, per_account if n <= with_jobs else 1)
            for n in range(1, count + 1)
        ]
    )
    key = run_key(kind, count, spread)
    if kind == "stock":
        env = bench.stock_env(accounts=5, events=spread == "events")
        accounts_file = None
    else:
        accounts_file = bench.accounts_file(count, RATE)
        env = bench.archiver_env(accounts_file)
    progress(f"{key}: starting 1 node, -c {CONCURRENCY}")
    started = time.monotonic()
    [node] = bench.start_nodes(
        kind, 1, CONCURRENCY, env, key, settle=count if kind == "archiver" else None
    )
    start_s = time.monotonic() - started
    try:
        progress(f"{key}: idle for {idle_seconds:g} s")
        s0, c0 = bench.stats.snapshot(), node.cpu()
        time.sleep(idle_seconds)
        s1, c1 = bench.stats.snapshot(), node.cpu()
        idle = s1 - s0
        idle_cpu = c1 - c0

        node.pause()
        time.sleep(0.2)
        p0 = bench.stats.snapshot()
        if kind == "stock":
            bench.enqueue_stock(bench.stock_producer(), work, bare=True)
        else:
            bench.enqueue(bench.producer(), work)
        p1 = bench.stats.snapshot()
        cpu0 = node.cpu()
        progress(f"{key}: {jobs} jobs enqueued over {with_jobs} accounts; node resumed")
        began = time.monotonic()
        node.resume()
        # A third of the way: what comes after is the steady state, without what a node does
        # once (connections, its first call per pool process, loading the accounts file).
        mid_at, mid_count = bench.wait_lines([node], jobs // 3, timeout=600)
        sm, cpum = bench.stats.snapshot(), node.cpu()
        done_at, rest = bench.wait_lines([node], jobs - mid_count, timeout=600)
        ended = done_at if done_at is not None else time.monotonic()
        time.sleep(0.5)  # the last job's result and events land
        s2, cpu1 = bench.stats.snapshot(), node.cpu()
        rss = node.rss()
        counters = bench.sim.counters()["totals"]
        left = int(bench.redis.hlen(f"{bench.settings.key_prefix}:jobs")) if kind != "stock" else 0
        status = run_status(bench, env, count) if with_status and kind == "archiver" else None
    finally:
        bench.stop_nodes([node])
    elapsed = ended - began
    worker = s2 - p1
    producer = p1 - p0
    cpu = cpu1 - cpu0
    steady_jobs = max(1, jobs - mid_count)
    steady_cpu = cpu1 - cpum
    steady = s2 - sm
    figures: dict[str, Any] = {
        "key": key,
        "kind": kind,
        "configured_accounts": count,
        "accounts_with_jobs": with_jobs,
        "jobs": jobs,
        "complete": done_at is not None and mid_at is not None and mid_count + rest >= jobs,
        "node_start_s": round(start_s, 1),
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(jobs / elapsed, 1),
        "provider_calls": counters["calls"],
        "provider_429s": counters["rate_limited"],
        "unmatched_calls": counters["unmatched"],
        "jobs_left_in_store": left,
        "worker_cpu_ms_per_job": round(cpu.total * 1000 / jobs, 2),
        "worker_main_cpu_ms_per_job": round(cpu.main * 1000 / jobs, 2),
        "worker_pool_cpu_ms_per_job": round(cpu.pool * 1000 / jobs, 2),
        # From a third of the jobs on: no one-off costs.
        "steady": {
            "jobs": steady_jobs,
            "jobs_per_s": round(steady_jobs / (ended - mid_at), 1) if mid_at else None,
            "worker_cpu_ms_per_job": round(steady_cpu.total * 1000 / steady_jobs, 2),
            "worker_main_cpu_ms_per_job": round(steady_cpu.main * 1000 / steady_jobs, 2),
            "worker_pool_cpu_ms_per_job": round(steady_cpu.pool * 1000 / steady_jobs, 2),
            "redis_commands_per_job": round((steady.total) / steady_jobs, 2),
        },
        "worker_rss_mb": {k: round(v, 1) for k, v in rss.items() if v is not None},
        "redis_per_job_worker": worker.per(jobs),
        "redis_per_job_producer": producer.per(jobs),
        "redis_commands_per_job_total": round((worker.total + producer.total) / jobs, 2),
        "bytes_in_per_job_total": round((worker.net_in + producer.net_in) / jobs, 1),
        "idle": {
            "seconds": round(idle.seconds, 2),
            "commands_per_s": round(idle.total / idle.seconds, 2),
            "bytes_in_per_s": round(idle.net_in / idle.seconds, 1),
            "bytes_out_per_s": round(idle.net_out / idle.seconds, 1),
            "by_command_per_s": {
                k: round(v / idle.seconds, 2)
                for k, v in sorted(idle.commands.items(), key=lambda item: -item[1])
            },
            "worker_cpu_share": round(idle_cpu.total / idle.seconds, 4),
        },
    }
    if status is not None:
        figures["status"] = status
    return figures


def run_status(bench: Bench, env: dict[str, str], count: int) -> dict[str, Any]:
    """``chat-archiver status`` (text and --json) and ``--account`` against the idle node."""
    assert bench.stats is not None
    out: dict[str, Any] = {}
    full_env = {**os.environ, **env}
    for label, extra in (
        ("text", []),
        ("json", ["--json"]),
        ("account", ["--account", f"green-api:{account_id(count)}"]),
    ):
        before = bench.stats.snapshot()
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", "status", *extra],
            env=full_env,
            cwd=harness.ROOT,
            capture_output=True,
            timeout=300,
            check=False,
        )
        wall = time.monotonic() - began
        spent = bench.stats.snapshot() - before
        out[label] = {
            "wall_s": round(wall, 3),
            "stdout_bytes": len(done.stdout),
            "stdout_lines": done.stdout.count(b"\n"),
            "exit": done.returncode,
            "redis_commands": int(spent.total),
            "stderr": done.stderr.decode(errors="replace")[-300:] if done.returncode > 1 else "",
        }
    # What a Python start and these imports cost, apart: the floor of any CLI command.
    began = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", "import worker.cli"],
        env=full_env,
        cwd=harness.ROOT,
        capture_output=True,
        check=False,
    )
    out["import_floor_s"] = round(time.monotonic() - began, 3)
    return out


def scale(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    rounds = args.rounds or (1 if args.quick else 2)
    jobs = args.jobs or (1000 if args.quick else 3000)
    idle_seconds = args.idle_seconds or (5.0 if args.quick else 10.0)
    plan = _plan(args)
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in range(rounds):
        order = plan if r % 2 == 0 else plan[::-1]
        for kind, count, spread in order:
            progress(f"scale, round {r + 1}/{rounds}")
            figures = one_run(bench, kind, count, spread, jobs, idle_seconds, with_status=r == 0)
            runs.setdefault(figures["key"], []).append(figures)
    return {
        "jobs": jobs,
        "rounds": rounds,
        "concurrency": CONCURRENCY,
        "rate": RATE,
        "idle_seconds": idle_seconds,
        "runs": runs,
        "medians": _medians(runs),
    }


def _median(rows: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for row in rows:
        value: Any = row
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, int | float):
            values.append(float(value))
    return round(statistics.median(values), 3) if values else None


FIGURES = {
    "jobs_per_s": ("jobs_per_s",),
    "cpu_ms": ("worker_cpu_ms_per_job",),
    "main_cpu_ms": ("worker_main_cpu_ms_per_job",),
    "pool_cpu_ms": ("worker_pool_cpu_ms_per_job",),
    "commands": ("redis_per_job_worker", "commands"),
    "scripts": ("redis_per_job_worker", "scripts"),
    "producer_commands": ("redis_per_job_producer", "commands"),
    "bytes_in": ("redis_per_job_worker", "bytes_in"),
    "bytes_in_total": ("bytes_in_per_job_total",),
    "redis_cpu_ms": ("redis_per_job_worker", "redis_cpu_ms"),
    "idle_commands_per_s": ("idle", "commands_per_s"),
    "idle_bytes_in_per_s": ("idle", "bytes_in_per_s"),
    "idle_bytes_out_per_s": ("idle", "bytes_out_per_s"),
    "idle_cpu_share": ("idle", "worker_cpu_share"),
    "steady_jobs_per_s": ("steady", "jobs_per_s"),
    "steady_cpu_ms": ("steady", "worker_cpu_ms_per_job"),
    "steady_main_cpu_ms": ("steady", "worker_main_cpu_ms_per_job"),
    "steady_pool_cpu_ms": ("steady", "worker_pool_cpu_ms_per_job"),
    "steady_commands": ("steady", "redis_commands_per_job"),
}


def _medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    medians: dict[str, dict[str, Any]] = {}
    for key, rows in runs.items():
        medians[key] = {name: _median(rows, *path) for name, path in FIGURES.items()}
    base = medians.get("archiver-5", {})
    bare = medians.get("bare-events", {})
    for values in medians.values():
        values["jobs_ratio_to_5"] = ratio(values["jobs_per_s"], base.get("jobs_per_s"))
        values["cpu_ratio_to_5"] = ratio(values["cpu_ms"], base.get("cpu_ms"))
        values["commands_ratio_to_5"] = ratio(values["commands"], base.get("commands"))
        values["jobs_ratio_to_bare"] = ratio(values["jobs_per_s"], bare.get("jobs_per_s"))
        values["steady_cpu_ratio_to_5"] = ratio(values["steady_cpu_ms"], base.get("steady_cpu_ms"))
        values["steady_jobs_ratio_to_5"] = ratio(
            values["steady_jobs_per_s"], base.get("steady_jobs_per_s")
        )
    return medians


SECTIONS = {"scale": scale}


def targets(sections: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    s = sections.get("scale")
    if s is None:
        return []
    m = s["medians"]
    rows = []
    base = m.get("archiver-5")
    for key in ("archiver-1000", "archiver-5000", "archiver-1000-over5", "archiver-5000-over5"):
        v = m.get(key)
        if v is None or base is None:
            continue
        rows.append(
            target(
                f"{key}: jobs/s ≥ {TARGET_JOBS_RATIO}x 5 accounts",
                f"{v['jobs_per_s']:.0f} vs {base['jobs_per_s']:.0f}: {v['jobs_ratio_to_5']:.2f}x",
                v["jobs_ratio_to_5"] is not None and v["jobs_ratio_to_5"] >= TARGET_JOBS_RATIO,
            )
        )
        if key.startswith("archiver-5000"):
            rows.append(
                target(
                    f"{key}: worker CPU/job within {TARGET_COST_RATIO}x of 5 accounts",
                    f"{v['cpu_ms']:.2f} vs {base['cpu_ms']:.2f} ms: {v['cpu_ratio_to_5']:.2f}x",
                    v["cpu_ratio_to_5"] is not None and v["cpu_ratio_to_5"] <= TARGET_COST_RATIO,
                )
            )
            rows.append(
                target(
                    f"{key}: the same, steady state (the last two thirds of the jobs)",
                    f"{v['steady_cpu_ms']:.2f} vs {base['steady_cpu_ms']:.2f} ms: "
                    f"{v['steady_cpu_ratio_to_5']:.2f}x",
                    v["steady_cpu_ratio_to_5"] is not None
                    and v["steady_cpu_ratio_to_5"] <= TARGET_COST_RATIO,
                )
            )
            rows.append(
                target(
                    f"{key}: Redis commands/job within {TARGET_COST_RATIO}x of 5 accounts",
                    f"{v['commands']:.1f} vs {base['commands']:.1f}: "
                    f"{v['commands_ratio_to_5']:.2f}x",
                    v["commands_ratio_to_5"] is not None
                    and v["commands_ratio_to_5"] <= TARGET_COST_RATIO,
                )
            )
    idle = {k: m[k] for k in ("archiver-5", "archiver-1000", "archiver-5000") if k in m}
    if len(idle) > 1:
        cmds = [v["idle_commands_per_s"] for v in idle.values()]
        rates = [v["idle_bytes_in_per_s"] for v in idle.values()]
        # "The same": within 10% (or 1 command/s, 100 B/s: a housekeeping turn more or less).
        same = max(cmds) - min(cmds) <= max(1.0, 0.1 * min(cmds)) and max(rates) - min(
            rates
        ) <= max(100.0, 0.1 * min(rates))
        rows.append(
            target(
                "idle node → Redis: the same at 5, 1,000, 5,000 accounts",
                " / ".join(
                    f"{v['idle_commands_per_s']:.1f} cmd/s {v['idle_bytes_in_per_s'] / 1024:.2f}"
                    " KB/s"
                    for v in idle.values()
                ),
                same,
            )
        )
    if base is not None and base.get("jobs_ratio_to_bare") is not None:
        rows.append(
            target(
                f"5 accounts: jobs/s ≥ {TARGET_OVERHEAD}x a bare Celery task (same settings)",
                f"{base['jobs_per_s']:.0f} vs {m['bare-events']['jobs_per_s']:.0f}: "
                f"{base['jobs_ratio_to_bare']:.2f}x",
                base["jobs_ratio_to_bare"] >= TARGET_OVERHEAD,
            )
        )
    status = {
        key: rows_[0]["status"]
        for key, rows_ in s["runs"].items()
        if rows_ and "status" in rows_[0] and not key.endswith("over5")
    }
    if "archiver-5000" in status and "archiver-5" in status:
        big, small = status["archiver-5000"]["text"], status["archiver-5"]["text"]
        rows.append(
            target(
                "status at 5,000 accounts: short (output ≤ 2x of 5 accounts')",
                f"{big['stdout_bytes']} B vs {small['stdout_bytes']} B",
                big["stdout_bytes"] <= 2 * small["stdout_bytes"],
            )
        )
        rows.append(
            target(
                "status at 5,000 accounts: fast (wall ≤ 5 accounts' + 0.5 s)",
                f"{big['wall_s']:.2f} s vs {small['wall_s']:.2f} s",
                big["wall_s"] <= small["wall_s"] + 0.5,
            )
        )
    return rows


def print_sections(out: Console, sections: dict[str, dict[str, Any]]) -> None:
    s = sections.get("scale")
    if s is None:
        return
    m = s["medians"]
    table = Table(
        title=(
            f"scale: 1 node prefork -c {s['concurrency']}, {s['jobs']} jobs, every account "
            f"{s['rate']} (no effective limit); medians of {s['rounds']} round(s); per job "
            "unless said; Redis figures count commands inside Lua scripts; worker = main + pool"
        ),
        title_justify="left",
    )
    columns = (
        "run",
        "jobs/s",
        "vs 5 acc.",
        "vs bare",
        "worker CPU ms",
        "(main/pool)",
        "steady CPU ms",
        "steady jobs/s",
        "Redis cmds",
        "(scripts)",
        "producer cmds",
        "bytes in",
        "(+producer)",
        "Redis CPU ms",
        "idle cmd/s",
        "idle B/s in",
        "idle CPU",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for key, v in m.items():
        table.add_row(
            key,
            fmt(v["jobs_per_s"], ".0f"),
            fmt(v["jobs_ratio_to_5"], ".2f", "x") if key.startswith("archiver") else "",
            fmt(v["jobs_ratio_to_bare"], ".2f", "x"),
            fmt(v["cpu_ms"], ".2f"),
            f"{fmt(v['main_cpu_ms'], '.2f')}/{fmt(v['pool_cpu_ms'], '.2f')}",
            fmt(v["steady_cpu_ms"], ".2f"),
            fmt(v["steady_jobs_per_s"], ".0f"),
            fmt(v["commands"], ".1f"),
            fmt(v["scripts"], ".1f"),
            fmt(v["producer_commands"], ".1f"),
            fmt(v["bytes_in"], ".0f"),
            fmt(v["bytes_in_total"], ".0f"),
            fmt(v["redis_cpu_ms"], ".3f"),
            fmt(v["idle_commands_per_s"], ".1f"),
            fmt(v["idle_bytes_in_per_s"], ".0f"),
            fmt(v["idle_cpu_share"], ".1%"),
        )
    out.print(table)
    each = Table(
        title="scale: every run (jobs/s, worker CPU ms/job, Redis commands/job)",
        title_justify="left",
    )
    for column in ("run", "round", "jobs/s", "CPU ms", "cmds", "429s", "left", "node start s"):
        each.add_column(column, justify="right")
    for key, rows in s["runs"].items():
        for r, row in enumerate(rows, start=1):
            each.add_row(
                key,
                str(r),
                f"{row['jobs_per_s']:.0f}" + ("" if row["complete"] else " (incomplete)"),
                f"{row['worker_cpu_ms_per_job']:.2f}",
                fmt(row["redis_per_job_worker"].get("commands"), ".1f"),
                str(row["provider_429s"]),
                str(row["jobs_left_in_store"]),
                f"{row['node_start_s']:.1f}",
            )
    out.print(each)
    commands = Table(
        title="scale: Redis commands per job by name (worker side, first round)",
        title_justify="left",
    )
    commands.add_column("run")
    commands.add_column("commands per job")
    for key, rows in s["runs"].items():
        by = rows[0]["redis_per_job_worker"].get("by_command", {})
        commands.add_row(key, ", ".join(f"{k} {v:g}" for k, v in by.items()))
    out.print(commands)
    status = Table(title="status against the idle node (first round)", title_justify="left")
    for column in ("accounts", "command", "wall s", "bytes", "lines", "exit", "Redis cmds"):
        status.add_column(column, justify="right")
    for key, rows in s["runs"].items():
        st = rows[0].get("status")
        if not st:
            continue
        for label in ("text", "json", "account"):
            v = st[label]
            status.add_row(
                key.removeprefix("archiver-"),
                {"text": "status", "json": "status --json", "account": "status --account"}[label],
                f"{v['wall_s']:.2f}",
                str(v["stdout_bytes"]),
                str(v["stdout_lines"]),
                str(v["exit"]),
                str(v["redis_commands"]),
            )
    out.print(status)
    floors = [
        rows[0]["status"]["import_floor_s"]
        for rows in s["runs"].values()
        if rows and "status" in rows[0]
    ]
    if floors:
        out.print(
            f"(a Python start importing worker.cli alone takes {min(floors):.2f} s here; status "
            "also waits its 1 s ping timeout)",
            highlight=False,
        )


if __name__ == "__main__":
    harness.main(__doc__.splitlines()[0], [sys.modules[__name__]], __doc__)
