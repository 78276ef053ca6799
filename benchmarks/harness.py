"""What every benchmark script here shares: a private Redis, the simulator in its own process, real
worker nodes, and the instruments that read them.

Importing this module changes nothing. A script's ``main()`` first calls ``use_private_redis()``,
which points chat-archiver at a private ``redis-server`` on a free port (ARCHIVER_BROKER_URL and
ARCHIVER_REDIS_URL, with every other ARCHIVER_* variable dropped, and BENCH_BROKER_URL for the
stock Celery nodes of ``stock_app``), so nothing here ever talks to the Redis on 6379.
``main()`` below does it for the scripts built on it.

Instruments (all read from outside the worker, so nothing is changed in the code measured):
- ``Node``: a ``celery -A worker worker`` process; its CPU (utime + stime from /proc of the main
  process and its pool children, plus the children it reaped), its RSS per process, and a tail of
  its log that counts finished jobs as they are written;
- ``RedisStats``: ``INFO all`` of the private Redis: commands by name (those run inside Lua
  scripts included), bytes in and out, Redis's own CPU. The benchmarks issue no Redis command of
  their own inside a measured interval (their producers' commands are measured apart and taken
  off: ``ProducerCost``);
- the simulator's counters (calls, 429s, the most calls accepted in any one-second window).

Scripts build on ``main()``: ``--json``, ``--quick``, ``--only SECTION``, ``--keep-logs``; each
section returns a dict of figures, each script turns them into tables and targets (PASS/MISS,
measured, never asserted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import celery
import redis
from celery import Celery
from rich.console import Console
from rich.table import Table

from benchmarks import stock_app
from config import Settings
from worker.celery_app import create_app
from worker.producer import ArchiveProducer
from worker.sandbox.cluster import environment
from worker.sandbox.local import WORKER_READY, CeleryProcess, PrivateRedis, worker_process
from worker.sandbox.simulator import SimulatorClient
from worker.stores.keys import Keys

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_simulator(log_path: Path) -> tuple[subprocess.Popen[str], str]:
    """``chat-archiver simulate`` on a free port, in its own process and session (a Ctrl-C meant
    for us must not stop it before we have cleaned up); returned with its URL once it listens."""
    port = _free_port()
    progress(f"starting the simulator on port {port} (its own process)")
    log = log_path.open("ab")
    simulator = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "simulate", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    log.close()
    assert simulator.stdout is not None
    line = simulator.stdout.readline()
    if "listening on" not in line:
        raise RuntimeError(f"the simulator did not start: {line!r}")
    return simulator, f"http://127.0.0.1:{port}"


REDIS_PORT = _free_port()
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"


def use_private_redis() -> None:
    """Point this process, and every process it starts, at the private Redis: settings read in
    here (and by the nodes, which inherit this environment) name no other Redis, and no other
    ARCHIVER_* variable of the caller's shell changes what is measured."""
    for name in [n for n in os.environ if n.startswith("ARCHIVER_")]:
        del os.environ[name]
    os.environ["ARCHIVER_BROKER_URL"] = REDIS_URL
    os.environ["ARCHIVER_REDIS_URL"] = REDIS_URL
    os.environ["BENCH_BROKER_URL"] = REDIS_URL  # what benchmarks/stock_app.py reads


PROVIDER = "green-api"
METHOD = "archiveChat"
# One token for every benchmark account (the simulator checks it per account; nothing is secret).
TOKEN = "bench-token-0123456789abcdef"
TOKEN_ENV = "BENCH_GREEN_TOKEN"
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# What a benchmark's own INFO request adds to the bytes Redis reads (``*2 $4 INFO $3 all``).
INFO_REQUEST_BYTES = len(b"*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n")

err = Console(stderr=True)


def progress(message: str) -> None:
    err.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}", highlight=False)


def account_id(n: int) -> str:
    """Account n (from 1): a 10-digit GREEN-API idInstance."""
    return f"73{n:08d}"


def chat_id(index: int) -> str:
    # The simulator's generated chats: ``generate: {count: N}`` makes 79{i:011d}@c.us for i < N.
    return f"79{index:011d}@c.us"


# -- figures ---------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, digits)

    return {
        "n": len(values),
        "p50": rounded(percentile(values, 0.50)),
        "p95": rounded(percentile(values, 0.95)),
        "max": rounded(max(values)) if values else None,
    }


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits)


def fmt(value: Any, spec: str = "", suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{suffix}"


def target(label: str, figure: str, ok: bool | None) -> dict[str, Any]:
    """One row of a script's target table: ok None means "not measured in this run"."""
    return {"target": label, "figure": figure, "pass": ok}


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "[yellow]n/a[/yellow]"
    return "[green]PASS[/green]" if ok else "[red]MISS[/red]"


# -- processes: CPU and memory from /proc ----------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    # The command name may hold spaces and parentheses: split after the last ")".
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu(pid: int, reaped: bool = False) -> float:
    """CPU seconds (utime + stime; with ``reaped``, plus cutime + cstime of reaped children)."""
    fields = _stat_fields(pid)
    ticks = [int(f) for f in fields[11 : 15 if reaped else 13]]
    return sum(ticks) / CLK_TCK


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``."""
    found: list[int] = []
    tasks = Path(f"/proc/{pid}/task")
    try:
        for task in tasks.iterdir():
            text = (task / "children").read_text().split()
            found.extend(int(p) for p in text)
        return sorted(set(found))
    except OSError:
        pass
    for entry in Path("/proc").iterdir():  # no /proc/<pid>/task/*/children: scan
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7)) / CLK_TCK


@dataclass(frozen=True)
class CpuSample:
    main: float  # the worker's main process (with the pool children it reaped)
    pool: float  # its live pool children

    @property
    def total(self) -> float:
        return self.main + self.pool

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(self.main - other.main, self.pool - other.pool)


class LogTail:
    """Reads a growing log file from where it last stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._partial = b""

    def skip(self) -> None:
        """Forget everything written so far."""
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self._partial = b""

    def lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        data = self._partial + data
        *whole, self._partial = data.split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in whole]


# Celery's line for a task that returned (chat-archiver's "archived", "already archived" and
# "duplicate" endings, and the stock tasks): written once the job has ended.
SUCCEEDED = re.compile(r"Task (\S+)\[([0-9a-f-]+)\] succeeded in ([0-9.e-]+)s")
# chat-archiver's outcome line (tasks/archive/runner.py _log_outcome).
OUTCOME = re.compile(
    r"\] (\w+)(?: \((\w+)\))? (\S+):(\S+) \S+ job=(\S+) attempts=(\d+) duration=([0-9.]+)s"
)
# A run that went back to the job store (waiting for its account's turn, a countdown, a park).
RETRIED = re.compile(r"Task archive\.chat\[([0-9a-f-]+)\] retry: (.*)")


@dataclass
class Node:
    """One ``celery worker`` process (a node) and its instruments."""

    process: CeleryProcess
    name: str
    tail: LogTail = field(init=False)

    def __post_init__(self) -> None:
        self.tail = LogTail(self.process.log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def pool(self) -> list[int]:
        return children(self.pid)

    def cpu(self) -> CpuSample:
        pool = 0.0
        for pid in self.pool():
            with contextlib.suppress(OSError, IndexError, ValueError):
                pool += process_cpu(pid)
        return CpuSample(process_cpu(self.pid, reaped=True), pool)

    def rss(self) -> dict[str, float | None]:
        rows = {"main": rss_mb(self.pid)}
        for n, pid in enumerate(self.pool(), start=1):
            rows[f"pool{n}"] = rss_mb(pid)
        return rows

    def pause(self) -> None:
        """SIGSTOP to the node's process group (main and pool): it issues nothing meanwhile."""
        os.killpg(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)


# -- Redis -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisSnapshot:
    at: float
    commands: dict[str, int]
    net_in: int
    net_out: int
    cpu: float
    reads: int = 0  # read events: about one per request or pipeline sent (a round trip)

    def __sub__(self, other: RedisSnapshot) -> RedisDelta:
        names = set(self.commands) | set(other.commands)
        commands = {
            name: self.commands.get(name, 0) - other.commands.get(name, 0) for name in names
        }
        return RedisDelta(
            seconds=self.at - other.at,
            commands={k: float(v) for k, v in commands.items() if v},
            net_in=self.net_in - other.net_in - INFO_REQUEST_BYTES,
            net_out=self.net_out - other.net_out,
            cpu=self.cpu - other.cpu,
            reads=self.reads - other.reads - 1,  # the INFO that took this snapshot
        )


@dataclass
class RedisDelta:
    seconds: float
    commands: dict[str, float]
    net_in: float
    net_out: float
    cpu: float
    reads: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.commands.values())

    def scaled(self, factor: float) -> RedisDelta:
        return RedisDelta(
            self.seconds,
            {k: v * factor for k, v in self.commands.items()},
            self.net_in * factor,
            self.net_out * factor,
            self.cpu * factor,
            self.reads * factor,
        )

    def minus(self, other: RedisDelta, times: float = 1.0) -> RedisDelta:
        """This delta less ``times`` x another (a producer's known cost; Redis CPU is kept)."""
        names = set(self.commands) | set(other.commands)
        commands = {n: self.commands.get(n, 0) - other.commands.get(n, 0) * times for n in names}
        return RedisDelta(
            self.seconds,
            {k: v for k, v in commands.items() if abs(v) > 1e-9},
            self.net_in - other.net_in * times,
            self.net_out - other.net_out * times,
            self.cpu,
            self.reads - other.reads * times,
        )

    def per(self, count: float, top: int = 12) -> dict[str, Any]:
        """Figures per job (or per call, per second)."""
        if count <= 0:
            return {}
        ranked = sorted(self.commands.items(), key=lambda item: -item[1])
        scripts = sum(v for k, v in self.commands.items() if k in ("evalsha", "eval", "fcall"))
        return {
            "commands": round(self.total / count, 2),
            "round_trips": round(self.reads / count, 2),
            "scripts": round(scripts / count, 2),
            "bytes_in": round(self.net_in / count, 1),
            "bytes_out": round(self.net_out / count, 1),
            "redis_cpu_ms": round(self.cpu * 1000 / count, 3),
            "by_command": {k: round(v / count, 2) for k, v in ranked[:top] if round(v / count, 2)},
        }


class RedisStats:
    """``INFO all`` of our private Redis, one command per snapshot (left out of the counts)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def snapshot(self) -> RedisSnapshot:
        info = self.client.info("all")
        commands = {
            key.removeprefix("cmdstat_"): int(value["calls"])
            for key, value in info.items()
            if key.startswith("cmdstat_") and key != "cmdstat_info"
        }
        return RedisSnapshot(
            at=time.monotonic(),
            commands=commands,
            net_in=int(info["total_net_input_bytes"]),
            net_out=int(info["total_net_output_bytes"]),
            cpu=float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
            reads=int(info.get("total_reads_processed", 0)),
        )


# -- the simulator ---------------------------------------------------------------------------------


def scenario_account(
    n: int, limit: int | None, chats: int, seed: int | None = None
) -> dict[str, Any]:
    # Only ordinary person chats, not archived yet: every accepted call answers 200 "archived".
    return {
        "provider": PROVIDER,
        "id": account_id(n),
        "token": TOKEN,
        "rate_limits": {METHOD: limit},
        "generate": {
            "count": chats,
            "group_ratio": 0.0,
            "channel_ratio": 0.0,
            "archived_ratio": 0.0,
            "no_incoming_ratio": 0.0,
            "seed": seed if seed is not None else n,
        },
    }


def method_counts(counters: Mapping[str, Any], n: int) -> dict[str, Any]:
    return counters.get("accounts", {}).get(f"{PROVIDER}:{account_id(n)}", {}).get(METHOD, {})


def accepted_calls(counters: Mapping[str, Any], n: int) -> int:
    counts = method_counts(counters, n)
    return int(counts.get("calls", 0)) - int(counts.get("rate_limited", 0))


# -- the bench -------------------------------------------------------------------------------------


@dataclass
class ProducerCost:
    """What one ``enqueue_many`` call of one job costs Redis (measured on this Redis, no worker
    running): taken off the intervals in which a benchmark enqueues while it measures."""

    single: RedisDelta
    bulk_per_job: RedisDelta


class Bench:
    """The private Redis, the simulator and the worker nodes of one benchmark run."""

    def __init__(self, run_dir: Path, quick: bool = False, redis_hz: int | None = None) -> None:
        self.run_dir = run_dir
        self.quick = quick
        self.redis_hz = redis_hz
        self.redis_server = PrivateRedis(port=REDIS_PORT)
        self.redis: redis.Redis | None = None
        self.stats: RedisStats | None = None
        self.simulator: subprocess.Popen[str] | None = None
        self.sim: SimulatorClient | None = None
        self.sim_url = ""
        self.nodes: list[Node] = []
        self.apps: list[Celery] = []
        self.settings = Settings(broker_url=REDIS_URL, redis_url=REDIS_URL)
        self._producer_cost: ProducerCost | None = None
        self._serial = 0
        os.environ[TOKEN_ENV] = TOKEN

    # -- infrastructure ----------------------------------------------------------------------

    def start(self) -> None:
        progress(f"starting redis-server on port {REDIS_PORT}")
        self.redis_server.start()
        self.redis = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        if self.redis_hz:
            self.redis.config_set("hz", self.redis_hz)
        self.stats = RedisStats(self.redis)
        self.simulator, self.sim_url = start_simulator(self.run_dir / "simulator.log")
        self.sim = SimulatorClient(self.sim_url, timeout=120)

    def stop(self) -> None:
        self.stop_nodes(list(self.nodes))
        for app in self.apps:
            with contextlib.suppress(Exception):
                app.close()
        if self.sim is not None:
            self.sim.close()
        if self.simulator is not None and self.simulator.poll() is None:
            self.simulator.terminate()
            try:
                self.simulator.wait(10)
            except subprocess.TimeoutExpired:
                self.simulator.kill()
                self.simulator.wait(5)
        self.redis_server.stop()

    def live_pids(self) -> list[int]:
        """Our long-lived processes whose CPU is not in this process's counters."""
        pids = [self.simulator.pid] if self.simulator is not None else []
        if self.redis is not None:
            with contextlib.suppress(redis.RedisError):
                pids.append(int(self.redis.info("server")["process_id"]))
        for node in self.nodes:
            pids.append(node.pid)
            pids.extend(node.pool())
        return pids

    def fresh(self, accounts: Sequence[dict[str, Any]]) -> None:
        """A clean slate: our Redis flushed (it holds nobody else's data), the simulator's
        accounts replaced by these (chats not archived, rate windows empty), counters reset."""
        assert self.redis is not None and self.sim is not None
        self.redis.flushall()
        self.sim.delete_accounts()
        for start in range(0, len(accounts), 1000):
            self.sim.load_scenario({"accounts": list(accounts[start : start + 1000])})
        self.sim.reset_counters()

    def accounts_file(self, count: int, rate: str, name: str = "accounts") -> Path:
        """``count`` GREEN-API accounts at ``rate``, all on the simulator; about 130 bytes each,
        so 5,000 fit the loader's 1 MiB."""
        path = self.run_dir / f"{name}-{count}.toml"
        lines = []
        for n in range(1, count + 1):
            lines.append(
                f'[[accounts]]\nprovider = "{PROVIDER}"\nid = "{account_id(n)}"\n'
                f'api_url = "{self.sim_url}"\ntoken_env = "{TOKEN_ENV}"\n'
                f'rate_limit = "{rate}"\n'
            )
        path.write_text("\n".join(lines))
        return path

    # -- producers ---------------------------------------------------------------------------

    def app(self) -> Celery:
        # A new app after every flush: kombu remembers per connection which queues it declared,
        # and a flushed Redis has forgotten their bindings.
        app = create_app(self.settings)
        self.apps.append(app)
        return app

    def producer(self) -> ArchiveProducer:
        assert self.redis is not None
        return ArchiveProducer(self.app(), self.settings, self.redis)

    def stock_producer(self) -> Celery:
        # Publishing only (no result backend, whose per-task SUBSCRIBE would slow pre-loading).
        app = Celery("stock-producer", broker=REDIS_URL)
        app.conf.update(task_serializer="json", accept_content=["json"])
        self.apps.append(app)
        return app

    @staticmethod
    def enqueue(producer: ArchiveProducer, jobs: Iterable[tuple[int, str]]) -> list[str]:
        """(account number, chat id) pairs through ``enqueue_many``; the task ids."""
        rows = [{"provider": PROVIDER, "account": account_id(n), "chat_id": c} for n, c in jobs]
        result = producer.enqueue_many(rows)
        if result.refused or result.duplicates:
            raise RuntimeError(
                f"enqueue_many refused {result.refused[:3]}, duplicates {result.duplicates[:3]}"
            )
        return [task_id for _, task_id in result.enqueued]

    @staticmethod
    def enqueue_stock(app: Celery, jobs: Iterable[tuple[int, str]], bare: bool) -> int:
        count = 0
        # Pipelined like enqueue_many (kombu's Producer.batch): a burst lands at once.
        with app.producer_or_acquire() as producer, producer.batch(max_size=500):
            for n, chat in jobs:
                if bare:
                    name = stock_app.BARE_TASK
                    kwargs = {"account": account_id(n), "chat_id": chat}
                else:
                    name, kwargs = stock_app.archive_task_name(n), {"chat_id": chat}
                app.send_task(name, kwargs=kwargs, queue=stock_app.QUEUE, producer=producer)
                count += 1
        return count

    def producer_cost(self) -> ProducerCost:
        """What our producer costs Redis per enqueue call of one job and per job of a bulk
        call, measured on a flushed Redis with no worker running (then flushed again)."""
        if self._producer_cost is not None:
            return self._producer_cost
        assert self.redis is not None and self.stats is not None
        self.redis.flushall()
        producer = self.producer()
        self.enqueue(producer, [(1, chat_id(999_999))])  # connects and declares: not counted
        calls = 50
        before = self.stats.snapshot()
        for i in range(calls):
            self.enqueue(producer, [(1, chat_id(i))])
        single = self.stats.snapshot() - before
        before = self.stats.snapshot()
        self.enqueue(producer, [(2, chat_id(i)) for i in range(1000)])
        bulk = self.stats.snapshot() - before
        self.redis.flushall()
        self._producer_cost = ProducerCost(
            single=single.scaled(1 / calls), bulk_per_job=bulk.scaled(1 / 1000)
        )
        return self._producer_cost

    # -- worker nodes ------------------------------------------------------------------------

    def archiver_env(self, accounts_file: Path, **extra: str) -> dict[str, str]:
        """What an archiver node of this run starts with: the shared LocalCluster's environment
        (worker/sandbox/cluster.py) on our Redis, with the benchmark's token."""
        return environment(REDIS_URL, accounts_file, {TOKEN_ENV: TOKEN, **extra})

    def stock_env(
        self, accounts: int = 5, rate: str = "10/s", events: bool = False
    ) -> dict[str, str]:
        env = {
            "BENCH_EVENTS": "1" if events else "0",
            "BENCH_BROKER_URL": REDIS_URL,
            "BENCH_SIMULATOR_URL": self.sim_url,
            "BENCH_ACCOUNTS": ",".join(account_id(n) for n in range(1, accounts + 1)),
            "BENCH_RATE_LIMIT": rate,
        }
        env.update({f"BENCH_GREEN_TOKEN_{n}": TOKEN for n in range(1, accounts + 1)})
        return env

    def start_nodes(
        self,
        kind: str,
        count: int,
        concurrency: int,
        env: dict[str, str],
        label: str,
        settle: int | None = None,
    ) -> list[Node]:
        """``count`` nodes of ``kind`` ("archiver" or "stock"), started at once, each ready.
        ``settle``: for archiver nodes, wait until that many accounts are published for the
        dispatcher (a node publishes its accounts file as it starts), then one second more."""
        self._serial += 1
        nodes = []
        for i in range(1, count + 1):
            name = f"{kind}-w{i}"
            log = self.run_dir / f"{self._serial:02d}-{label}-{name}.log"
            stock = kind == "stock"
            process = worker_process(
                env,
                log,
                name=name,
                concurrency=concurrency,
                queues=stock_app.QUEUE if stock else None,
            )
            process.cwd = ROOT  # where `-A benchmarks.stock_app` is importable
            if stock:
                # Same flags (pool, concurrency, no gossip or mingle); only -A differs.
                process.command[process.command.index("-A") + 1] = "benchmarks.stock_app"
            nodes.append(Node(process, name))
        self.nodes.extend(nodes)
        for node in nodes:
            node.process.start()
        for node in nodes:
            # Six nodes starting at once on two cores take a while; none of this is measured.
            node.process.wait_for_log(WORKER_READY, timeout=180)
        if kind == "archiver" and settle is not None:
            assert self.redis is not None
            deadline = time.monotonic() + 120
            while int(self.redis.hlen(Keys(self.settings.key_prefix).accounts)) < settle:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the nodes did not publish {settle} accounts")
                time.sleep(0.1)
        time.sleep(1.0)
        for node in nodes:
            node.tail.skip()
        return nodes

    def stop_nodes(self, nodes: Sequence[Node], timeout: float = 20.0) -> None:
        """Warm shutdown of every node at once (SIGCONT first, in case one is paused); SIGKILL
        to the process group of any still there after ``timeout``, then to whatever is left in
        each group (pool children whose parent died)."""
        for node in nodes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                node.resume()
            node.process.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in nodes:
            process = node.process.process
            if process is None:
                continue
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        for node in nodes:
            if node in self.nodes:
                self.nodes.remove(node)

    def wait_lines(
        self,
        nodes: Sequence[Node],
        count: int,
        pattern: re.Pattern[str] = SUCCEEDED,
        timeout: float = 300.0,
        poll: float = 0.02,
        seen: list[str] | None = None,
    ) -> tuple[float | None, int]:
        """Tail the nodes' logs until ``count`` lines match: (the monotonic time the last one was
        seen, within ``poll``, or None on timeout; how many matched). Matching lines are
        appended to ``seen``."""
        found = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in nodes:
                for line in node.tail.lines():
                    if pattern.search(line):
                        found += 1
                        if seen is not None:
                            seen.append(line)
            if found >= count:
                return time.monotonic(), found
            time.sleep(poll)
        return None, found


def results_done_at(client: redis.Redis, task_ids: Sequence[str]) -> dict[str, float]:
    """Each finished job's ``date_done`` (unix seconds) from the result backend, in one round
    trip (read after a measured interval, never inside one)."""
    pipe = client.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.get(f"celery-task-meta-{task_id}")
    done: dict[str, float] = {}
    for task_id, raw in zip(task_ids, pipe.execute(), strict=True):
        if not raw:
            continue
        meta = json.loads(raw)
        if meta.get("status") not in ("SUCCESS", "FAILURE"):
            continue
        stamp = datetime.fromisoformat(meta["date_done"])
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        done[task_id] = stamp.timestamp()
    return done


# -- running scripts -------------------------------------------------------------------------------


Section = Callable[["Bench", argparse.Namespace], dict[str, Any]]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM ends us like Ctrl-C does, through the finally blocks that stop every process.
    raise KeyboardInterrupt


def machine_config(bench: Bench) -> dict[str, Any]:
    return {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "celery": celery.__version__,
        "redis_server": _redis_version(),
        "limiter_margin": bench.settings.limiter_margin,
        "limiter_max_wait_s": bench.settings.limiter_max_wait,
        "redis_hz": int(str(bench.redis.config_get("hz")["hz"])) if bench.redis else None,
    }


def _redis_version() -> str:
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=False
        ).stdout
        return out.split("v=")[1].split()[0]
    except (OSError, IndexError):
        return "?"


def run_sections(
    modules: Sequence[ModuleType], args: argparse.Namespace, run_dir: Path
) -> dict[str, Any]:
    """Run the chosen sections of each module, one after the other, on one bench."""
    started = time.monotonic()
    bench = Bench(run_dir, quick=args.quick, redis_hz=args.redis_hz)
    sections: dict[str, dict[str, Any]] = {}
    only = set(args.only or [])
    try:
        bench.start()
        config = machine_config(bench)
        for module in modules:
            for name, step in module.SECTIONS.items():
                if only and name not in only:
                    continue
                progress(f"[bold]section {name}[/bold]")
                before_busy, before_ours = machine_busy(), _our_cpu(bench)
                began = time.monotonic()
                figures = step(bench, args)
                wall = time.monotonic() - began
                other = (machine_busy() - before_busy) - (_our_cpu(bench) - before_ours)
                figures["seconds"] = round(wall, 1)
                # This machine is shared: the CPU others took meanwhile says how far to trust it.
                figures["other_processes_cpu_share"] = round(
                    max(0.0, other) / (wall * (os.cpu_count() or 1)), 3
                )
                sections[name] = figures
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        progress("stopping workers, the simulator and redis-server")
        bench.stop()
    targets: list[dict[str, Any]] = []
    for module in modules:
        targets += module.targets(sections)
    return {
        "config": config,
        "sections": sections,
        "targets": targets,
        "took_s": round(time.monotonic() - started, 1),
    }


def _our_cpu(bench: Bench) -> float:
    """CPU seconds of this process, its reaped children, and the live processes we started."""
    total = process_cpu(os.getpid(), reaped=True)
    for pid in bench.live_pids():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += process_cpu(pid)
    return total


def print_report(out: Console, modules: Sequence[ModuleType], report: dict[str, Any]) -> None:
    config = report["config"]
    out.print(f"[bold]$ {config['command']}[/bold]", highlight=False)
    out.print(
        f"{config['started']}, {config['cpus']} CPUs, Python {config['python']}, celery "
        f"{config['celery']}, redis-server {config['redis_server']} (private, port "
        f"{REDIS_PORT}), simulator in its own process; limiter margin "
        f"{config['limiter_margin']:.1%}, max wait {config['limiter_max_wait_s']:g} s; Redis hz "
        f"{config['redis_hz']}",
        highlight=False,
    )
    for module in modules:
        module.print_sections(out, report["sections"])
    shares = {
        name: s["other_processes_cpu_share"]
        for name, s in report["sections"].items()
        if "other_processes_cpu_share" in s
    }
    if shares:
        out.print(
            "CPU taken by processes this benchmark did not start, share of the machine: "
            + ", ".join(f"{name} {share:.0%}" for name, share in shares.items()),
            highlight=False,
        )
    table = Table(title="targets (measured, not asserted)", title_justify="left")
    for column in ("target", "figure", ""):
        table.add_column(column)
    for row in report["targets"]:
        table.add_row(row["target"], row["figure"], verdict(row["pass"]))
    out.print(table)
    out.print(f"took {report['took_s']:.0f} s", highlight=False)


def main(description: str, modules: Sequence[ModuleType], doc: str = "") -> None:
    parser = argparse.ArgumentParser(
        description=description,
        epilog=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quick", action="store_true", help="smaller, shorter runs")
    names = [name for module in modules for name in module.SECTIONS]
    parser.add_argument("--only", nargs="+", choices=names, help="run these sections only")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep worker and simulator logs, say where"
    )
    parser.add_argument(
        "--redis-hz",
        type=int,
        default=None,
        help="run the private Redis at this hz (default: Redis's own, 10); a diagnostic: "
        "an otherwise idle Redis ends a blocking command's timeout only at its next "
        "server tick, every 1/hz s",
    )
    for module in modules:
        adder = getattr(module, "add_arguments", None)
        if adder is not None:
            adder(parser)
    args = parser.parse_args()
    use_private_redis()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    keep = args.keep_logs
    try:
        report = run_sections(modules, args, run_dir)
    except KeyboardInterrupt:
        keep = True
        progress("interrupted; every process this benchmark started is stopped")
        sys.exit(130)
    except BaseException:
        keep = True  # the logs are what explains a failed run
        raise
    finally:
        if keep:
            progress(f"worker and simulator logs kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    else:
        # Piped into a file, rich would wrap at 80 columns; the tables need more.
        print_report(Console(width=None if sys.stdout.isatty() else 160), modules, report)
