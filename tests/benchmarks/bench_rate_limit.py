"""Rate limit, fairness, overhead and enqueue of chat-archiver, beside stock Celery, in one run.

    python tests/benchmarks/bench_rate_limit.py [--json] [--quick] [--seconds N] [--keep-logs]

Everything is real and local: a private ``redis-server``, the provider simulator in its own
process (``python -m worker.cli simulate``) enforcing each account's limit in a sliding second,
and real ``celery -A worker worker`` processes (and ``celery -A tests.benchmarks.stock_app worker``
for the baselines), started with the same flags. Sections, one after the other, each on fresh
workers, a flushed Redis, a freshly loaded simulator and reset counters:

limit      M=5 GREEN-API accounts at 10/s, K=3 and K=6 worker nodes (prefork, 2 pool processes
           each), every account kept busy: accepted calls/s over allowed, 429s, peak in any
           one-second window; first chat-archiver, then stock Celery with ``rate_limit``.
fairness   K=3: account 1 drains a backlog of thousands; every 2 s a batch of 5 jobs arrives on
           account 2, idle otherwise: time from enqueue to completion, per job and per batch.
overhead   no limit anywhere; 1 node, prefork, concurrency 4; N pre-enqueued jobs: jobs/s of
           ``archive.chat`` vs ``stock.bare_archive`` making the same HTTP call, twice each,
           alternating, median reported.
enqueue    ``enqueue_many`` (pipelined) for 20,000 jobs vs a loop of ``archive_chat.delay``.

Reading the figures: "accepted/s" counts the calls the simulator let through in the window,
"attempted/s" every call that reached it; "peak 1 s" is the most accepted calls in any sliding
second, which the simulator never lets exceed the limit, so a call that arrived in a full second
shows as a 429 instead. chat-archiver aims ARCHIVER_LIMITER_MARGIN (3%) under the limit, so its
ceiling is 97.1% of the allowed rate.

Targets (from the issue) are printed with PASS/MISS beside each figure; nothing is asserted.
``--json`` prints one JSON object with every figure on stdout (progress goes to stderr).
``--keep-logs`` keeps every worker's and the simulator's log (kept anyway when a run fails).
The machine may be shared: each section reports the CPU that other processes took meanwhile.
Takes about 3.5 minutes on 2 cores (``--quick``: about 1.5).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The project's default Celery app (the one ``archive_chat.delay`` publishes through) is built
# from ARCHIVER_* when ``worker`` is first imported, and this machine may run a shared Redis on
# 6379: point every app at our private Redis before anything of the project is imported.
REDIS_PORT = _free_port()
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
os.environ["ARCHIVER_BROKER_URL"] = REDIS_URL
os.environ["ARCHIVER_REDIS_URL"] = REDIS_URL
os.environ["BENCH_BROKER_URL"] = REDIS_URL

import celery  # noqa: E402
import redis  # noqa: E402
from celery import Celery  # noqa: E402
from celery.result import AsyncResult  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from worker.routing import account_queue  # noqa: E402

from config import Settings, load_accounts  # noqa: E402
from tasks.archive import archive_chat  # noqa: E402
from tests.benchmarks import stock_app  # noqa: E402
from worker import app as default_app  # noqa: E402
from worker.celery_app import create_app  # noqa: E402
from worker.limiter import AccountLimiter  # noqa: E402
from worker.local import WORKER_READY, CeleryProcess, PrivateRedis, worker_process  # noqa: E402
from worker.producer import ArchiveProducer  # noqa: E402
from worker.simulator import SimulatorClient  # noqa: E402

PROVIDER = "green-api"
METHOD = "archiveChat"
ACCOUNTS = [f"71000000{n:02d}" for n in range(1, 6)]  # M = 5
LIMIT = 10  # archiveChat calls per second per account, GREEN-API's documented limit
TOKEN_ENV = "BENCH_GREEN_TOKEN_{}"
CHATS_PER_ACCOUNT = 6000
NODE_CONCURRENCY = 2  # pool processes per node in the limit and fairness sections
NODE_COUNTS = (3, 6)
WARMUP = 4.0
FAIRNESS_BACKLOG = 3000
FAIRNESS_LEAD = 3.0
FAIRNESS_BATCHES = 8
FAIRNESS_BATCH_SIZE = 5
FAIRNESS_EVERY = 2.0
OVERHEAD_CONCURRENCY = 4
ENQUEUE_BULK = 20_000
ENQUEUE_ROUNDS = 3
ENQUEUE_DELAY = 2_000

TARGET_RATIO = 0.95
TARGET_FAIRNESS_P95 = 1.5
TARGET_OVERHEAD = 0.8
TARGET_ENQUEUE = 10.0

err = Console(stderr=True)


def progress(message: str) -> None:
    err.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}", highlight=False)


def chat_id(index: int) -> str:
    # The simulator's generated chats: ``generate: {count: N}`` makes 79{i:011d}@c.us for i < N.
    return f"79{index:011d}@c.us"


def token(index: int) -> str:
    return f"bench-token-{index:02d}-0123456789"


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), so p95 of a few samples
    is not simply the maximum. None when there is nothing to rank (JSON has no NaN)."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def interleaved(
    per_account: int, accounts: Sequence[str], start: int = 0
) -> Iterator[tuple[int, str, str]]:
    """(account number from 1, account id, chat id), one account after another, so a FIFO queue
    (stock Celery's) holds every account's jobs mixed, as real traffic would."""
    for i in range(start, start + per_account):
        for n, account in enumerate(accounts, start=1):
            yield n, account, chat_id(i)


def summary(values: Sequence[float]) -> dict[str, float | None]:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "p50": rounded(percentile(values, 0.50)),
        "p95": rounded(percentile(values, 0.95)),
        "max": rounded(max(values)) if values else None,
    }


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _proc_seconds(fields: Sequence[str]) -> float:
    return sum(int(f) for f in fields) / os.sysconf("SC_CLK_TCK")


def cpu_sample(pids: Sequence[int]) -> tuple[float, float] | None:
    """(CPU seconds the whole machine has been busy, CPU seconds of our processes): ours are
    this process with every child it has reaped (the worker nodes, whose own counters include
    their reaped pool processes) plus the live ``pids`` (redis-server, the simulator).
    None where there is no /proc."""
    try:
        machine = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ours = _proc_seconds(own[11:15])  # utime stime cutime cstime
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ours += _proc_seconds(fields[11:13])
    except (OSError, IndexError, ValueError):
        return None
    # user nice system (idle iowait) irq softirq steal
    busy = _proc_seconds([machine[i] for i in (0, 1, 2, 5, 6, 7)])
    return busy, ours


@dataclass
class Section:
    """Figures of one section, for the tables and the JSON object."""

    name: str
    figures: dict[str, Any]


class Bench:
    """The private Redis, the simulator, the worker processes and the sections run on them."""

    def __init__(self, args: argparse.Namespace, run_dir: Path) -> None:
        self.args = args
        self.run_dir = run_dir
        self.window = float(args.seconds)
        self.redis_server = PrivateRedis(port=REDIS_PORT)
        self.redis: redis.Redis | None = None
        self.simulator: subprocess.Popen[str] | None = None
        self.sim: SimulatorClient | None = None
        self.sim_url = ""
        self.nodes: list[CeleryProcess] = []
        self.apps: list[Celery] = []
        self.accounts_file = run_dir / "accounts.toml"
        self.unlimited_accounts_file = run_dir / "accounts-unlimited.toml"
        self.settings = Settings(broker_url=REDIS_URL, redis_url=REDIS_URL)

    # -- infrastructure ---------------------------------------------------------------------------

    def start(self) -> None:
        progress(f"starting redis-server on port {REDIS_PORT}")
        self.redis_server.start()
        self.redis = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        # Our own producer and limiter read the accounts file too, secrets from the environment.
        for n in range(1, len(ACCOUNTS) + 1):
            os.environ[TOKEN_ENV.format(n)] = token(n)
        sim_port = _free_port()
        self.sim_url = f"http://127.0.0.1:{sim_port}"
        self.accounts_file.write_text(self.accounts_toml(f"{LIMIT}/s"))
        # "No limit" for the overhead section: far above anything two cores can do.
        self.unlimited_accounts_file.write_text(self.accounts_toml("100000/s"))
        scenario_file = self.run_dir / "scenario.json"
        scenario_file.write_text(json.dumps(self.scenario(LIMIT)))
        progress(f"starting the simulator on port {sim_port}")
        sim_log = (self.run_dir / "simulator.log").open("ab")
        # Its own session: a Ctrl-C meant for us must not stop it before we have cleaned up.
        self.simulator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker.cli",
                "simulate",
                "--port",
                str(sim_port),
                "--scenario",
                str(scenario_file),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=sim_log,
            text=True,
            start_new_session=True,
        )
        sim_log.close()
        assert self.simulator.stdout is not None
        line = self.simulator.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.sim = SimulatorClient(self.sim_url)

    def live_pids(self) -> list[int]:
        """Our long-lived processes whose CPU time is not in our own counters yet."""
        pids = [self.simulator.pid] if self.simulator is not None else []
        if self.redis is not None:
            pids.append(int(self.redis.info("server")["process_id"]))
        return pids

    def stop(self) -> None:
        self.stop_nodes(self.nodes)
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

    def accounts_toml(self, rate: str) -> str:
        return "".join(
            textwrap.dedent(
                f"""
                [[accounts]]
                provider = "{PROVIDER}"
                id = "{account}"
                api_url = "{self.sim_url}"
                token_env = "{TOKEN_ENV.format(n)}"
                rate_limit = "{rate}"
                """
            )
            for n, account in enumerate(ACCOUNTS, start=1)
        )

    @staticmethod
    def scenario(limit: int | None) -> dict[str, Any]:
        # Only ordinary person chats with an incoming message and not yet archived, so every call
        # the simulator accepts is a 200 and nothing is dead-lettered.
        generate = {
            "count": CHATS_PER_ACCOUNT,
            "group_ratio": 0.0,
            "channel_ratio": 0.0,
            "archived_ratio": 0.0,
            "no_incoming_ratio": 0.0,
        }
        return {
            "accounts": [
                {
                    "provider": PROVIDER,
                    "id": account,
                    "token": token(n),
                    "rate_limits": {METHOD: limit},
                    "generate": {**generate, "seed": n},
                }
                for n, account in enumerate(ACCOUNTS, start=1)
            ]
        }

    def fresh(self, limit: int | None) -> None:
        """A clean slate between sections: our own Redis flushed (it holds nobody else's data),
        every simulator account replaced (chats un-archived, its rate window emptied), counters
        reset."""
        assert self.redis is not None
        assert self.sim is not None
        self.redis.flushall()
        self.sim.load_scenario(self.scenario(limit))
        self.sim.reset_counters()

    def archiver_app(self) -> Celery:
        # A new app per section: kombu remembers per connection which queues it declared, and a
        # flushed Redis has forgotten their bindings (a publish would land in kombu's
        # undeliverable queue).
        app = create_app(self.settings)
        self.apps.append(app)
        return app

    def archiver_producer(self, app: Celery) -> ArchiveProducer:
        # With the accounts file, so each job goes straight to its account's queue, as a
        # producer configured like the workers would.
        return ArchiveProducer(app, self.settings, load_accounts(self.accounts_file))

    def stock_producer(self) -> Celery:
        # Publishing only, so no result backend: send_task then skips the per-task SUBSCRIBE that
        # the Redis backend does, which would make pre-loading thousands of jobs slow.
        app = Celery("stock-producer", broker=REDIS_URL)
        app.conf.update(task_serializer="json", accept_content=["json"])
        self.apps.append(app)
        return app

    # -- worker nodes -----------------------------------------------------------------------------

    def archiver_env(self, accounts_file: Path | None = None) -> dict[str, str]:
        env = {
            "ARCHIVER_BROKER_URL": REDIS_URL,
            "ARCHIVER_REDIS_URL": REDIS_URL,
            "ARCHIVER_ACCOUNTS_FILE": str(accounts_file or self.accounts_file),
        }
        env.update({TOKEN_ENV.format(n): token(n) for n in range(1, len(ACCOUNTS) + 1)})
        return env

    def stock_env(self, events: bool = False) -> dict[str, str]:
        env = {
            "BENCH_EVENTS": "1" if events else "0",
            "BENCH_BROKER_URL": REDIS_URL,
            "BENCH_SIMULATOR_URL": self.sim_url,
            "BENCH_ACCOUNTS": ",".join(ACCOUNTS),
            "BENCH_RATE_LIMIT": f"{LIMIT}/s",
        }
        env.update({TOKEN_ENV.format(n): token(n) for n in range(1, len(ACCOUNTS) + 1)})
        return env

    def node(
        self, section: str, kind: str, name: str, concurrency: int, env: dict[str, str]
    ) -> CeleryProcess:
        # One log per section and node: node names repeat from one section to the next.
        log = self.run_dir / f"{section}-{name}.log"
        stock = kind == "stock"
        process = worker_process(
            env,
            log,
            name=f"{kind}-{name}",
            concurrency=concurrency,
            queues=stock_app.QUEUE if stock else None,
        )
        # From the repository root, where `-A tests.benchmarks.stock_app` is importable.
        process.cwd = ROOT
        if stock:
            # worker_process builds `celery -A worker worker <flags>`: keep its flags (pool,
            # concurrency, no gossip or mingle) so both sides run identically, and only point
            # -A at the stock app.
            at = process.command.index("-A") + 1
            process.command[at] = "tests.benchmarks.stock_app"
        return process

    def start_nodes(
        self, section: str, kind: str, count: int, concurrency: int, env: dict[str, str]
    ) -> list[CeleryProcess]:
        nodes = [self.node(section, kind, f"w{i}", concurrency, env) for i in range(1, count + 1)]
        self.nodes.extend(nodes)
        for node in nodes:
            node.start()
        for node in nodes:
            # Six nodes starting at once on two cores take a while; none of this is measured.
            node.wait_for_log(WORKER_READY, timeout=120)
        return nodes

    def stop_nodes(self, nodes: Sequence[CeleryProcess], timeout: float = 15.0) -> None:
        """Warm shutdown of every node at once, SIGKILL to the process group of any that is still
        there after ``timeout``, then SIGKILL to whatever is left in each group (pool children
        whose parent died)."""
        for node in nodes:
            node.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in nodes:
            process = node.process
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

    # -- enqueueing -------------------------------------------------------------------------------

    def enqueue_archiver(
        self, producer: ArchiveProducer, jobs: Iterator[tuple[int, str, str]]
    ) -> list[str]:
        rows = [{"provider": PROVIDER, "account": a, "chat_id": c} for _, a, c in jobs]
        result = producer.enqueue_many(rows)
        if result.refused or result.duplicates:
            raise RuntimeError(
                f"enqueue_many refused {result.refused[:3]}, duplicates {result.duplicates[:3]}"
            )
        return [task_id for _, task_id in result.enqueued]

    @staticmethod
    def enqueue_stock(app: Celery, jobs: Iterator[tuple[int, str, str]], bare: bool) -> int:
        count = 0
        with app.producer_or_acquire() as producer:
            for n, account, chat in jobs:
                if bare:
                    name, kwargs = stock_app.BARE_TASK, {"account": account, "chat_id": chat}
                else:
                    name, kwargs = stock_app.archive_task_name(n), {"chat_id": chat}
                app.send_task(name, kwargs=kwargs, queue=stock_app.QUEUE, producer=producer)
                count += 1
        return count

    def queued(self, names: Sequence[str]) -> int:
        assert self.redis is not None
        return sum(int(self.redis.llen(name)) for name in names)

    def total_calls(self) -> int:
        assert self.sim is not None
        accounts = self.sim.counters()["accounts"]
        return sum(int(m.get(METHOD, {}).get("calls", 0)) for m in accounts.values())

    # -- sections ---------------------------------------------------------------------------------

    def limit(self, kind: str, k: int) -> Section:
        """K nodes, every account kept busy; measure what the simulator accepted in the window."""
        assert self.sim is not None
        assert self.redis is not None
        self.fresh(LIMIT)
        stock = kind == "stock"
        # Stock Celery enforces its rate per node, so K nodes drain K times faster: give it K
        # times the jobs or it would run dry before the window ends and look better than it is.
        per_account = math.ceil(LIMIT * (WARMUP + self.window) * 1.5 * (k if stock else 1))
        env = self.stock_env() if stock else self.archiver_env()
        name = f"limit-{kind}-k{k}"
        progress(f"limit, {kind}, K={k}: starting {k} nodes")
        nodes = self.start_nodes(name, kind, k, NODE_CONCURRENCY, env)
        try:
            jobs = interleaved(per_account, ACCOUNTS)
            if stock:
                self.enqueue_stock(self.stock_producer(), jobs, bare=False)
                queues = [stock_app.QUEUE]
            else:
                self.enqueue_archiver(self.archiver_producer(self.archiver_app()), jobs)
                queues = [account_queue(self.settings.queue, PROVIDER, a) for a in ACCOUNTS]
            progress(
                f"limit, {kind}, K={k}: {per_account} jobs per account enqueued; "
                f"{WARMUP:g} s warm-up, {self.window:g} s window"
            )
            time.sleep(WARMUP)
            # What the warm-up cost: worker start and the first calls of fresh pool processes.
            warmup = self.sim.counters()["accounts"]
            began = time.monotonic()
            self.sim.reset_counters()
            began = (began + time.monotonic()) / 2
            time.sleep(self.window)
            ended = time.monotonic()
            counters = self.sim.counters()["accounts"]
            ended = (ended + time.monotonic()) / 2
            left = self.queued(queues)
            limiter = self.limiter_states() if not stock else {}
        finally:
            self.stop_nodes(nodes)
        elapsed = ended - began
        per: dict[str, dict[str, Any]] = {}
        for n, account in enumerate(ACCOUNTS, start=1):
            method = counters.get(f"{PROVIDER}:{account}", {}).get(METHOD, {})
            warm = warmup.get(f"{PROVIDER}:{account}", {}).get(METHOD, {})
            calls = int(method.get("calls", 0))
            limited = int(method.get("rate_limited", 0))
            accepted = calls - limited
            per[account] = {
                "account": n,
                "allowed_per_s": LIMIT,
                "attempted_per_s": round(calls / elapsed, 2),
                "accepted_per_s": round(accepted / elapsed, 2),
                "ratio": round(accepted / elapsed / LIMIT, 4),
                "rate_limited": limited,
                "peak_1s": int(method.get("peak_1s", 0)),
                "by_status": method.get("by_status", {}),
                "warmup_rate_limited": int(warm.get("rate_limited", 0)),
                **({"limiter": limiter[account]} if limiter else {}),
            }
        ratios = [p["ratio"] for p in per.values()]
        figures = {
            "system": kind,
            "nodes": k,
            "pool": "prefork",
            "concurrency_per_node": NODE_CONCURRENCY,
            "window_s": round(elapsed, 3),
            "warmup_s": WARMUP,
            "jobs_per_account": per_account,
            "jobs_left_in_queues": left,
            "accounts": per,
            "total_accepted_per_s": round(sum(p["accepted_per_s"] for p in per.values()), 2),
            "total_allowed_per_s": LIMIT * len(ACCOUNTS),
            "min_ratio": min(ratios),
            "rate_limited": sum(p["rate_limited"] for p in per.values()),
            "max_peak_1s": max(p["peak_1s"] for p in per.values()),
        }
        figures["warmup_rate_limited"] = sum(p["warmup_rate_limited"] for p in per.values())
        # How the work spread over the nodes (whole section, warm-up included): stock Celery
        # fetches past its prefetch limit while a task waits for its rate limit, so one node
        # can hoard most of the queue while the others get little.
        figures["jobs_done_per_node"] = [node.log().count("succeeded in") for node in nodes]
        return Section(name, figures)

    def limiter_states(self) -> dict[str, dict[str, Any]]:
        """What the shared limiter did per account over the whole section (warm-up included)."""
        assert self.redis is not None
        limiter = AccountLimiter(self.redis, self.settings.key_prefix, self.settings.limiter_margin)
        registry = load_accounts(self.accounts_file)
        states = {}
        for account in registry:
            state = limiter.state(account, METHOD)
            states[account.id] = {
                "target_per_s": round(state.target_per_second, 3),
                "recent_per_s": round(state.recent_per_second, 3),
                "granted": state.granted,
                "deferred": state.deferred,
                "rate_limited": state.rate_limited,
                "mean_wait_s": round(state.waited_seconds / state.granted, 3)
                if state.granted
                else 0.0,
            }
        return states

    def fairness(self) -> Section:
        """A small batch on an idle account while another account drains a large backlog."""
        assert self.sim is not None
        self.fresh(LIMIT)
        busy, idle = ACCOUNTS[0], ACCOUNTS[1]
        k = NODE_COUNTS[0]
        progress(f"fairness: starting {k} nodes")
        nodes = self.start_nodes("fairness", "archiver", k, NODE_CONCURRENCY, self.archiver_env())
        app = self.archiver_app()
        producer = self.archiver_producer(app)
        batches: list[tuple[float, list[str]]] = []
        try:
            self.enqueue_archiver(producer, interleaved(FAIRNESS_BACKLOG, [busy]))
            self.sim.reset_counters()
            began = time.monotonic()
            progress(
                f"fairness: {FAIRNESS_BACKLOG} jobs on account 1; in {FAIRNESS_LEAD:g} s, "
                f"{FAIRNESS_BATCHES} batches of {FAIRNESS_BATCH_SIZE} on account 2, "
                f"every {FAIRNESS_EVERY:g} s"
            )
            for b in range(FAIRNESS_BATCHES):
                time.sleep(max(0.0, began + FAIRNESS_LEAD + b * FAIRNESS_EVERY - time.monotonic()))
                first = b * FAIRNESS_BATCH_SIZE
                jobs = ((2, idle, chat_id(i)) for i in range(first, first + FAIRNESS_BATCH_SIZE))
                # Wall-clock time, to compare with the date_done the worker writes.
                sent = time.time()
                batches.append((sent, self.enqueue_archiver(producer, jobs)))
            done = self.wait_done(app, [t for _, ids in batches for t in ids], timeout=60.0)
            elapsed = time.monotonic() - began
            counters = self.sim.counters()["accounts"]
        finally:
            self.stop_nodes(nodes)
        latencies: list[float] = []
        batch_times: list[float] = []
        for sent, ids in batches:
            finished = [done[t] - sent for t in ids if t in done]
            latencies.extend(finished)
            if len(finished) == len(ids):
                batch_times.append(max(finished))
        busy_counts = counters.get(f"{PROVIDER}:{busy}", {}).get(METHOD, {})
        idle_counts = counters.get(f"{PROVIDER}:{idle}", {}).get(METHOD, {})
        busy_accepted = int(busy_counts.get("calls", 0)) - int(busy_counts.get("rate_limited", 0))
        figures = {
            "system": "archiver",
            "nodes": k,
            "pool": "prefork",
            "concurrency_per_node": NODE_CONCURRENCY,
            "backlog_account_1": FAIRNESS_BACKLOG,
            "batches": FAIRNESS_BATCHES,
            "batch_size": FAIRNESS_BATCH_SIZE,
            "jobs": FAIRNESS_BATCHES * FAIRNESS_BATCH_SIZE,
            "jobs_done": len(latencies),
            "job_latency_s": summary(latencies),
            "batch_completion_s": {
                **summary(batch_times),
                "each": [round(t, 3) for t in batch_times],
            },
            "account_1_accepted_per_s": round(busy_accepted / elapsed, 2),
            "rate_limited_account_1": int(busy_counts.get("rate_limited", 0)),
            "rate_limited_account_2": int(idle_counts.get("rate_limited", 0)),
        }
        return Section("fairness", figures)

    @staticmethod
    def wait_done(app: Celery, task_ids: Sequence[str], timeout: float) -> dict[str, float]:
        """Completion time (unix seconds, the worker's ``date_done``) of each finished task."""
        pending = set(task_ids)
        done: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for task_id in list(pending):
                result = AsyncResult(task_id, app=app)
                if result.ready():
                    stamp = result.date_done
                    if isinstance(stamp, str):
                        stamp = datetime.fromisoformat(stamp)
                    if stamp is not None and stamp.tzinfo is None:
                        stamp = stamp.replace(tzinfo=UTC)
                    done[task_id] = stamp.timestamp() if stamp else time.time()
                    pending.discard(task_id)
            time.sleep(0.05)
        return done

    def overhead_run(self, kind: str, jobs: int, run: int) -> dict[str, Any]:
        """``jobs`` pre-enqueued, one node, concurrency 4, no limit: jobs/s from worker ready."""
        assert self.redis is not None
        self.fresh(None)
        per_account = math.ceil(jobs / len(ACCOUNTS))
        work = list(interleaved(per_account, ACCOUNTS))[:jobs]
        if kind in ("stock", "stock-events"):
            self.enqueue_stock(self.stock_producer(), iter(work), bare=True)
            env = self.stock_env(events=kind == "stock-events")
            kind = "stock"
        else:
            self.enqueue_archiver(self.archiver_producer(self.archiver_app()), iter(work))
            env = self.archiver_env(self.unlimited_accounts_file)
        node = self.node(f"overhead-{run}-{kind}", kind, "w1", OVERHEAD_CONCURRENCY, env)
        self.nodes.append(node)
        # Redis commands per job (those run inside Lua scripts included), to see where each
        # side's time goes; the worker's start is counted too, a few hundred commands.
        self.redis.config_resetstat()
        try:
            node.start()
            node.wait_for_log(WORKER_READY, timeout=120)
            began = time.monotonic()
            # Jobs that ran before we saw the "ready." line are left out of both the count and
            # the time, so the log's polling delay does not flatter either side.
            at_start = self.total_calls()
            deadline = began + 300
            calls = at_start
            while calls < jobs and time.monotonic() < deadline:
                time.sleep(0.05)
                calls = self.total_calls()
            elapsed = time.monotonic() - began
            stats = self.redis.info("commandstats")
        finally:
            self.stop_nodes([node])
        commands = {
            name.removeprefix("cmdstat_"): int(v["calls"])
            for name, v in sorted(stats.items(), key=lambda item: -int(item[1]["calls"]))
        }
        return {
            "jobs": jobs,
            "counted": calls - at_start,
            "seconds": round(elapsed, 3),
            "jobs_per_s": round((calls - at_start) / elapsed, 1) if elapsed > 0 else 0.0,
            "complete": calls >= jobs,
            "redis_commands_per_job": round(sum(commands.values()) / jobs, 1),
            "redis_commands": dict(list(commands.items())[:12]),
        }

    def overhead(self) -> Section:
        jobs = 800 if self.args.quick else 3000
        # The baseline that counts runs with chat-archiver's Celery settings (task and sent
        # events on, which Flower needs): only the task bodies differ. The bare task with
        # Celery's defaults (no events) is measured too, and shown beside it.
        kinds = ("archiver", "stock-events", "stock")
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        for r in range(2):
            # Alternating, so a slow phase of the machine does not land on one side only.
            for kind in kinds:
                progress(f"overhead, run {r + 1}/2: {kind}, {jobs} jobs, 1 node, -c 4")
                runs[kind].append(self.overhead_run(kind, jobs, r + 1))
        archiver = statistics.median(r["jobs_per_s"] for r in runs["archiver"])
        stock = statistics.median(r["jobs_per_s"] for r in runs["stock-events"])
        stock_defaults = statistics.median(r["jobs_per_s"] for r in runs["stock"])
        figures = {
            "jobs": jobs,
            "nodes": 1,
            "pool": "prefork",
            "concurrency": OVERHEAD_CONCURRENCY,
            "archiver_runs": runs["archiver"],
            "stock_runs": runs["stock-events"],
            "stock_defaults_runs": runs["stock"],
            "archiver_jobs_per_s": archiver,
            "stock_bare_jobs_per_s": stock,
            "stock_bare_defaults_jobs_per_s": stock_defaults,
            "ratio": round(archiver / stock, 3) if stock else math.nan,
            "ratio_to_defaults": round(archiver / stock_defaults, 3)
            if stock_defaults
            else math.nan,
        }
        return Section("overhead", figures)

    def enqueue(self) -> Section:
        assert self.redis is not None
        producer = self.archiver_producer(self.archiver_app())
        bulk_rates: list[float] = []
        delay_rates: list[float] = []
        # Three rounds, alternating, medians compared: one run of each swings by 10% here.
        for round_ in range(1, ENQUEUE_ROUNDS + 1):
            self.fresh(LIMIT)
            # Both paths publish once before the clock starts: connecting and declaring queues
            # is not what is compared.
            self.enqueue_archiver(
                producer, interleaved(1, ACCOUNTS[:1], start=CHATS_PER_ACCOUNT - 1)
            )
            archive_chat.delay(provider=PROVIDER, account=ACCOUNTS[0], chat_id=chat_id(0))
            progress(f"enqueue, round {round_}/{ENQUEUE_ROUNDS}: enqueue_many of {ENQUEUE_BULK}")
            per_account = ENQUEUE_BULK // len(ACCOUNTS)
            rows = [
                {"provider": PROVIDER, "account": a, "chat_id": c}
                for _, a, c in interleaved(per_account, ACCOUNTS)
            ]
            started = time.perf_counter()
            result = producer.enqueue_many(rows)
            bulk_rates.append(len(result.enqueued) / (time.perf_counter() - started))
            progress(f"enqueue, round {round_}/{ENQUEUE_ROUNDS}: {ENQUEUE_DELAY} x .delay(...)")
            per_account = ENQUEUE_DELAY // len(ACCOUNTS)
            started = time.perf_counter()
            for _, account, chat in interleaved(per_account, ACCOUNTS):
                archive_chat.delay(provider=PROVIDER, account=account, chat_id=chat)
            delay_rates.append(ENQUEUE_DELAY / (time.perf_counter() - started))
        account_queues = [account_queue(self.settings.queue, PROVIDER, a) for a in ACCOUNTS]
        bulk_rate, delay_rate = statistics.median(bulk_rates), statistics.median(delay_rates)
        figures = {
            "rounds": ENQUEUE_ROUNDS,
            "bulk_jobs": len(result.enqueued),
            "bulk_jobs_per_s_runs": [round(r, 1) for r in bulk_rates],
            "bulk_jobs_per_s": round(bulk_rate, 1),
            "delay_jobs": ENQUEUE_DELAY,
            "delay_jobs_per_s_runs": [round(r, 1) for r in delay_rates],
            "delay_jobs_per_s": round(delay_rate, 1),
            "ratio": round(bulk_rate / delay_rate, 2),
            # Proof that each path published what it said, and where (last round): the bulk
            # producer routes to the account queues, .delay to the intake queue.
            "in_account_queues": self.queued(account_queues),
            "in_intake_queue": self.queued([self.settings.queue]),
        }
        return Section("enqueue", figures)


# -- output ---------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]MISS[/red]"


def targets(sections: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for k in NODE_COUNTS:
        s = sections.get(f"limit-archiver-k{k}")
        if s is None:
            continue
        rows.append(
            {
                "target": f"K={k}: every account ≥ {TARGET_RATIO:.0%} of its allowed rate",
                "figure": f"min {s['min_ratio']:.2%}",
                "pass": s["min_ratio"] >= TARGET_RATIO,
            }
        )
        rows.append(
            {
                "target": f"K={k}: 0 provider 429s",
                "figure": str(s["rate_limited"]),
                "pass": s["rate_limited"] == 0,
            }
        )
        rows.append(
            {
                # peak_1s counts accepted calls, which the simulator caps at the limit; a call that
                # arrived in a full window is a 429, so both must hold.
                "target": f"K={k}: no one-second window over {LIMIT} on any account",
                "figure": f"peak {s['max_peak_1s']}, 429s {s['rate_limited']}",
                "pass": s["max_peak_1s"] <= LIMIT and s["rate_limited"] == 0,
            }
        )
    fair = sections.get("fairness")
    if fair is not None:
        # A job that never finished within the wait counts against the target, not for it.
        complete = fair["jobs_done"] == fair["jobs"]
        for label, key in (("jobs", "job_latency_s"), ("batches of 5", "batch_completion_s")):
            p95 = fair[key]["p95"]
            rows.append(
                {
                    "target": f"idle account's {label} under a backlog: p95 ≤ "
                    f"{TARGET_FAIRNESS_P95} s",
                    "figure": f"{seconds(p95)} ({fair['jobs_done']}/{fair['jobs']} done)",
                    "pass": complete and p95 is not None and p95 <= TARGET_FAIRNESS_P95,
                }
            )
    over = sections.get("overhead")
    if over is not None:
        rows.append(
            {
                "target": f"unlimited throughput ≥ {TARGET_OVERHEAD} x bare Celery task "
                "(same Celery settings)",
                "figure": f"{over['ratio']:.2f} x",
                "pass": over["ratio"] >= TARGET_OVERHEAD,
            }
        )
    enq = sections.get("enqueue")
    if enq is not None:
        rows.append(
            {
                "target": f"bulk enqueue ≥ {TARGET_ENQUEUE:g} x a .delay() loop",
                "figure": f"{enq['ratio']:.1f} x",
                "pass": enq["ratio"] >= TARGET_ENQUEUE,
            }
        )
    return rows


def print_report(out: Console, report: dict[str, Any]) -> None:
    config = report["config"]
    out.print(f"[bold]$ {config['command']}[/bold]", highlight=False)
    out.print(
        f"{config['started']}, {config['cpus']} CPUs, Python {config['python']}, "
        f"celery {config['celery']}, redis-server on port {REDIS_PORT}, simulator "
        f"{config['simulator']}",
        highlight=False,
    )
    out.print(
        f"M={len(ACCOUNTS)} GREEN-API accounts {ACCOUNTS[0]}..{ACCOUNTS[-1]}, archiveChat "
        f"{LIMIT}/s each (simulator: sliding one-second window, 429 above); limiter margin "
        f"{config['limiter_margin']:.0%} (aims at {LIMIT / (1 + config['limiter_margin']):.2f}/s)"
        f"; limit nodes: prefork, -c {NODE_CONCURRENCY}, --without-gossip --without-mingle; "
        f"warm-up {WARMUP:g} s, window {config['window_s']:g} s",
        highlight=False,
    )
    out.print(
        "stock Celery: one task per account with rate_limit="
        f"'{LIMIT}/s' (per node), one FIFO queue, acks_late, prefetch 1, JSON, no retry on "
        "429, no task events (the overhead section also runs it with chat-archiver's events); "
        "chat-archiver as shipped (task and sent events on, for Flower).",
        highlight=False,
    )
    sections = report["sections"]
    for name, s in sections.items():
        if not name.startswith("limit-"):
            continue
        title = (
            f"limit: {'chat-archiver' if s['system'] == 'archiver' else 'stock Celery'}, "
            f"K={s['nodes']} nodes x {s['concurrency_per_node']} ({s['pool']}), "
            f"{s['window_s']:.1f} s window, {s['jobs_per_account']} jobs/account, "
            f"{s['jobs_left_in_queues']} still queued at the end; 429s during the warm-up: "
            f"{s['warmup_rate_limited']}; jobs done per node: "
            f"{', '.join(str(n) for n in s['jobs_done_per_node'])}"
        )
        table = Table(title=title, title_justify="left")
        for column in (
            "account",
            "allowed/s",
            "attempted/s",
            "accepted/s",
            "ratio",
            "429s",
            "peak 1 s",
        ):
            table.add_column(column, justify="right")
        if s["system"] == "archiver":
            for column in ("limiter granted", "deferred", "mean wait"):
                table.add_column(column, justify="right")
        for account, p in s["accounts"].items():
            row = [
                f"{p['account']} ({account})",
                f"{p['allowed_per_s']}",
                f"{p['attempted_per_s']:.2f}",
                f"{p['accepted_per_s']:.2f}",
                f"{p['ratio']:.1%}",
                f"{p['rate_limited']}",
                f"{p['peak_1s']}",
            ]
            if "limiter" in p:
                lim = p["limiter"]
                row += [f"{lim['granted']}", f"{lim['deferred']}", f"{lim['mean_wait_s']:.3f} s"]
            table.add_row(*row)
        total = [
            "total",
            f"{s['total_allowed_per_s']}",
            f"{sum(p['attempted_per_s'] for p in s['accounts'].values()):.2f}",
            f"{s['total_accepted_per_s']:.2f}",
            f"min {s['min_ratio']:.1%}",
            f"{s['rate_limited']}",
            f"max {s['max_peak_1s']}",
        ]
        if s["system"] == "archiver":
            total += ["", "", ""]
        table.add_row(*total, style="bold")
        out.print(table)
    fair = sections.get("fairness")
    if fair is not None:
        table = Table(
            title=(
                f"fairness: chat-archiver, K={fair['nodes']} x {fair['concurrency_per_node']}; "
                f"account 1 backlog {fair['backlog_account_1']} jobs (drained at "
                f"{fair['account_1_accepted_per_s']:.2f}/s), {fair['batches']} batches of "
                f"{fair['batch_size']} on idle account 2 every {FAIRNESS_EVERY:g} s; "
                f"{fair['jobs_done']}/{fair['jobs']} done, 429s on account 1: "
                f"{fair['rate_limited_account_1']}, on account 2: {fair['rate_limited_account_2']}"
            ),
            title_justify="left",
        )
        for column in ("enqueue → done", "p50", "p95", "max"):
            table.add_column(column, justify="right")
        for label, key in (("per job", "job_latency_s"), ("per batch", "batch_completion_s")):
            v = fair[key]
            table.add_row(label, seconds(v["p50"]), seconds(v["p95"]), seconds(v["max"]))
        out.print(table)
    over = sections.get("overhead")
    if over is not None:
        table = Table(
            title=(
                f"overhead: no limit, {over['jobs']} jobs pre-enqueued, 1 node, {over['pool']} "
                f"-c {over['concurrency']}, jobs/s from worker ready to last call"
            ),
            title_justify="left",
        )
        for column in ("task", "run 1", "run 2", "median jobs/s", "Redis commands/job"):
            table.add_column(column, justify="right")
        for label, runs, median in (
            ("archive.chat (chat-archiver)", over["archiver_runs"], over["archiver_jobs_per_s"]),
            (
                "stock.bare_archive, same Celery settings (events on)",
                over["stock_runs"],
                over["stock_bare_jobs_per_s"],
            ),
            (
                "stock.bare_archive, Celery defaults (no events)",
                over["stock_defaults_runs"],
                over["stock_bare_defaults_jobs_per_s"],
            ),
        ):
            table.add_row(
                label,
                *(f"{r['jobs_per_s']:.1f}" for r in runs),
                f"{median:.1f}",
                " / ".join(f"{r['redis_commands_per_job']:.1f}" for r in runs),
            )
        table.add_row(
            "ratio to the same settings", "", "", f"{over['ratio']:.2f} x", "", style="bold"
        )
        table.add_row("ratio to Celery defaults", "", "", f"{over['ratio_to_defaults']:.2f} x", "")
        out.print(table)
    enq = sections.get("enqueue")
    if enq is not None:
        table = Table(
            title=f"enqueue: jobs/s of publishing (no worker running), {enq['rounds']} rounds "
            "alternating, medians",
            title_justify="left",
        )
        for column in ("producer", "jobs", "jobs/s per round", "median jobs/s"):
            table.add_column(column, justify="right")
        table.add_row(
            "enqueue_many (pipelined, account queues)",
            f"{enq['bulk_jobs']}",
            ", ".join(f"{r:.0f}" for r in enq["bulk_jobs_per_s_runs"]),
            f"{enq['bulk_jobs_per_s']:.0f}",
        )
        table.add_row(
            "archive_chat.delay(...) loop (intake queue)",
            f"{enq['delay_jobs']}",
            ", ".join(f"{r:.0f}" for r in enq["delay_jobs_per_s_runs"]),
            f"{enq['delay_jobs_per_s']:.0f}",
        )
        table.add_row("ratio", "", "", f"{enq['ratio']:.1f} x", style="bold")
        out.print(table)
    noise = {n: s["other_processes_cpu"] for n, s in sections.items() if "other_processes_cpu" in s}
    if noise:
        out.print(
            f"CPU used by processes not started by this benchmark, per section ({os.cpu_count()} "
            "cores = 100%): "
            + ", ".join(
                f"{name} {v['seconds']:.1f} s ({v['share_of_machine']:.0%})"
                for name, v in noise.items()
            ),
            highlight=False,
        )
    table = Table(title="targets (measured, not asserted)", title_justify="left")
    for column in ("target", "figure", ""):
        table.add_column(column)
    for row in report["targets"]:
        table.add_row(row["target"], row["figure"], verdict(row["pass"]))
    out.print(table)
    out.print(f"took {report['took_s']:.0f} s", highlight=False)


# -- main -----------------------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM ends us like Ctrl-C does, through the finally blocks that stop every process.
    raise KeyboardInterrupt


SECTIONS = ("limit", "stock", "fairness", "overhead", "enqueue")


def run(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    started = time.monotonic()
    bench = Bench(args, run_dir)
    sections: dict[str, dict[str, Any]] = {}
    steps: list[Callable[[], Section]] = []
    only = set(args.only or SECTIONS)
    if "limit" in only:
        for k in NODE_COUNTS:
            steps.append(lambda k=k: bench.limit("archiver", k))
    stock_counts = NODE_COUNTS[:1] if args.quick else NODE_COUNTS
    if "stock" in only:
        for k in stock_counts:
            steps.append(lambda k=k: bench.limit("stock", k))
    steps += [
        step
        for name, step in (
            ("fairness", bench.fairness),
            ("overhead", bench.overhead),
            ("enqueue", bench.enqueue),
        )
        if name in only
    ]
    try:
        bench.start()
        # The .delay() path must never publish to another Redis (the machine's shared one).
        assert default_app.conf.broker_url == REDIS_URL, default_app.conf.broker_url
        for step in steps:
            # This machine is shared: how much CPU other processes took during each section says
            # how far its figures can be trusted.
            before, began = cpu_sample(bench.live_pids()), time.monotonic()
            section = step()
            after, wall = cpu_sample(bench.live_pids()), time.monotonic() - began
            if before is not None and after is not None:
                other = max(0.0, (after[0] - before[0]) - (after[1] - before[1]))
                section.figures["other_processes_cpu"] = {
                    "seconds": round(other, 1),
                    "share_of_machine": round(other / (wall * (os.cpu_count() or 1)), 3),
                }
            sections[section.name] = section.figures
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave workers behind; every step
        # of it has its own time limit.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        progress("stopping workers, the simulator and redis-server")
        bench.stop()
    report: dict[str, Any] = {
        "config": {
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "celery": celery.__version__,
            "simulator": "python -m worker.cli simulate (own process)",
            "accounts": ACCOUNTS,
            "limit_per_s": LIMIT,
            "limiter_margin": bench.settings.limiter_margin,
            "limiter_max_wait_s": bench.settings.limiter_max_wait,
            "window_s": bench.window,
            "warmup_s": WARMUP,
            "limit_nodes": list(NODE_COUNTS),
            "stock_nodes": list(stock_counts),
            "concurrency_per_node": NODE_CONCURRENCY,
            "pool": "prefork",
            "quick": bool(args.quick),
        },
        "sections": sections,
    }
    report["targets"] = targets(sections)
    report["took_s"] = round(time.monotonic() - started, 1)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--quick", action="store_true", help="6 s windows, 800 overhead jobs, stock at K=3 only"
    )
    parser.add_argument("--seconds", type=float, default=None, help="measurement window (20 s)")
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, help="run these sections only (default: all)"
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep worker and simulator logs and print where"
    )
    args = parser.parse_args()
    if args.seconds is None:
        args.seconds = 6.0 if args.quick else 20.0
    signal.signal(signal.SIGTERM, _raise_interrupt)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-rate-limit-"))
    keep = args.keep_logs
    try:
        report = run(args, run_dir)
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
        print_report(Console(width=None if sys.stdout.isatty() else 140), report)


if __name__ == "__main__":
    main()
