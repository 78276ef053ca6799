"""A provider's strict sliding one-second window: a cold burst, then steady load, on 3 and 6 nodes,
chat-archiver beside stock Celery's ``rate_limit``.

    python -m benchmarks.bench_window [--json] [--quick] [--only window]
                                             [--burst N] [--steady-seconds S] [--keep-logs]
                                             [--nodes K ...] [--archiver-only]

Five GREEN-API accounts at 10/s; the simulator answers 429 to any call that would make more than
10 accepted calls in the last second (sliding), per account. K = 3 and 6 nodes, prefork ``-c 2``
each, started fresh on a flushed Redis (every account cold: no limiter state, an empty window):

- burst: ``--burst`` (150) jobs per account arrive at once (one ``enqueue_many`` of 750 jobs;
  stock Celery: ``send_task`` inside kombu's ``Producer.batch``, both pipelined). The
  simulator's counters are read every 25 ms: 429s in the first 1.1 s after the last job was
  published, 429s in all, and when each account's 150th call was accepted, from the moment
  publishing began: utilisation including the start = 150 / (that time x 10/s);
- steady (the older "limit" figure): every account kept busy (enough jobs for 1.5x the time,
  published while the nodes are paused), 4 s warm-up, then a ``--steady-seconds`` (20)
  window: accepted and attempted calls/s per account against the limit, 429s, the most calls
  accepted in any one-second window.

chat-archiver spaces calls ARCHIVER_LIMITER_MARGIN (2.5%) wider than the limit: its ceiling is
97.56% of the allowed rate. Stock Celery: one task type per account with ``rate_limit='10/s'``
(per node, its most generous setup), no retry of a 429 (the job ends with it; chat-archiver runs
it again); it is given K times the steady jobs, since it drains K times faster.

``--nodes 6 --archiver-only`` runs only chat-archiver on 6 nodes (a quick check of the limiter);
every refused call prints the ages of the calls the simulator's window held when it came.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import harness
from benchmarks.harness import (
    METHOD,
    Bench,
    Node,
    account_id,
    chat_id,
    fmt,
    method_counts,
    progress,
    scenario_account,
    target,
)
from worker.stores.limiter import MICROS

LIMIT = 10
ACCOUNTS = 5
CONCURRENCY = 2
NODE_COUNTS = (3, 6)
FIRST = 1.1  # the first second of the burst, and a little more
POLL = 0.025
WARMUP = 4.0
TARGET_RATE = 0.97


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("bench_window")
    group.add_argument("--burst", type=int, default=None, help="jobs per account (150)")
    group.add_argument(
        "--steady-seconds", type=float, default=None, help="steady measured window (20)"
    )
    group.add_argument("--nodes", type=int, nargs="+", default=None, help="node counts (3 6)")
    group.add_argument("--archiver-only", action="store_true", help="leave stock Celery's runs out")


def counts(counters: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """(calls, 429s) per account number."""
    out = {}
    for n in range(1, ACCOUNTS + 1):
        c = method_counts(counters, n)
        out[n] = (int(c.get("calls", 0)), int(c.get("rate_limited", 0)))
    return out


def burst(bench: Bench, kind: str, nodes: list[Node], per_account: int) -> dict[str, Any]:
    """Every account cold; ``per_account`` jobs each, at once."""
    assert bench.sim is not None
    jobs = [(n, chat_id(i)) for i in range(per_account) for n in range(1, ACCOUNTS + 1)]
    stock = kind == "stock"
    series: list[tuple[float, dict[int, tuple[int, int]]]] = []
    bench.sim.reset_counters()
    began = time.monotonic()
    if stock:
        bench.enqueue_stock(bench.stock_producer(), jobs, bare=False)
    else:
        bench.enqueue(bench.producer(), jobs)
    enqueued = time.monotonic() - began
    # "The first second" is counted from the moment the last job was published (stock Celery's
    # producer takes longer to build its messages), and the time to finish from the first.
    first_at = began + enqueued + FIRST
    first: dict[int, tuple[int, int]] | None = None
    done_at: dict[int, float] = {}
    deadline = began + per_account / LIMIT * 3 + 30
    while time.monotonic() < deadline:
        now = time.monotonic()
        if first is None and now >= first_at:
            first = counts(bench.sim.counters())
            series.append((round(time.monotonic() - began, 3), first))
            continue
        current = counts(bench.sim.counters())
        t = time.monotonic() - began
        series.append((round(t, 3), current))
        for n, (calls, limited) in current.items():
            # chat-archiver: its 150th accepted call; stock: its 150th call (no retries).
            finished = calls >= per_account if stock else calls - limited >= per_account
            if finished and n not in done_at:
                done_at[n] = t
        if len(done_at) == ACCOUNTS and first is not None:
            break
        nxt = first_at if first is None else now + POLL
        time.sleep(max(0.0, min(now + POLL, nxt) - time.monotonic()))
    final = counts(bench.sim.counters())
    last = bench.sim.counters()
    peaks = {n: int(method_counts(last, n).get("peak_1s", 0)) for n in range(1, ACCOUNTS + 1)}
    first = first or {}
    per: dict[str, Any] = {}
    for n in range(1, ACCOUNTS + 1):
        calls, limited = final[n]
        accepted = calls - limited
        t_done = done_at.get(n)
        per[account_id(n)] = {
            "calls_first_1_1s": first.get(n, (0, 0))[0],
            "rate_limited_first_1_1s": first.get(n, (0, 0))[1],
            "calls": calls,
            "rate_limited": limited,
            "accepted": accepted,
            "peak_1s": peaks[n],
            "done_s": round(t_done, 3) if t_done is not None else None,
            # The account's accepted calls over the time the burst took it, start included.
            "utilisation": round(accepted / (t_done * LIMIT), 4) if t_done else None,
            "refusals_ms": method_counts(last, n).get("refusals_ms", []),
        }
    utilisations = [p["utilisation"] for p in per.values() if p["utilisation"] is not None]
    return {
        "jobs_per_account": per_account,
        "enqueue_s": round(enqueued, 3),
        "accounts": per,
        "rate_limited_first_1_1s": sum(p["rate_limited_first_1_1s"] for p in per.values()),
        "rate_limited": sum(p["rate_limited"] for p in per.values()),
        "min_utilisation": min(utilisations) if len(utilisations) == ACCOUNTS else None,
        "max_peak_1s": max(peaks.values()),
        "all_done": len(done_at) == ACCOUNTS,
        "series_every_s": POLL,
        "timeline": _timeline(series),
    }


def _timeline(series: list[tuple[float, dict[int, tuple[int, int]]]]) -> list[dict[str, Any]]:
    """Accepted calls and 429s summed over the accounts at each whole second of the burst."""
    out: list[dict[str, Any]] = []
    mark = 1.0
    for t, current in series:
        if t >= mark:
            out.append(
                {
                    "t": round(t, 2),
                    "accepted": sum(c - r for c, r in current.values()),
                    "rate_limited": sum(r for _, r in current.values()),
                }
            )
            mark = math.floor(t) + 1.0
    return out


def steady(
    bench: Bench, kind: str, nodes: list[Node], k: int, seconds: float, first_chat: int
) -> dict[str, Any]:
    """Every account kept busy; what the simulator accepted in the window."""
    assert bench.sim is not None
    stock = kind == "stock"
    per_account = math.ceil(LIMIT * (WARMUP + seconds) * 1.5 * (k if stock else 1))
    jobs = [
        (n, chat_id(i))
        for i in range(first_chat, first_chat + per_account)
        for n in range(1, ACCOUNTS + 1)
    ]
    for node in nodes:
        node.pause()
    if stock:
        bench.enqueue_stock(bench.stock_producer(), jobs, bare=False)
    else:
        bench.enqueue(bench.producer(), jobs)
    bench.sim.reset_counters()
    for node in nodes:
        node.resume()
    time.sleep(WARMUP)
    warm_counters = bench.sim.counters()
    warm = counts(warm_counters)
    before = time.monotonic()
    bench.sim.reset_counters()
    began = (before + time.monotonic()) / 2
    time.sleep(seconds)
    before = time.monotonic()
    counters = bench.sim.counters()
    ended = (before + time.monotonic()) / 2
    elapsed = ended - began
    per: dict[str, Any] = {}
    for n in range(1, ACCOUNTS + 1):
        c = method_counts(counters, n)
        calls, limited = int(c.get("calls", 0)), int(c.get("rate_limited", 0))
        per[account_id(n)] = {
            "attempted_per_s": round(calls / elapsed, 2),
            "accepted_per_s": round((calls - limited) / elapsed, 3),
            "ratio": round((calls - limited) / elapsed / LIMIT, 4),
            "rate_limited": limited,
            "peak_1s": int(c.get("peak_1s", 0)),
            "warmup_rate_limited": warm[n][1],
            "refusals_ms": c.get("refusals_ms", []),
            "warmup_refusals_ms": method_counts(warm_counters, n).get("refusals_ms", []),
        }
    return {
        "window_s": round(elapsed, 2),
        "jobs_per_account": per_account,
        "accounts": per,
        "min_ratio": min(p["ratio"] for p in per.values()),
        "rate_limited": sum(p["rate_limited"] for p in per.values()),
        "warmup_rate_limited": sum(p["warmup_rate_limited"] for p in per.values()),
        "max_peak_1s": max(p["peak_1s"] for p in per.values()),
        "attempted_per_s": round(sum(p["attempted_per_s"] for p in per.values()) / ACCOUNTS, 2),
    }


def limiter_totals(bench: Bench) -> dict[str, int]:
    assert bench.redis is not None
    totals: dict[str, int] = {}
    for n in range(1, ACCOUNTS + 1):
        key = (
            f"{bench.settings.key_prefix}:limiter:{harness.PROVIDER}:{account_id(n)}:{METHOD}:stats"
        )
        for name, value in bench.redis.hgetall(key).items():
            totals[str(name)] = totals.get(str(name), 0) + int(value)
    return totals


def window_run(bench: Bench, kind: str, k: int, per_account: int, seconds: float) -> dict[str, Any]:
    chats = per_account + math.ceil(LIMIT * (WARMUP + seconds) * 1.5 * k) + 10
    bench.fresh([scenario_account(n, LIMIT, chats) for n in range(1, ACCOUNTS + 1)])
    if kind == "stock":
        env = bench.stock_env(accounts=ACCOUNTS, rate=f"{LIMIT}/s")
    else:
        env = bench.archiver_env(bench.accounts_file(ACCOUNTS, f"{LIMIT}/s"))
    label = f"{kind}-k{k}"
    progress(f"{label}: starting {k} nodes x -c {CONCURRENCY}")
    nodes = bench.start_nodes(
        kind, k, CONCURRENCY, env, label, settle=ACCOUNTS if kind == "archiver" else None
    )
    try:
        progress(f"{label}: burst of {per_account} jobs on each of {ACCOUNTS} cold accounts")
        cold = burst(bench, kind, nodes, per_account)
        progress(f"{label}: steady, {WARMUP:g} s warm-up and a {seconds:g} s window")
        busy = steady(bench, kind, nodes, k, seconds, first_chat=per_account)
        limiter = limiter_totals(bench) if kind == "archiver" else {}
        done_per_node = [sum(1 for line in n.tail.lines() if "succeeded in" in line) for n in nodes]
    finally:
        bench.stop_nodes(nodes)
    figures: dict[str, Any] = {
        "system": kind,
        "nodes": k,
        "concurrency_per_node": CONCURRENCY,
        "burst": cold,
        "steady": busy,
        "jobs_done_per_node": done_per_node,
    }
    if limiter:
        figures["limiter"] = {
            "granted": limiter.get("granted", 0),
            "refused": limiter.get("deferred", 0),
            "provider_429s_seen": limiter.get("rate_limited", 0),
            # Calls sent later past their slot than the allowance: the account's later slots
            # moved back by the excess (worker/stores/limiter.py).
            "late_pushed": limiter.get("late", 0),
            "pushed_s": round(limiter.get("pushed_us", 0) / MICROS, 3),
            "mean_wait_from_dispatch_s": round(
                limiter.get("waited_us", 0) / limiter["granted"] / MICROS, 4
            )
            if limiter.get("granted")
            else None,
        }
    return figures


def window(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    per_account = args.burst or (60 if args.quick else 150)
    seconds = args.steady_seconds or (8.0 if args.quick else 20.0)
    counts_ = args.nodes or (NODE_COUNTS[:1] if args.quick else NODE_COUNTS)
    runs: dict[str, dict[str, Any]] = {}
    for kind in ("archiver",) if args.archiver_only else ("archiver", "stock"):
        for k in counts_:
            runs[f"{kind}-k{k}"] = window_run(bench, kind, k, per_account, seconds)
    return {"limit": LIMIT, "accounts": ACCOUNTS, "runs": runs}


SECTIONS = {"window": window}


def targets(sections: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    s = sections.get("window")
    if s is None:
        return []
    rows: list[dict[str, Any]] = []
    for run in s["runs"].values():
        if run["system"] != "archiver":
            continue
        b, st = run["burst"], run["steady"]
        k = run["nodes"]
        rows.append(
            target(
                f"K={k}: 0 provider 429s in the first {FIRST:g} s of a burst on cold accounts",
                str(b["rate_limited_first_1_1s"]),
                b["rate_limited_first_1_1s"] == 0,
            )
        )
        total = b["rate_limited"] + st["rate_limited"] + st["warmup_rate_limited"]
        rows.append(
            target(
                f"K={k}: 0 provider 429s in all (burst, warm-up, steady window)",
                f"{b['rate_limited']} + {st['warmup_rate_limited']} + {st['rate_limited']}",
                total == 0,
            )
        )
        rows.append(
            target(
                f"K={k}: burst utilisation, start included, ≥ {TARGET_RATE:.0%} (worst account)",
                fmt(b["min_utilisation"], ".1%"),
                b["min_utilisation"] is not None and b["min_utilisation"] >= TARGET_RATE,
            )
        )
        rows.append(
            target(
                f"K={k}: steady accepted rate ≥ {TARGET_RATE:.0%} of the limit (worst account)",
                f"{st['min_ratio']:.1%} (± {1 / (st['window_s'] * LIMIT):.1%} per call)",
                st["min_ratio"] >= TARGET_RATE,
            )
        )
    return rows


def print_sections(out: Console, sections: dict[str, dict[str, Any]]) -> None:
    s = sections.get("window")
    if s is None:
        return
    table = Table(
        title=(
            f"strict window: {s['accounts']} GREEN-API accounts at {s['limit']}/s, simulator "
            "429s above 10 calls in any sliding second; nodes prefork -c 2; burst: jobs for cold "
            "accounts all at once; steady: every account busy, 20 s after a 4 s warm-up"
        ),
        title_justify="left",
    )
    for column in (
        "system",
        "K",
        "burst 429s first 1.1 s",
        "burst 429s",
        "burst utilisation (worst)",
        "burst done s (worst)",
        "steady accepted (worst)",
        "steady attempted/s/acct",
        "steady 429s (+warm-up)",
        "peak 1 s",
        "jobs per node",
    ):
        table.add_column(column, justify="right")
    for run in s["runs"].values():
        b, st = run["burst"], run["steady"]
        done = [p["done_s"] for p in b["accounts"].values() if p["done_s"] is not None]
        table.add_row(
            "chat-archiver" if run["system"] == "archiver" else "stock rate_limit",
            str(run["nodes"]),
            str(b["rate_limited_first_1_1s"]),
            str(b["rate_limited"]),
            fmt(b["min_utilisation"], ".1%"),
            fmt(max(done) if done else None, ".2f"),
            f"{st['min_ratio']:.1%}",
            f"{st['attempted_per_s']:.1f}",
            f"{st['rate_limited']} (+{st['warmup_rate_limited']})",
            str(max(b["max_peak_1s"], st["max_peak_1s"])),
            ", ".join(str(n) for n in run["jobs_done_per_node"]),
        )
    out.print(table)
    detail = Table(title="strict window: burst per account", title_justify="left")
    for column in (
        "run",
        "account",
        "calls first 1.1 s",
        "429s first 1.1 s",
        "429s",
        "done s",
        "utilisation",
    ):
        detail.add_column(column, justify="right")
    for key, run in s["runs"].items():
        for account, p in run["burst"]["accounts"].items():
            detail.add_row(
                key,
                account,
                str(p["calls_first_1_1s"]),
                str(p["rate_limited_first_1_1s"]),
                str(p["rate_limited"]),
                fmt(p["done_s"], ".2f"),
                fmt(p["utilisation"], ".1%"),
            )
    out.print(detail)
    # chat-archiver's refused calls: the ages (ms) of the calls the simulator's window held
    # when each came (stock Celery's, by the hundred, are in --json only).
    for key, run in s["runs"].items():
        if run["system"] != "archiver":
            continue
        phases = (("burst", "burst", "refusals_ms"), ("steady", "warm-up", "warmup_refusals_ms"))
        phases += (("steady", "steady", "refusals_ms"),)
        for phase, label, field in phases:
            for account, p in run[phase]["accounts"].items():
                for ages in p.get(field, []):
                    out.print(
                        f"{key} {label} {account}: 429 with the window holding calls "
                        f"{', '.join(f'{a:g}' for a in ages)} ms old",
                        highlight=False,
                    )
    limiter = {k: r["limiter"] for k, r in s["runs"].items() if "limiter" in r}
    if limiter:
        out.print(
            "chat-archiver's limiter over each run (burst and steady): "
            + "; ".join(
                f"{k}: {v['granted']} granted, {v['refused']} refused, "
                f"{v['provider_429s_seen']} 429s seen, {v['late_pushed']} late calls pushed "
                f"the later slots back by {v['pushed_s']:g} s in all, mean wait from dispatch "
                f"{fmt(v['mean_wait_from_dispatch_s'], '.3f', ' s')}"
                for k, v in limiter.items()
            ),
            highlight=False,
        )


if __name__ == "__main__":
    harness.main(__doc__.splitlines()[0], [sys.modules[__name__]], __doc__)
