"""Bulk enqueue (``enqueue_many``, pipelined) against a loop of ``archive_chat.delay``.

    python -m benchmarks.bench_enqueue [--json] [--quick] [--keep-logs]

No worker runs: both paths publish to the intake queue of a private Redis. 20,000 jobs through
``enqueue_many`` and 2,000 through ``.delay()``, three rounds alternating, medians compared (one
round of either swings by 10% on a shared machine). Both publish once before the clock starts:
connecting and declaring the queue is not what is compared. Each path's Redis commands per job are
counted too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import harness
from benchmarks.harness import (
    PROVIDER,
    Bench,
    account_id,
    chat_id,
    progress,
    target,
)

BULK = 20_000
DELAY = 2_000
ROUNDS = 3
ACCOUNTS = 5
TARGET = 10.0


def enqueue(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    assert bench.redis is not None and bench.stats is not None
    from tasks.archive import archive_chat  # the default app: its broker is our private Redis

    app = archive_chat.app
    if app.conf.broker_url != harness.REDIS_URL:  # never publish to anybody else's Redis
        raise RuntimeError(f"the default app's broker is {app.conf.broker_url}")
    bulk_jobs = 4000 if args.quick else BULK
    delay_jobs = 500 if args.quick else DELAY
    bulk_rates: list[float] = []
    delay_rates: list[float] = []
    bulk_commands = delay_commands = 0.0
    queued: dict[str, int] = {}
    for round_ in range(1, ROUNDS + 1):
        bench.redis.flushall()
        producer = bench.producer()
        bench.enqueue(producer, [(1, chat_id(999_999))])
        archive_chat.delay(provider=PROVIDER, account=account_id(1), chat_id=chat_id(999_998))
        progress(f"enqueue, round {round_}/{ROUNDS}: enqueue_many of {bulk_jobs}")
        rows = [
            (n, chat_id(i)) for i in range(bulk_jobs // ACCOUNTS) for n in range(1, ACCOUNTS + 1)
        ]
        before = bench.stats.snapshot()
        started = time.perf_counter()
        ids = bench.enqueue(producer, rows)
        bulk_rates.append(len(ids) / (time.perf_counter() - started))
        bulk_commands = (bench.stats.snapshot() - before).total / len(ids)
        progress(f"enqueue, round {round_}/{ROUNDS}: {delay_jobs} x .delay(...)")
        before = bench.stats.snapshot()
        started = time.perf_counter()
        for i in range(delay_jobs):
            n = 1 + i % ACCOUNTS
            archive_chat.delay(provider=PROVIDER, account=account_id(n), chat_id=chat_id(10**6 + i))
        delay_rates.append(delay_jobs / (time.perf_counter() - started))
        delay_commands = (bench.stats.snapshot() - before).total / delay_jobs
        # Proof that both published where they say: the intake queue (2 warm-up jobs).
        queued = {"intake": int(bench.redis.llen(bench.settings.queue))}
    bulk, delay = statistics.median(bulk_rates), statistics.median(delay_rates)
    return {
        "rounds": ROUNDS,
        "bulk_jobs": bulk_jobs,
        "bulk_jobs_per_s_runs": [round(r, 1) for r in bulk_rates],
        "bulk_jobs_per_s": round(bulk, 1),
        "bulk_redis_commands_per_job": round(bulk_commands, 2),
        "delay_jobs": delay_jobs,
        "delay_jobs_per_s_runs": [round(r, 1) for r in delay_rates],
        "delay_jobs_per_s": round(delay, 1),
        "delay_redis_commands_per_job": round(delay_commands, 2),
        "ratio": round(bulk / delay, 2),
        "in_intake_queue_last_round": queued.get("intake"),
    }


SECTIONS = {"enqueue": enqueue}


def targets(sections: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    e = sections.get("enqueue")
    if e is None:
        return []
    return [
        target(
            f"bulk enqueue ≥ {TARGET:g}x a .delay() loop",
            f"{e['bulk_jobs_per_s']:.0f} vs {e['delay_jobs_per_s']:.0f} jobs/s: {e['ratio']:.1f}x",
            e["ratio"] >= TARGET,
        )
    ]


def print_sections(out: Console, sections: dict[str, dict[str, Any]]) -> None:
    e = sections.get("enqueue")
    if e is None:
        return
    table = Table(
        title=f"enqueue: jobs/s of publishing to the intake queue (no worker), {e['rounds']} "
        "rounds alternating, medians",
        title_justify="left",
    )
    for column in ("producer", "jobs", "jobs/s per round", "median jobs/s", "Redis cmds/job"):
        table.add_column(column, justify="right")
    table.add_row(
        "enqueue_many (pipelined)",
        str(e["bulk_jobs"]),
        ", ".join(f"{r:.0f}" for r in e["bulk_jobs_per_s_runs"]),
        f"{e['bulk_jobs_per_s']:.0f}",
        f"{e['bulk_redis_commands_per_job']:.2f}",
    )
    table.add_row(
        "archive_chat.delay(...) loop",
        str(e["delay_jobs"]),
        ", ".join(f"{r:.0f}" for r in e["delay_jobs_per_s_runs"]),
        f"{e['delay_jobs_per_s']:.0f}",
        f"{e['delay_redis_commands_per_job']:.2f}",
    )
    table.add_row("ratio", "", "", f"{e['ratio']:.1f}x", "", style="bold")
    out.print(table)


if __name__ == "__main__":
    harness.main(__doc__.splitlines()[0], [sys.modules[__name__]], __doc__)
