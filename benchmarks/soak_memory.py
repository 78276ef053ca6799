"""Memory soak: one real node (``celery -A worker worker -P prefork -c 4``) fed at a steady rate,
each pool process's memory sampled from /proc, its growth judged against the target.

    python -m benchmarks.soak_memory                       # 15 minutes at 20 jobs/s
    python -m benchmarks.soak_memory --minutes 5 --tracemalloc

Everything is private and goes at the end: a ``redis-server`` on a free port, the provider
simulator in its own process (``chat-archiver simulate``), an accounts file of ``--accounts``
GREEN-API accounts at 10/s each, and the node (worker/sandbox/cluster.py). Jobs are spread over
the accounts, each for a chat never asked for before; one in ten of the chats is archived already
and one in fifty is missing, one in fifty has no incoming message (so the dead-letter path runs).

Every ``--interval`` seconds it reads VmRSS (/proc/<pid>/status) and USS (Private_* in
/proc/<pid>/smaps_rollup) of the node's main process and of each pool process. Growth is the last
sample less the first one after ``--warmup`` seconds (the pool's first jobs build clients,
connections and caches that are meant to stay); the slope is a least-squares fit over the samples
after the warm-up. Target (issue 18): under 5 MB of RSS growth per pool process over 15 minutes;
a shorter run is judged on its slope times 15 and says so.

``--heap`` starts the node as ``-A benchmarks.traced_app`` (the same app with a heap probe in every
pool process: see that module) and asks each pool process for a dump right after the warm-up and
at the end: pymalloc's arenas and bytes in used blocks before and after a full collection, what
that collection found unreachable (by type), and the object types whose count grew.
``--tracemalloc`` adds tracemalloc in the pool and prints the allocation sites that grew most
between the two dumps; tracing slows every allocation and keeps every traceback it has seen, so
its RSS figures are not the production ones. ``--memray`` records the node under memray
(native and Python stacks, pool processes included; ``pip install memray``, files kept with
``--keep``). ``--worker-arg`` passes an option to ``celery worker`` (``--include=MODULE``,
``--max-memory-per-child=KIB``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file, not with -m
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks import traced_app  # noqa: E402
from benchmarks.harness import start_simulator  # noqa: E402
from worker.producer import ArchiveProducer  # noqa: E402
from worker.sandbox.cluster import LocalCluster  # noqa: E402
from worker.sandbox.local import (  # noqa: E402
    WORKER_READY,
    CeleryProcess,
    PrivateRedis,
    worker_process,
)
from worker.sandbox.simulator import SimulatorClient  # noqa: E402
from worker.stores.metrics import MetricsRecorder  # noqa: E402

TARGET_MB = 5.0  # per pool process over TARGET_MINUTES (issue 18)
TARGET_MINUTES = 15.0
ACCOUNT_RATE = 10  # calls/s per account, in the accounts file and in the simulator
TOKEN_ENV = "SOAK_GREEN_TOKEN"
TOKEN = "soak-token-0123456789abcdef"
ARCHIVED_EVERY = 10  # one generated chat in ten is archived already
MISSING_EVERY = 50  # one job in fifty is for a chat the account does not have

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def progress(message: str) -> None:
    err.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}", highlight=False, soft_wrap=True)


# -- /proc -----------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.update(int(p) for p in (task / "children").read_text().split())
    return sorted(found)


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process: how much work it did."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> tuple[float, float | None] | None:
    """(RSS, USS) in MB, or None once the process is gone. USS is what the process alone holds
    (pages it shares with its parent since the fork are left out); None without smaps_rollup."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    rss = next(
        (int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")),
        None,
    )
    if rss is None:
        return None
    uss: float | None = None
    with contextlib.suppress(OSError):
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        uss = (
            sum(
                int(line.split()[1])
                for line in rollup.splitlines()
                if line.startswith(("Private_Clean:", "Private_Dirty:"))
            )
            / 1024
        )
    return rss, uss


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle, sum(fields[:8])


# -- figures ---------------------------------------------------------------------------------------


@dataclass
class Series:
    """One process's samples: (seconds since the soak began, RSS MB, USS MB or None)."""

    pid: int
    role: str  # "main" or "pool"
    samples: list[tuple[float, float, float | None]] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # CPU seconds at each sample

    def after(self, warmup: float) -> list[tuple[float, float, float | None]]:
        return [s for s in self.samples if s[0] >= warmup]


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return sum((t - mean_t) * (y - mean_y) for t, y in points) / spread * 60


def figures(series: Series, warmup: float, end: float) -> dict[str, Any] | None:
    """The growth figures of one process, or None without two samples after the warm-up; a
    process sampled last before ``end`` (the soak's last sample) had gone."""
    window = series.after(warmup)
    if len(window) < 2:
        return None
    (t0, rss0, uss0), (t1, rss1, uss1) = window[0], window[-1]
    minutes = (t1 - t0) / 60
    slope = slope_per_minute([(t, rss) for t, rss, _ in window])
    uss_slope = slope_per_minute([(t, uss) for t, _, uss in window if uss is not None])
    # A run that measured (nearly) the whole target span is judged on what it measured; a shorter
    # one on its slope over the target span.
    measured = minutes >= TARGET_MINUTES - 1.5
    judged = rss1 - rss0 if measured or slope is None else slope * TARGET_MINUTES
    return {
        "pid": series.pid,
        "role": series.role,
        "minutes": round(minutes, 2),
        "cpu_seconds": round(series.cpu[-1] - series.cpu[len(series.samples) - len(window)], 1),
        "left_early": series.samples[-1][0] < end - 1.0,
        "rss_first": round(rss0, 2),
        "rss_last": round(rss1, 2),
        "rss_growth": round(rss1 - rss0, 2),
        "rss_slope": None if slope is None else round(slope, 3),
        "uss_first": None if uss0 is None else round(uss0, 2),
        "uss_last": None if uss1 is None else round(uss1, 2),
        "uss_growth": None if uss0 is None or uss1 is None else round(uss1 - uss0, 2),
        "uss_slope": None if uss_slope is None else round(uss_slope, 3),
        "judged_growth": round(judged, 2),
        "projected": not measured,
        "pass": judged < TARGET_MB if series.role == "pool" else None,
    }


# -- the soak --------------------------------------------------------------------------------------


def account_id(n: int) -> str:
    return f"73{n:08d}"  # a 10-digit GREEN-API idInstance


def chat_id(index: int) -> str:
    return f"79{index:011d}@c.us"  # the simulator's generated person chats


@dataclass
class Options:
    minutes: float
    rate: float
    concurrency: int
    accounts: int
    interval: float
    warmup: float
    heap: bool  # the heap probe (benchmarks/traced_app.py), with or without tracemalloc
    tracemalloc: bool
    memray: bool
    frames: int
    top: int
    env: dict[str, str]
    worker_args: list[str]
    keep: Path | None
    json_path: Path | None


class Soak:
    def __init__(self, options: Options, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.redis = PrivateRedis()
        self.simulator: subprocess.Popen[str] | None = None
        self.cluster: LocalCluster | None = None
        self.node: CeleryProcess | None = None
        self.series: dict[int, Series] = {}
        self.dumps = workdir / "heap"
        self.chats_per_account = int(options.rate * options.minutes * 60 / options.accounts) + 200

    # -- set-up ---------------------------------------------------------------------------

    def start(self) -> None:
        self.redis.start()
        self.simulator, sim_url = start_simulator(self.workdir / "simulator.log")
        with SimulatorClient(sim_url, timeout=120) as sim:
            sim.load_scenario({"accounts": [self._sim_account(n) for n in self._accounts()]})
        accounts_file = self.workdir / "accounts.toml"
        accounts_file.write_text(
            "\n".join(
                f'[[accounts]]\nprovider = "green-api"\nid = "{account_id(n)}"\n'
                f'api_url = "{sim_url}"\ntoken_env = "{TOKEN_ENV}"\n'
                f'rate_limit = "{ACCOUNT_RATE}/s"\n'
                for n in self._accounts()
            )
        )
        env = {TOKEN_ENV: TOKEN, **self.options.env}
        self.cluster = LocalCluster(self.redis.url, accounts_file, self.workdir, env)
        node_env = dict(self.cluster.env)
        if self.options.heap:
            self.dumps.mkdir()
            node_env[traced_app.HEAP_DIR] = str(self.dumps)
            frames = self.options.frames if self.options.tracemalloc else 0
            node_env[traced_app.FRAMES] = str(frames)
        node = worker_process(
            node_env,
            self.workdir / "node.log",
            name="soak",
            concurrency=self.options.concurrency,
            extra=self.options.worker_args,
        )
        node.cwd = ROOT
        if self.options.heap:
            node.command[node.command.index("-A") + 1] = "benchmarks.traced_app"
        if self.options.memray:
            # Native and Python stacks of every allocation, in each forked pool process too.
            recorder = ["-m", "memray", "run", "--follow-fork", "--native", "-q", "-f"]
            node.command[1:1] = [*recorder, "-o", str(self.workdir / "memray" / "node.bin")]
            (self.workdir / "memray").mkdir()
        self.cluster.processes.append(node.start())
        self.node = node
        progress(f"node started: {' '.join(node.command[1:])}")
        node.wait_for_log(WORKER_READY, timeout=180)
        deadline = time.monotonic() + 60
        while len(children(node.pid)) < self.options.concurrency:
            if time.monotonic() > deadline:
                raise RuntimeError("the node's pool processes did not all start")
            time.sleep(0.2)

    def _accounts(self) -> range:
        return range(1, self.options.accounts + 1)

    def _sim_account(self, n: int) -> dict[str, Any]:
        return {
            "provider": "green-api",
            "id": account_id(n),
            "token": TOKEN,
            "rate_limits": {"archiveChat": ACCOUNT_RATE},
            "generate": {
                "count": self.chats_per_account,
                "group_ratio": 0.0,
                "channel_ratio": 0.0,
                "archived_ratio": 1 / ARCHIVED_EVERY,
                "no_incoming_ratio": 1 / MISSING_EVERY,
                "seed": n,
            },
        }

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
        if self.simulator is not None and self.simulator.poll() is None:
            self.simulator.terminate()
            try:
                self.simulator.wait(10)
            except subprocess.TimeoutExpired:
                self.simulator.kill()
        self.redis.stop()

    # -- the run --------------------------------------------------------------------------

    def row(self, serial: int) -> dict[str, str]:
        accounts = self.options.accounts
        account, index = serial % accounts + 1, serial // accounts
        if serial % MISSING_EVERY == MISSING_EVERY - 1:
            index += self.chats_per_account  # beyond the generated chats: chat_not_found
        return {"provider": "green-api", "account": account_id(account), "chat_id": chat_id(index)}

    def sample(self, at: float) -> None:
        assert self.node is not None
        main = self.node.pid
        for pid, role in [(main, "main"), *((p, "pool") for p in children(main))]:
            memory = memory_mb(pid)
            if memory is not None:
                series = self.series.setdefault(pid, Series(pid, role))
                series.samples.append((at, *memory))
                series.cpu.append(cpu_seconds(pid) or (series.cpu[-1] if series.cpu else 0.0))

    def signal_pool(self) -> list[int]:
        """Ask every probed pool process for a heap dump; the pids asked."""
        assert self.node is not None
        asked = []
        for pid in children(self.node.pid):
            if (self.dumps / f"{pid}.ready").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR2)
                    asked.append(pid)
        return asked

    def run(self) -> dict[str, Any]:
        assert self.cluster is not None
        options = self.options
        producer: ArchiveProducer = self.cluster.producer
        metrics = MetricsRecorder(self.cluster.redis, self.cluster.settings.key_prefix)
        duration = options.minutes * 60
        loads: list[float] = []
        busy0 = cpu_busy()
        started = time.monotonic()
        next_sample = 0.0
        sent = 0
        first_dump: list[int] = []
        while (now := time.monotonic() - started) < duration:
            due = int(now * options.rate) + 1
            if due > sent:
                rows = [self.row(serial) for serial in range(sent, due)]
                result = producer.enqueue_many(rows)
                if result.refused or result.duplicates:
                    raise RuntimeError(f"enqueue refused {result.refused or result.duplicates}")
                sent = due
            if now >= next_sample:
                self.sample(now)
                loads.append(os.getloadavg()[0])
                if options.heap and not first_dump and now >= options.warmup:
                    first_dump = self.signal_pool()
                    progress(f"heap: first dump asked of {len(first_dump)} processes")
                done = sum(metrics.outcomes().values())
                pools = [
                    s.samples[-1][1]
                    for s in self.series.values()
                    if s.role == "pool" and s.samples and s.samples[-1][0] == now
                ]
                progress(
                    f"{now / 60:5.1f} min: {sent} sent, {done} ended, pool RSS "
                    + " ".join(f"{rss:.1f}" for rss in pools)
                    + f" MB, load {loads[-1]:.2f}"
                )
                next_sample += options.interval
            time.sleep(max(0.0, min(0.1, (sent / options.rate) - (time.monotonic() - started))))
        end = time.monotonic() - started
        self.sample(end)
        second_dump = self.signal_pool() if options.heap else []
        busy1 = cpu_busy()
        done = sum(metrics.outcomes().values())
        return {
            "sent": sent,
            "ended": done,
            "seconds": round(end, 1),
            "load_1min_mean": round(sum(loads) / len(loads), 2) if loads else None,
            "load_1min_max": round(max(loads), 2) if loads else None,
            "machine_cpu_busy": round((busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 3),
            "cores": os.cpu_count(),
            "traced": sorted(set(first_dump) & set(second_dump)),
        }


# -- heap dumps ------------------------------------------------------------------------------------


def _wait_for(paths: Sequence[Path], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    time.sleep(1.0)  # the last file may still be being written
    return True


def heap_growth(dumps: Path, pids: Sequence[int], top: int) -> list[dict[str, Any]]:
    """Per probed process: pymalloc's figures and the collector's finds at both dumps, the object
    types whose count grew and, when traced, the allocation sites (innermost frame first) that
    grew most between the two."""
    found = []
    for pid in pids:
        heaps_at = [dumps / f"{pid}-{n}.heap.json" for n in (1, 2)]
        snapshots = [dumps / f"{pid}-{n}.tracemalloc" for n in (1, 2)]
        traced = snapshots[0].exists()
        if not _wait_for([*heaps_at, *(snapshots if traced else [])], timeout=120):
            found.append({"pid": pid, "error": "heap dumps not written"})
            continue
        heaps = [json.loads(p.read_text()) for p in heaps_at]
        counts = [heap["types"] for heap in heaps]
        grown = sorted(
            ((name, counts[1].get(name, 0) - counts[0].get(name, 0)) for name in counts[1]),
            key=lambda item: -item[1],
        )
        process: dict[str, Any] = {
            "pid": pid,
            "collected": [heap["collected"] for heap in heaps],
            "types": [(n, d) for n, d in grown[:top] if d > 0],
        }
        if traced:
            process.update(_traced_sites(snapshots[0], snapshots[1], top))
        found.append(process)
    return found


def _traced_sites(first: Path, second: Path, top: int) -> dict[str, Any]:
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before = tracemalloc.Snapshot.load(str(first)).filter_traces(ignore)
    after = tracemalloc.Snapshot.load(str(second)).filter_traces(ignore)
    sites = []
    for stat in after.compare_to(before, "traceback")[:top]:
        if stat.size_diff <= 0:
            break
        frames = [f"{f.filename}:{f.lineno}" for f in stat.traceback]
        sites.append(
            {
                "kib": round(stat.size_diff / 1024, 1),
                "blocks": stat.count_diff,
                "traceback": [_short(f) for f in reversed(frames)],  # innermost first
            }
        )
    lines = [
        {"kib": round(s.size_diff / 1024, 1), "blocks": s.count_diff, "at": _short(str(s))}
        for s in after.compare_to(before, "lineno")[:top]
        if s.size_diff > 0
    ]
    total = [sum(s.size for s in snap.statistics("filename")) for snap in (before, after)]
    return {"traced_kib": round((total[1] - total[0]) / 1024, 1), "sites": sites, "lines": lines}


def _short(text: str) -> str:
    for prefix in (str(ROOT) + "/", sys.prefix + "/lib/", sys.base_prefix + "/lib/"):
        text = text.replace(prefix, "")
    return text.replace("site-packages/", "")


# -- report ----------------------------------------------------------------------------------------


def report(rows: list[dict[str, Any]], run: dict[str, Any], options: Options) -> None:
    table = Table(
        "process",
        "CPU s",
        "pid",
        "RSS first",
        "RSS last",
        "growth",
        "MB/min",
        "USS growth",
        "USS MB/min",
        f"{TARGET_MINUTES:g}-min growth",
        f"< {TARGET_MB:g} MB",
        title=(
            f"Memory soak: {options.rate:g} jobs/s for {options.minutes:g} min, "
            f"-c {options.concurrency}, first sample at {options.warmup:g} s (MB)"
        ),
    )
    for row in rows:
        verdict = row["pass"]
        table.add_row(
            row["role"] + (" (gone)" if row["left_early"] else ""),
            f"{row['cpu_seconds']:.0f}",
            str(row["pid"]),
            f"{row['rss_first']:.1f}",
            f"{row['rss_last']:.1f}",
            f"{row['rss_growth']:+.2f}",
            "-" if row["rss_slope"] is None else f"{row['rss_slope']:+.3f}",
            "-" if row["uss_growth"] is None else f"{row['uss_growth']:+.2f}",
            "-" if row["uss_slope"] is None else f"{row['uss_slope']:+.3f}",
            f"{row['judged_growth']:+.2f}" + (" (slope)" if row["projected"] else ""),
            "" if verdict is None else ("[green]PASS[/green]" if verdict else "[red]MISS[/red]"),
        )
    console.print(table)
    behind = run["sent"] - run["ended"]
    console.print(
        f"{run['sent']} jobs sent, {run['ended']} ended ({behind} not yet) in {run['seconds']} s; "
        f"load average (1 min) mean {run['load_1min_mean']}, max {run['load_1min_max']} on "
        f"{run['cores']} cores; machine CPU busy {run['machine_cpu_busy']:.0%}",
        highlight=False,
    )
    pools = [r for r in rows if r["role"] == "pool"]
    ok = bool(pools) and all(r["pass"] for r in pools)
    console.print(
        f"Target: pool RSS growth under {TARGET_MB:g} MB per process over "
        f"{TARGET_MINUTES:g} min: " + ("[green]PASS[/green]" if ok else "[red]MISS[/red]")
    )


def report_heap(found: list[dict[str, Any]]) -> None:
    for process in found:
        if "error" in process:
            console.print(f"pool {process['pid']}: {process['error']}")
            continue
        console.print(f"\n[bold]pool {process['pid']}[/bold]", highlight=False)
        for n, collected in enumerate(process["collected"], start=1):
            before, after = collected["malloc_before"], collected["malloc_after"]
            console.print(
                f"  dump {n}: pymalloc {before.get('arenas')} arenas, "
                f"{before.get('allocated_blocks', 0) / 2**20:.2f} MiB in used blocks, "
                f"{before.get('available_blocks', 0) / 2**20:.2f} MiB in free blocks, "
                f"{before.get('empty_pools', 0) / 2**20:.2f} MiB in empty pools; after a full "
                f"collection {after.get('arenas')} arenas, "
                f"{after.get('allocated_blocks', 0) / 2**20:.2f} MiB used "
                f"({collected['unreachable']} unreachable objects; gen counts before "
                f"{collected['counts_before']}): "
                + ", ".join(f"{k} {v}" for k, v in list(collected["garbage"].items())[:10]),
                highlight=False,
            )
        console.print(
            "  gc-tracked objects that grew: "
            + ", ".join(f"{name} {diff:+d}" for name, diff in process["types"]),
            highlight=False,
        )
        if "sites" not in process:
            continue
        console.print(
            f"  traced memory {process['traced_kib']:+.1f} KiB between the snapshots; sites that "
            "grew most (innermost frame first):",
            highlight=False,
        )
        for site in process["sites"]:
            console.print(
                f"  {site['kib']:+9.1f} KiB {site['blocks']:+7d} blocks  "
                + "\n                                 <- ".join(site["traceback"][:6]),
                highlight=False,
            )
        console.print("  by line:", highlight=False)
        for line in process["lines"]:
            console.print(
                f"  {line['kib']:+9.1f} KiB {line['blocks']:+7d}  {line['at']}", highlight=False
            )


# -- main ------------------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="soak length (default 15)")
    parser.add_argument("--rate", type=float, default=20.0, help="jobs per second (default 20)")
    parser.add_argument("--concurrency", type=int, default=4, help="pool processes (default 4)")
    parser.add_argument("--accounts", type=int, default=10, help="accounts (default 10)")
    parser.add_argument(
        "--interval", type=float, default=15.0, help="seconds between samples (default 15)"
    )
    parser.add_argument(
        "--warmup", type=float, default=60.0, help="seconds before the first sample that counts"
    )
    parser.add_argument(
        "--heap",
        action="store_true",
        help="dump each pool process's heap figures after the warm-up and at the end",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="--heap, with tracemalloc in the pool: the allocation sites that grew",
    )
    parser.add_argument(
        "--memray",
        action="store_true",
        help="record the node under memray (pip install memray; keep the files with --keep)",
    )
    parser.add_argument("--frames", type=int, default=12, help="traceback depth when tracing")
    parser.add_argument("--top", type=int, default=15, help="sites and types to print")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable for the node (an ARCHIVER_* setting); repeatable",
    )
    parser.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an option for `celery worker`, e.g. --worker-arg=--max-memory-per-child=150000 "
        "or --worker-arg=--include=MODULE; repeatable",
    )
    parser.add_argument("--keep", type=Path, help="copy the node's log (and snapshots) here")
    parser.add_argument("--json", dest="json_path", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.minutes * 60 <= args.warmup + 2 * args.interval:
        parser.error("--minutes must leave at least two samples after --warmup")
    if args.rate <= 0 or args.concurrency < 1 or args.accounts < 1 or args.interval <= 0:
        parser.error("--rate, --concurrency, --accounts and --interval must be positive")
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--env {item!r}: expected NAME=VALUE")
        env[name] = value
    return Options(
        minutes=args.minutes,
        rate=args.rate,
        concurrency=args.concurrency,
        accounts=args.accounts,
        interval=args.interval,
        warmup=args.warmup,
        heap=args.heap or args.tracemalloc,
        tracemalloc=args.tracemalloc,
        memray=args.memray,
        frames=args.frames,
        top=args.top,
        env=env,
        worker_args=args.worker_arg,
        keep=args.keep,
        json_path=args.json_path,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    # Only what --env gives reaches the node: a developer's own ARCHIVER_* would change the run.
    for name in [n for n in os.environ if n.startswith("ARCHIVER_")]:
        del os.environ[name]
    workdir = Path(tempfile.mkdtemp(prefix="chat-archiver-soak-"))
    soak = Soak(options, workdir)
    try:
        soak.start()
        run = soak.run()
        rows = [
            row
            for series in sorted(soak.series.values(), key=lambda s: (s.role != "main", s.pid))
            if (row := figures(series, options.warmup, run["seconds"])) is not None
        ]
        heaps = heap_growth(soak.dumps, run["traced"], options.top) if options.heap else []
    finally:
        soak.close()
        if options.keep is not None:
            shutil.copytree(workdir, options.keep, dirs_exist_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
    report(rows, run, options)
    if heaps:
        report_heap(heaps)
    if options.json_path is not None:
        options.json_path.write_text(
            json.dumps(
                {
                    "command": sys.argv,
                    "run": run,
                    "processes": rows,
                    "heaps": heaps,
                    "samples": {s.pid: [s.role, s.samples] for s in soak.series.values()},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
