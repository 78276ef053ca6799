"""A worker node's start and memory at 5, 10,000 and 100,000 configured accounts.

    python -m benchmarks.bench_accounts [--rounds N] [--sizes 5,10000,100000] [--concurrency C]
                                           [--json] [--keep-logs]

Each run starts a real ``celery -A worker worker`` (prefork) on a private ``redis-server``
(flushed between runs; never the Redis on 6379) with an accounts file of N generated accounts,
half GREEN-API and half Wassenger, all sharing one ``token_env`` and a loopback ``api_url``. It
measures, from outside the node:

- start: seconds from the process's start to "ready." in its log, and to every account being
  published in the job store's accounts hash (HLEN equals N: the dispatcher can route their jobs);
  the quickest start over the rounds ("best": on a shared machine, the cost itself), and the
  main process's CPU seconds by then (from /proc: what the start costs, whatever the load);
- RSS of the main process and of the largest pool process, once both are there and the node has
  published (after a settle of a second), from /proc.

Then, at the largest size, the readers of the same file: one ``chat-archiver status`` (wall time,
exit code) and one scrape of ``chat-archiver metrics`` (the exporter reads per-account figures in
pipelines at each scrape: its time, bytes and series).

Rounds interleave the sizes (every other round backwards); figures are medians over rounds and
are shown as ratios to 5 accounts of the same run, with PASS/MISS against the targets of issue 20:
start in at most 3 s and RSS (main and pool) within 1.5x of 5 accounts, at 100,000 accounts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import redis

from worker.sandbox.cluster import environment
from worker.sandbox.local import (
    WORKER_READY,
    CeleryProcess,
    PrivateRedis,
    free_port,
    worker_process,
)

START_TARGET = 3.0  # seconds, at the largest size
RSS_TARGET = 1.5  # x the 5-account node, main and pool
TOKEN_ENV = "BENCH_ACCOUNTS_TOKEN"
# A made-up token of the GREEN-API shape (50 hex characters): the node never calls a provider.
TOKEN = "0123456789abcdef" * 3 + "ab"
API_URL = "http://127.0.0.1:9"  # loopback: allowed without allow_private; nothing is called
ACCOUNTS_KEY = "chat-archiver:accounts"
# Celery's own line, not the banner's queue name (archive.ready.<node>).
READY_LINE = WORKER_READY


def write_accounts(path: Path, count: int) -> None:
    """``count`` accounts, alternating providers, with generated ids."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            if i % 2 == 0:
                provider, account_id, rate = "green-api", str(7_100_000_000 + i), "10/s"
            else:
                provider, account_id, rate = "wassenger", f"{i:024x}", "5/s"
            out.write(
                f'[[accounts]]\nprovider = "{provider}"\nid = "{account_id}"\n'
                f'api_url = "{API_URL}"\ntoken_env = "{TOKEN_ENV}"\nrate_limit = "{rate}"\n\n'
            )


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (not its children)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as listing:
            return [int(p) for p in listing.read().split()]
    except FileNotFoundError:
        return []


def start_node(
    redis_url: str, accounts: Path, count: int, workdir: Path, concurrency: int, run: str
) -> dict[str, float]:
    """One node from process start to published; its start times and RSS."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    env = environment(redis_url, accounts, {TOKEN_ENV: TOKEN})
    node = worker_process(env, workdir / f"{run}.log", name=f"bench-{run}", concurrency=concurrency)
    started = time.monotonic()
    node.start()
    ready = published = None
    try:
        deadline = started + 300
        while ready is None or published is None:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"{run}: not ready and published after 300 s")
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"{run}: the node exited:\n{node.log()[-3000:]}")
            if ready is None and READY_LINE.search(node.log()):
                ready = now - started
            if published is None and client.hlen(ACCOUNTS_KEY) >= count:
                published = now - started
            time.sleep(0.01)
        cpu = cpu_s(node.pid)  # the main process's CPU to here: what start costs, whatever the load
        time.sleep(1.0)  # let the pool settle
        deadline = time.monotonic() + 30
        while len(children(node.pid)) < concurrency and time.monotonic() < deadline:
            time.sleep(0.05)
        pool = children(node.pid)
        return {
            "ready_s": ready,
            "published_s": published,
            "start_s": max(ready, published),
            "start_cpu_s": cpu,
            "rss_main_mib": rss_mib(node.pid),
            "rss_pool_mib": max(rss_mib(p) for p in pool),
        }
    finally:
        node.stop()
        client.close()


def readers(redis_url: str, accounts: Path, workdir: Path) -> dict[str, float]:
    """``chat-archiver status`` and one exporter scrape over the same accounts file."""
    env = environment(redis_url, accounts, {TOKEN_ENV: TOKEN})
    started = time.monotonic()
    status = subprocess.run(
        [sys.executable, "-m", "worker.cli", "status", "--json"],
        env=env,
        capture_output=True,
        timeout=600,
        check=False,
    )
    status_s = time.monotonic() - started
    port = free_port()
    exporter = CeleryProcess([], env, workdir / "metrics.log")
    exporter.command = [
        sys.executable, "-m", "worker.cli", "metrics", "--port", str(port)
    ]  # fmt: skip
    exporter.start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(url, timeout=600).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        scrape_s, body = 0.0, b""
        for _ in range(2):
            begun = time.monotonic()
            body = urllib.request.urlopen(url, timeout=600).read()
            scrape_s = time.monotonic() - begun
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        return {
            "status_s": status_s,
            "status_exit": float(status.returncode),
            "scrape_s": scrape_s,
            "scrape_mib": len(body) / 2**20,
            "scrape_series": float(series),
            "exporter_rss_mib": rss_mib(exporter.pid),
        }
    finally:
        exporter.signal(signal.SIGTERM)
        if exporter.process is not None:
            exporter.process.wait(30)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="5,10000,100000")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--no-readers", action="store_true", help="skip status and the scrape")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    # Nothing of this shell's ARCHIVER_* settings may point a node at another Redis.
    for name in [n for n in os.environ if n.startswith("ARCHIVER_")]:
        del os.environ[name]
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if sizes[0] != 5:
        sizes.insert(0, 5)  # the baseline every ratio is against
    workdir = Path(tempfile.mkdtemp(prefix="bench-accounts-"))
    files = {}
    for size in sizes:
        files[size] = workdir / f"accounts-{size}.toml"
        write_accounts(files[size], size)
    runs: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
    extra: dict[str, float] = {}
    with PrivateRedis() as server:
        for round_ in range(args.rounds):
            order = sizes if round_ % 2 == 0 else sizes[::-1]
            for size in order:
                figures = start_node(
                    server.url, files[size], size, workdir, args.concurrency, f"r{round_}-{size}"
                )
                runs[size].append(figures)
                print(f"round {round_ + 1} {size:>7} accounts: {figures}", file=sys.stderr)
        if not args.no_readers:
            # The largest node's accounts, published, as a running deployment has them.
            start_node(server.url, files[sizes[-1]], sizes[-1], workdir, 1, "readers")
            extra = readers(server.url, files[sizes[-1]], workdir)
    medians = {
        size: {name: statistics.median(r[name] for r in runs[size]) for name in runs[size][0]}
        for size in sizes
    }
    for size in sizes:  # the quickest start: the cost itself, when the machine is shared
        medians[size]["best_start_s"] = min(r["start_s"] for r in runs[size])
    base = medians[5]
    largest = medians[sizes[-1]]
    targets = {
        f"start at {sizes[-1]:,} accounts <= {START_TARGET:g} s": largest["start_s"]
        <= START_TARGET,
        f"main RSS at {sizes[-1]:,} <= {RSS_TARGET:g}x of 5": largest["rss_main_mib"]
        <= RSS_TARGET * base["rss_main_mib"],
        f"pool RSS at {sizes[-1]:,} <= {RSS_TARGET:g}x of 5": largest["rss_pool_mib"]
        <= RSS_TARGET * base["rss_pool_mib"],
    }
    if args.json:
        report = {"medians": medians, "readers": extra, "targets": targets}
        print(json.dumps(report, indent=2))
    else:
        print(f"\nnode start and memory, median of {args.rounds} rounds (x: against 5 accounts)")
        print(
            f"{'accounts':>9} {'ready s':>8} {'published s':>12} {'best s':>7} {'main CPU s':>11}"
            f" {'main RSS MiB':>16} {'pool RSS MiB':>16}"
        )
        for size in sizes:
            m = medians[size]
            print(
                f"{size:>9,} {m['ready_s']:>8.2f} {m['published_s']:>12.2f}"
                f" {m['best_start_s']:>7.2f} {m['start_cpu_s']:>11.2f}"
                f" {m['rss_main_mib']:>8.1f} {m['rss_main_mib'] / base['rss_main_mib']:>6.2f}x"
                f" {m['rss_pool_mib']:>8.1f} {m['rss_pool_mib'] / base['rss_pool_mib']:>6.2f}x"
            )
        if extra:
            print(
                f"\nat {sizes[-1]:,} accounts: chat-archiver status {extra['status_s']:.2f} s "
                f"(exit {extra['status_exit']:g}); one scrape {extra['scrape_s']:.2f} s, "
                f"{extra['scrape_mib']:.1f} MiB, {extra['scrape_series']:,.0f} series; "
                f"exporter RSS {extra['exporter_rss_mib']:.0f} MiB"
            )
        print()
        for name, ok in targets.items():
            print(f"{verdict(ok)}  {name}")
    if args.keep_logs:
        print(f"logs and files: {workdir}", file=sys.stderr)
    else:
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()


if __name__ == "__main__":
    main()
