"""A backlog of 20,000 jobs on one account at its limit, while other accounts get a trickle.

    python -m benchmarks.bench_backlog [--json] [--quick] [--only backlog fairness]
                                              [--backlog N] [--window S] [--keep-logs]

Five GREEN-API accounts at 10/s, each limit enforced by the simulator in a sliding second. One
node, prefork ``-c 4`` and ``-c 16``, each in two cases:

- backlog: the node paused, ``--backlog`` (20,000) jobs enqueued on account 1; the node resumes
  and routes them into the job store; after a 3 s warm-up, a ``--window`` (45 s) measured window
  of the backlog draining (the whole backlog would take 2,000 s: only its first minute or so is
  run, the measured part a window of it);
- no backlog: account 1 is fed 9.5 jobs/s, one at a time, so its jobs never wait for each other.

In both, accounts 2-5 get a trickle: one job every 0.5 s, in turn (each account one job every
2 s). Measured in the window: account 1's accepted calls/s against its limit; the trickle's
enqueue → done (the result backend's date_done; read after the window); each run's duration as
the worker logs it (admission, permit sleep, provider call, ending: an upper bound of the sleep a
slot spent for its permit); runs sent back to the job store ("retry" lines); the limiter's
permits granted, refused and the time waited for them (its stats: waited_us / granted, counted
from dispatch); the node's RSS (main and each pool process) every 5 s; Redis commands, bytes and
CPU and the node's CPU per provider call (the benchmark's own enqueue calls in the window are
measured apart and taken off).

``fairness`` (the older, smaller figure): 3 nodes x ``-c 2``, account 1 drains 3,000 jobs while
8 batches of 5 jobs arrive on idle account 2 every 2 s: enqueue → done per job and per batch.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import harness
from benchmarks.harness import (
    METHOD,
    OUTCOME,
    RETRIED,
    Bench,
    Node,
    account_id,
    chat_id,
    fmt,
    method_counts,
    progress,
    ratio,
    results_done_at,
    scenario_account,
    summary,
    target,
)
from worker.stores.limiter import MICROS

LIMIT = 10
ACCOUNTS = 5
BUSY = 1  # the backlogged account
WARMUP = 3.0
TRICKLE_EVERY = 0.5
FEED_RATE = 9.5  # account 1 without a backlog: just under its limiter's 9.71/s
RSS_EVERY = 5.0
CONCURRENCIES = (4, 16)
TARGET_RATE = 0.97
TARGET_P95 = 1.0
TARGET_SLEEP = 0.1
TARGET_COMMANDS = 1.2
TARGET_FAIRNESS_P95 = 1.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("bench_backlog")
    group.add_argument("--backlog", type=int, default=None, help="jobs on account 1 (20000)")
    group.add_argument("--window", type=float, default=None, help="measured seconds (45)")


@dataclass
class Sent:
    task_ids: list[str]
    account: int
    at: float  # wall clock, to compare with date_done


@dataclass
class Plan:
    """What a run enqueues during its window, as (seconds from the window's start, account,
    jobs) events."""

    events: list[tuple[float, int, int]] = field(default_factory=list)


def trickle_plan(window: float, feed: bool) -> Plan:
    plan = Plan()
    t, turn = 0.25, 0
    while t < window:
        plan.events.append((t, 2 + turn % (ACCOUNTS - 1), 1))
        turn += 1
        t += TRICKLE_EVERY
    if feed:
        # From the warm-up on (negative times), so account 1 is in its stride at the start.
        t = -WARMUP
        while t < window:
            plan.events.append((t, BUSY, 1))
            t += 1 / FEED_RATE
    plan.events.sort()
    return plan


def batches_plan(lead: float, batches: int, size: int, every: float) -> Plan:
    return Plan([(lead + b * every, 2, size) for b in range(batches)])


def limiter_stats(bench: Bench, n: int) -> dict[str, int]:
    assert bench.redis is not None
    key = f"{bench.settings.key_prefix}:limiter:{harness.PROVIDER}:{account_id(n)}:{METHOD}:stats"
    raw = bench.redis.hgetall(key)
    return {str(k): int(v) for k, v in raw.items()}


def sample_rss(nodes: list[Node], series: list[dict[str, Any]], began: float) -> None:
    row: dict[str, Any] = {"t": round(time.monotonic() - began, 1)}
    for node in nodes:
        for name, value in node.rss().items():
            if value is not None:
                row[f"{node.name}:{name}"] = round(value, 1)
    series.append(row)


def backlog_run(
    bench: Bench,
    *,
    label: str,
    nodes_count: int,
    concurrency: int,
    backlog: int,
    window: float,
    plan: Plan,
) -> dict[str, Any]:
    assert bench.redis is not None and bench.stats is not None and bench.sim is not None
    cost = bench.producer_cost()  # measured once per bench, on a flushed Redis: first
    busy_chats = max(backlog, math.ceil(FEED_RATE * (window + WARMUP)) + 10)
    others = sum(size for _, n, size in plan.events if n != BUSY) + 10
    bench.fresh(
        [
            scenario_account(n, LIMIT, busy_chats if n == BUSY else others)
            for n in range(1, ACCOUNTS + 1)
        ]
    )
    env = bench.archiver_env(bench.accounts_file(ACCOUNTS, f"{LIMIT}/s"))
    progress(f"{label}: starting {nodes_count} node(s) x -c {concurrency}")
    nodes = bench.start_nodes("archiver", nodes_count, concurrency, env, label, settle=ACCOUNTS)
    producer = bench.producer()
    rss: list[dict[str, Any]] = []
    started = time.monotonic()
    sample_rss(nodes, rss, started)
    sent: list[Sent] = []
    next_chat = dict.fromkeys(range(1, ACCOUNTS + 1), 0)

    def enqueue(n: int, size: int) -> None:
        first = next_chat[n]
        next_chat[n] += size
        at = time.time()
        ids = bench.enqueue(producer, [(n, chat_id(i)) for i in range(first, first + size)])
        sent.append(Sent(ids, n, at))

    try:
        if backlog:
            for node in nodes:
                node.pause()
            progress(f"{label}: enqueueing {backlog} jobs on account {BUSY}")
            enqueue(BUSY, backlog)
            for node in nodes:
                node.resume()
            deadline = time.monotonic() + 120
            while int(bench.redis.llen(bench.settings.queue)) > 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("the backlog was not routed within 120 s")
                time.sleep(0.2)
            progress(f"{label}: the backlog is in the job store; {WARMUP:g} s warm-up")
        events = list(plan.events)
        # Warm-up: what the plan sends before the window (a feed), then the window itself.
        window_start = time.monotonic() + WARMUP
        while events and events[0][0] < 0:
            offset, n, size = events.pop(0)
            time.sleep(max(0.0, window_start + offset - time.monotonic()))
            enqueue(n, size)
        time.sleep(max(0.0, window_start - time.monotonic()))
        progress(f"{label}: measuring for {window:g} s")
        bench.sim.reset_counters()
        stats_before = limiter_stats(bench, BUSY)
        for node in nodes:
            node.tail.skip()
        sent_before = len(sent)
        s0, c0 = bench.stats.snapshot(), [node.cpu() for node in nodes]
        began = time.monotonic()
        next_rss = began
        for offset, n, size in events:
            while True:
                now = time.monotonic()
                if now >= next_rss:
                    sample_rss(nodes, rss, started)
                    next_rss += RSS_EVERY
                due = began + offset
                if now >= due:
                    break
                time.sleep(min(due, next_rss) - now)
            enqueue(n, size)
        time.sleep(max(0.0, began + window - time.monotonic()))
        s1, c1 = bench.stats.snapshot(), [node.cpu() for node in nodes]
        ended = time.monotonic()
        counters = bench.sim.counters()
        sample_rss(nodes, rss, started)
        lines = [line for node in nodes for line in node.tail.lines()]
        stats_after = limiter_stats(bench, BUSY)
        # The slots the limiter reserved for account 1 in the last 10 s (its "recent" set):
        # their spacing shows whether its schedule slipped.
        recent_key = (
            f"{bench.settings.key_prefix}:limiter:{harness.PROVIDER}:{account_id(BUSY)}:"
            f"{METHOD}:recent"
        )
        slots = sorted(
            float(pair[1]) for pair in bench.redis.zrange(recent_key, 0, -1, withscores=True)
        )
        enqueue_calls = len(sent) - sent_before
        in_window = [s for s in sent[sent_before:] if s.account != BUSY]
        ids = [t for s in in_window for t in s.task_ids]
        deadline = time.monotonic() + 15
        done = results_done_at(bench.redis, ids)
        while len(done) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.25)
            done = results_done_at(bench.redis, ids)
        store = {
            "unacked": int(bench.redis.hlen("unacked")),
            "jobs_stored": int(bench.redis.hlen(f"{bench.settings.key_prefix}:jobs")),
        }
    finally:
        bench.stop_nodes(nodes)
    elapsed = ended - began
    redis_delta = (s1 - s0).minus(cost.single, enqueue_calls)
    cpu = sum((after - before).total for before, after in zip(c0, c1, strict=True))
    busy = method_counts(counters, BUSY)
    accepted = int(busy.get("calls", 0)) - int(busy.get("rate_limited", 0))
    total_calls = int(counters["totals"]["calls"])
    others_429 = sum(
        int(method_counts(counters, n).get("rate_limited", 0)) for n in range(2, ACCOUNTS + 1)
    )
    latencies = [done[t] - s.at for s in in_window for t in s.task_ids if t in done]
    batch_times = [
        max(done[t] - s.at for t in s.task_ids)
        for s in in_window
        if len(s.task_ids) > 1 and all(t in done for t in s.task_ids)
    ]
    durations: dict[str, list[float]] = {"busy": [], "others": []}
    for line in lines:
        match = OUTCOME.search(line)
        if match:
            which = "busy" if match.group(4) == account_id(BUSY) else "others"
            durations[which].append(float(match.group(7)))
    retried = [line for line in lines if RETRIED.search(line)]
    granted = stats_after.get("granted", 0) - stats_before.get("granted", 0)
    deferred = stats_after.get("deferred", 0) - stats_before.get("deferred", 0)
    waited = stats_after.get("waited_us", 0) - stats_before.get("waited_us", 0)
    gaps = [(b - a) / MICROS for a, b in itertools.pairwise(slots)]
    interval = (1 + bench.settings.limiter_margin) / LIMIT
    processes = sorted({k for row in rss for k in row if k != "t"})
    rss_growth = {
        p: round(rows[-1] - rows[0], 1)
        for p in processes
        if len(rows := [row[p] for row in rss if p in row]) > 1
    }
    return {
        "label": label,
        "nodes": nodes_count,
        "concurrency": concurrency,
        "backlog": backlog,
        "window_s": round(elapsed, 2),
        "busy_account": {
            "limit_per_s": LIMIT,
            "accepted_per_s": round(accepted / elapsed, 3),
            "ratio": round(accepted / elapsed / LIMIT, 4),
            "accepted": accepted,
            "rate_limited": int(busy.get("rate_limited", 0)),
            "peak_1s": int(busy.get("peak_1s", 0)),
            "limiter": {
                "granted": granted,
                "refused": deferred,
                "refused_per_granted": ratio(deferred, granted),
                "mean_wait_from_dispatch_s": round(waited / granted / MICROS, 4)
                if granted
                else None,
            },
        },
        "others": {
            "jobs": len(ids),
            "done": len(latencies),
            "rate_limited": others_429,
            "latency_s": summary(latencies),
            "batch_completion_s": summary(batch_times) if batch_times else None,
        },
        "run_duration_s": {
            "busy": summary(durations["busy"]),
            "others": summary(durations["others"]),
        },
        "busy_slot_gaps_s": {
            **summary(gaps, 4),
            "interval_s": round(interval, 4),
            # Gaps longer than 1.5 intervals: the schedule slipped (a permit came late and GCRA
            # restarted from "now"), and the time lost in them.
            "slipped": sum(1 for g in gaps if g > 1.5 * interval),
            "lost_s": round(sum(g - interval for g in gaps if g > 1.5 * interval), 3),
        },
        "runs_sent_back": len(retried),
        "sent_back_examples": [RETRIED.search(line).group(2) for line in retried[:3]],  # type: ignore[union-attr]
        "provider_calls": total_calls,
        "per_call": {
            **redis_delta.per(max(1, total_calls)),
            "worker_cpu_ms": round(cpu * 1000 / max(1, total_calls), 2),
        },
        "worker_cpu_cores": round(cpu / elapsed, 3),
        "enqueue_calls_taken_off": enqueue_calls,
        "rss_mb": rss,
        "rss_growth_mb": rss_growth,
        "after_window": store,
    }


def backlog(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    size = args.backlog or (5000 if args.quick else 20_000)
    window = args.window or (15.0 if args.quick else 45.0)
    concurrencies = CONCURRENCIES[:1] if args.quick else CONCURRENCIES
    runs: dict[str, dict[str, Any]] = {}
    for c in concurrencies:
        for case, jobs in (("backlog", size), ("none", 0)):
            key = f"c{c}-{case}"
            runs[key] = backlog_run(
                bench,
                label=key,
                nodes_count=1,
                concurrency=c,
                backlog=jobs,
                window=window,
                plan=trickle_plan(window, feed=not jobs),
            )
    for c in concurrencies:
        with_backlog, without = runs.get(f"c{c}-backlog"), runs.get(f"c{c}-none")
        if with_backlog and without:
            with_backlog["commands_per_call_vs_none"] = ratio(
                with_backlog["per_call"].get("commands"), without["per_call"].get("commands")
            )
            with_backlog["cpu_per_call_vs_none"] = ratio(
                with_backlog["per_call"]["worker_cpu_ms"], without["per_call"]["worker_cpu_ms"]
            )
    return {"backlog_jobs": size, "window_s": window, "limit": LIMIT, "runs": runs}


def fairness(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    batches = 4 if args.quick else 8
    run = backlog_run(
        bench,
        label="fairness",
        nodes_count=3,
        concurrency=2,
        backlog=3000,
        window=batches * 2.0 + 1.0,
        plan=batches_plan(0.5, batches, 5, 2.0),
    )
    return {"run": run}


SECTIONS = {"backlog": backlog, "fairness": fairness}


def targets(sections: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    s = sections.get("backlog")
    if s is not None:
        for key, run in s["runs"].items():
            if run["backlog"]:
                b = run["busy_account"]
                rows.append(
                    target(
                        f"{key}: backlogged account ≥ {TARGET_RATE:.0%} of its limit",
                        f"{b['accepted_per_s']:.2f}/s of {LIMIT}: {b['ratio']:.1%} "
                        f"(± {1 / (run['window_s'] * LIMIT):.1%} per call)",
                        b["ratio"] >= TARGET_RATE,
                    )
                )
            o = run["others"]
            p95 = o["latency_s"]["p95"]
            rows.append(
                target(
                    f"{key}: other accounts' p95 enqueue → done ≤ {TARGET_P95:g} s",
                    f"{fmt(p95, '.3f', ' s')} ({o['done']}/{o['jobs']} done)",
                    p95 is not None and p95 <= TARGET_P95 and o["done"] == o["jobs"],
                )
            )
            longest = max(
                (
                    v
                    for v in (
                        run["run_duration_s"]["busy"]["max"],
                        run["run_duration_s"]["others"]["max"],
                    )
                    if v is not None
                ),
                default=None,
            )
            rows.append(
                target(
                    f"{key}: no slot sleeps > ~{TARGET_SLEEP:g} s for a permit (longest run, "
                    "an upper bound)",
                    fmt(longest, ".3f", " s"),
                    longest is not None and longest <= TARGET_SLEEP + 0.05,
                )
            )
            if run["backlog"]:
                growth = max(run["rss_growth_mb"].values(), default=0.0)
                rows.append(
                    target(
                        f"{key}: worker RSS flat (every process grows < 5 MB in the window)",
                        f"largest growth {growth:+.1f} MB",
                        growth < 5.0,
                    )
                )
                vs = run.get("commands_per_call_vs_none")
                rows.append(
                    target(
                        f"{key}: Redis commands per call within {TARGET_COMMANDS}x of no backlog",
                        f"{fmt(run['per_call'].get('commands'), '.1f')} vs "
                        f"{fmt(s['runs'].get(key.replace('backlog', 'none'), {}).get('per_call', {}).get('commands'), '.1f')}"  # noqa: E501
                        f": {fmt(vs, '.2f', 'x')}",
                        vs is not None and vs <= TARGET_COMMANDS,
                    )
                )
    f = sections.get("fairness")
    if f is not None:
        run = f["run"]
        o = run["others"]
        for label, figure in (("jobs", o["latency_s"]), ("batches of 5", o["batch_completion_s"])):
            p95 = figure["p95"] if figure else None
            rows.append(
                target(
                    f"fairness: idle account's {label} under a 3,000-job backlog, p95 ≤ "
                    f"{TARGET_FAIRNESS_P95} s",
                    f"{fmt(p95, '.3f', ' s')} ({o['done']}/{o['jobs']} done)",
                    p95 is not None and p95 <= TARGET_FAIRNESS_P95 and o["done"] == o["jobs"],
                )
            )
    return rows


def print_sections(out: Console, sections: dict[str, dict[str, Any]]) -> None:
    s = sections.get("backlog")
    if s is not None:
        table = Table(
            title=(
                f"backlog: 1 node, {ACCOUNTS} accounts at {LIMIT}/s; account 1 with "
                f"{s['backlog_jobs']} jobs waiting (or fed {FEED_RATE}/s: 'none'), accounts "
                f"2-5 one job every {TRICKLE_EVERY:g} s in turn; {s['window_s']:g} s window"
            ),
            title_justify="left",
        )
        for column in (
            "run",
            "acct 1 /s",
            "of limit",
            "429s",
            "others p50/p95/max s",
            "longest run s (acct 1/others)",
            "sent back",
            "permits refused/granted",
            "mean wait s",
            "Redis cmds/call",
            "vs none",
            "bytes in/call",
            "CPU ms/call",
            "cores",
            "RSS growth MB",
        ):
            table.add_column(column, justify="right")
        for key, run in s["runs"].items():
            b, o = run["busy_account"], run["others"]
            lat = o["latency_s"]
            lim = b["limiter"]
            table.add_row(
                key,
                f"{b['accepted_per_s']:.2f}",
                f"{b['ratio']:.1%}",
                f"{b['rate_limited']}/{o['rate_limited']}",
                f"{fmt(lat['p50'], '.2f')}/{fmt(lat['p95'], '.2f')}/{fmt(lat['max'], '.2f')}",
                f"{fmt(run['run_duration_s']['busy']['max'], '.3f')}/"
                f"{fmt(run['run_duration_s']['others']['max'], '.3f')}",
                str(run["runs_sent_back"]),
                f"{lim['refused']}/{lim['granted']}",
                fmt(lim["mean_wait_from_dispatch_s"], ".3f"),
                fmt(run["per_call"].get("commands"), ".1f"),
                fmt(run.get("commands_per_call_vs_none"), ".2f", "x"),
                fmt(run["per_call"].get("bytes_in"), ".0f"),
                fmt(run["per_call"]["worker_cpu_ms"], ".2f"),
                f"{run['worker_cpu_cores']:.2f}",
                fmt(max(run["rss_growth_mb"].values(), default=None), "+.1f"),
            )
        out.print(table)
        rss = Table(
            title="backlog: RSS (MB) of each process, start → end of run", title_justify="left"
        )
        rss.add_column("run")
        rss.add_column("processes")
        for key, run in s["runs"].items():
            series = run["rss_mb"]
            names = [k for k in series[-1] if k != "t"]
            rss.add_row(
                key,
                ", ".join(
                    f"{n.split(':')[1]} {series[0].get(n, 0):.0f}→{series[-1][n]:.0f}"
                    for n in names
                ),
            )
        out.print(rss)
        by = Table(title="backlog: Redis commands per provider call by name", title_justify="left")
        by.add_column("run")
        by.add_column("commands per call")
        for key, run in s["runs"].items():
            by.add_row(
                key,
                ", ".join(f"{k} {v:g}" for k, v in run["per_call"].get("by_command", {}).items()),
            )
        out.print(by)
    f = sections.get("fairness")
    if f is not None:
        run = f["run"]
        o = run["others"]
        table = Table(
            title=(
                f"fairness: {run['nodes']} nodes x -c {run['concurrency']}; account 1 drains "
                f"{run['backlog']} jobs ({run['busy_account']['accepted_per_s']:.2f}/s), batches "
                f"of 5 on idle account 2 every 2 s; {o['done']}/{o['jobs']} done; 429s "
                f"{run['busy_account']['rate_limited']}/{o['rate_limited']}"
            ),
            title_justify="left",
        )
        for column in ("enqueue → done", "p50", "p95", "max"):
            table.add_column(column, justify="right")
        for label, v in (("per job", o["latency_s"]), ("per batch", o["batch_completion_s"])):
            if v:
                table.add_row(
                    label, fmt(v["p50"], ".3f"), fmt(v["p95"], ".3f"), fmt(v["max"], ".3f")
                )
        out.print(table)


if __name__ == "__main__":
    harness.main(__doc__.splitlines()[0], [sys.modules[__name__]], __doc__)
