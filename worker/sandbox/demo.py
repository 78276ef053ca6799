"""``chat-archiver demo``: the whole pipeline on this machine, checked against the simulator.

It starts the provider simulator with two accounts (a GREEN-API instance and a Wassenger device)
and a mix of chats, writes an accounts file for them, starts a real ``celery -A worker worker``,
enqueues the jobs, waits for every outcome and prints them beside what the simulator says is true.

It leaves nothing behind. It runs a private ``redis-server`` for its duration; given a Redis
(``--redis URL``, or ARCHIVER_BROKER_URL when redis-server is not installed) it works under its own
queue and key prefix and removes exactly what it wrote: its keys and queues, its jobs' results, its
queues' kombu bindings and its worker's marks in kombu's shared keys (``Footprint``). Its folder
(accounts file, worker log) goes too.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.text import Text

from config import GREEN_API, WASSENGER, get_settings
from worker.contract.jobs import InvalidJob
from worker.sandbox.cluster import LocalCluster
from worker.sandbox.local import PrivateRedis, redis_answers
from worker.sandbox.simulator import SimulatorClient, SimulatorError, start_in_thread
from worker.stores.client import connect, safe_url
from worker.stores.deadletters import DeadLetterStore
from worker.views.tables import Col, print_table

GREEN_ID = "1101000001"
WASSENGER_ID = "64a1f0c2b3d4e5f601234567"
UNCONFIGURED_ID = "1101009999"
DEMO_NAMESPACE = "chat-archiver-demo"
# Jobs for an account no accounts file names wait for one that does; the demo shows the dead
# letter they end in after a few seconds instead of ARCHIVER_UNKNOWN_ACCOUNT_GRACE's hour.
UNKNOWN_ACCOUNT_GRACE = 3


@dataclass(frozen=True)
class DemoJob:
    provider: str
    account: str
    chat_id: str
    story: str  # what the chat is, in the demo's scenario


JOBS = [
    DemoJob(GREEN_API, GREEN_ID, "79001000001@c.us", "archivable"),
    DemoJob(GREEN_API, GREEN_ID, "79001000002@c.us", "archivable"),
    DemoJob(GREEN_API, GREEN_ID, "79001000003@c.us", "archivable"),
    DemoJob(GREEN_API, GREEN_ID, "120363000000000001@g.us", "archivable group"),
    DemoJob(GREEN_API, GREEN_ID, "79001000005@c.us", "archived before the demo"),
    DemoJob(GREEN_API, GREEN_ID, "79001000006@c.us", "no incoming message yet"),
    DemoJob(GREEN_API, GREEN_ID, "79009999999@c.us", "not in the account's chats"),
    DemoJob(GREEN_API, UNCONFIGURED_ID, "79001000001@c.us", "account not in the accounts file"),
    DemoJob(WASSENGER, WASSENGER_ID, "447362053576@c.us", "archivable"),
    DemoJob(WASSENGER, WASSENGER_ID, "447362053577@c.us", "archivable"),
    DemoJob(WASSENGER, WASSENGER_ID, "447362053578@c.us", "archived before the demo"),
    DemoJob(WASSENGER, WASSENGER_ID, "447362099999@c.us", "not in the device's chats"),
]
# Refused at enqueue, never reaching a worker.
INVALID_JOB = {"provider": GREEN_API, "account": GREEN_ID, "chat_id": "+7 900 100-00-07"}


def _chat(chat_id: str, archived: bool = False, has_incoming: bool = True) -> dict[str, Any]:
    now = time.time()
    return {
        "id": chat_id,
        "kind": "group" if chat_id.endswith("@g.us") else "user",
        "archived": archived,
        "has_incoming": has_incoming,
        "last_incoming": now - 86400 if has_incoming else None,
        "last_outgoing": now - 3600,
    }


def scenario(green_token: str, wassenger_token: str) -> dict[str, Any]:
    return {
        "accounts": [
            {
                "provider": GREEN_API,
                "id": GREEN_ID,
                "token": green_token,
                # The instance's first two archive calls fail: tenacity retries them.
                "faults": {"fail_next": [503, 502]},
                "chats": [
                    _chat("79001000001@c.us"),
                    _chat("79001000002@c.us"),
                    _chat("79001000003@c.us"),
                    _chat("120363000000000001@g.us"),
                    _chat("79001000005@c.us", archived=True),
                    _chat("79001000006@c.us", has_incoming=False),
                ],
            },
            {
                "provider": WASSENGER,
                "id": WASSENGER_ID,
                "token": wassenger_token,
                "chats": [
                    _chat("447362053576@c.us"),
                    _chat("447362053577@c.us"),
                    _chat("447362053578@c.us", archived=True),
                ],
            },
        ]
    }


def accounts_file(path: Path, api_url: str) -> Path:
    path.write_text(
        f"""# Written by chat-archiver demo: the simulator stands in for both providers.
[[accounts]]
provider = "green-api"
id = "{GREEN_ID}"
api_url = "{api_url}"
token_env = "DEMO_GREEN_API_TOKEN"
rate_limit = "10/s"

[[accounts]]
provider = "wassenger"
id = "{WASSENGER_ID}"
api_url = "{api_url}"
token_env = "DEMO_WASSENGER_API_KEY"
rate_limit = "5/s"
"""
    )
    return path


def simulator_truth(client: SimulatorClient, job: DemoJob) -> str:
    try:
        chat = client.chat(job.provider, job.account, job.chat_id)
    except SimulatorError as error:
        return "no such account" if "account" in error.message.lower() else "no such chat"
    if chat.get("archived"):
        return "archived"
    if not chat.get("has_incoming", True):
        return "not archived: no incoming message"
    return "not archived"


def matches(outcome: str, reason: str | None, truth: str) -> bool:
    """Does the worker's outcome agree with what the simulator holds now?"""
    if outcome in ("archived", "already_archived"):
        return truth == "archived"
    return {
        "chat_not_found": "no such chat",
        "no_messages": "not archived: no incoming message",
        "unknown_account": "no such account",
    }.get(reason or "") == truth


def _demo_redis(console: Console, redis_url: str | None) -> tuple[str, PrivateRedis | None]:
    """Where the demo runs: ``redis_url`` when given; else a private ``redis-server`` (nothing
    of yours is touched); else, when redis-server is not installed, ARCHIVER_BROKER_URL."""
    if redis_url is None and PrivateRedis.available():
        private = PrivateRedis().start()
        console.out(f"Private redis-server for the demo on {private.url}", highlight=False)
        return private.url, private
    url = redis_url or get_settings().broker_url
    if not redis_answers(url):
        missing = "" if redis_url else "redis-server is not on the PATH and "
        raise RuntimeError(
            f"{missing}no Redis answers at {safe_url(url)}: start Redis, install redis-server, "
            "or give --redis URL"
        )
    console.out(
        f"Using the Redis at {safe_url(url)} under the queue and key prefix {DEMO_NAMESPACE}; "
        "everything the demo writes there is removed afterwards",
        highlight=False,
    )
    return url, None


@dataclass
class Footprint:
    """What the demo writes in a Redis it shares, so that it can remove exactly that."""

    queues: list[str]
    node: str  # the demo worker's node name
    task_ids: set[str] = field(default_factory=set)
    deadlines_before: set[str] = field(default_factory=set)

    DEADLINES = "_kombu.binding_deadlines"  # kombu's, shared by every worker on the database
    PIDBOX = "_kombu.binding.celery.pidbox"  # likewise

    def note_shared_state(self, client: redis.Redis) -> None:
        self.deadlines_before = {str(member) for member in client.zrange(self.DEADLINES, 0, -1)}

    def remove(self, client: redis.Redis) -> None:
        """Delete the demo's keys, and undo its marks in kombu's shared keys: never anything
        that was there before it started."""
        keys = set(client.scan_iter(f"{DEMO_NAMESPACE}*"))  # state, queues (and their lists)
        keys |= {f"celery-task-meta-{task_id}" for task_id in self.task_ids}  # results
        for queue in self.queues:
            keys |= {f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"}
        keys.add(f"{self.node}.celery.pidbox")  # the worker's remote-control queue, if left
        pipe = client.pipeline(transaction=False)
        pipe.delete(*keys)
        # A worker removes its pidbox binding when it stops warmly; not when it was killed.
        pipe.smembers(self.PIDBOX)
        pipe.zrange(self.DEADLINES, 0, -1)
        _, members, deadlines = pipe.execute()
        ours = [m for m in members if m.endswith(f"{self.node}.celery.pidbox")]
        if ours:
            client.srem(self.PIDBOX, *ours)
        # The demo worker's pidbox marks a deadline for the pidbox exchange; one that was there
        # before belongs to other workers (the demo only moved it later, which is harmless).
        added = set(deadlines) - self.deadlines_before
        if added:
            client.zrem(self.DEADLINES, *added)


def run_demo(console: Console, timeout: float = 90.0, redis_url: str | None = None) -> bool:
    """Run the demo; True when every outcome matches the simulator's truth. Leaves nothing:
    not in Redis (a private server, or exactly what it wrote removed), not on disk."""
    broker_url, private = _demo_redis(console, redis_url)
    workdir = Path(tempfile.mkdtemp(prefix="chat-archiver-demo-"))
    simulator = None
    cluster = None
    state = connect(broker_url)
    footprint = Footprint(
        queues=[DEMO_NAMESPACE],
        node=f"{DEMO_NAMESPACE}-{os.getpid()}@{socket.gethostname()}",
    )
    try:
        footprint.note_shared_state(state)
        green_token, wassenger_token = secrets.token_hex(16), secrets.token_hex(16)
        simulator = start_in_thread(scenario=scenario(green_token, wassenger_token))
        cluster = LocalCluster(
            broker_url,
            accounts_file(workdir / "accounts.toml", simulator.url),
            workdir,
            {
                # Its own queue and keys: the demo never mixes with a real deployment on the
                # same Redis.
                "ARCHIVER_QUEUE": DEMO_NAMESPACE,
                "ARCHIVER_KEY_PREFIX": DEMO_NAMESPACE,
                "ARCHIVER_RESULT_EXPIRES": "3600",
                "ARCHIVER_RETRY_COUNTDOWN": "1",
                "ARCHIVER_UNKNOWN_ACCOUNT_GRACE": str(UNKNOWN_ACCOUNT_GRACE),
                "ARCHIVER_JANITOR_INTERVAL": "1",
                "DEMO_GREEN_API_TOKEN": green_token,
                "DEMO_WASSENGER_API_KEY": wassenger_token,
                # Whatever the worker's processes put in temporary files goes into the demo's
                # folder, which goes at the end.
                "TMPDIR": str(workdir),
            },
        )
        console.out(f"Simulator serving GREEN-API and Wassenger at {simulator.url}")
        worker = cluster.start_worker(footprint.node.split("@")[0], concurrency=2)
        console.out("Worker started")
        rows: list[dict[str, Any] | InvalidJob] = [
            {
                "provider": j.provider,
                "account": j.account,
                "chat_id": j.chat_id,
                "source": "demo",
                "request_id": f"demo-{n}",
            }
            for n, j in enumerate(JOBS, 1)
        ]
        rows.append(INVALID_JOB)
        # No accounts file needed: jobs go to the intake, and the worker's router stores them.
        result = cluster.producer.enqueue_many(rows)
        task_ids = dict(result.enqueued)
        footprint.task_ids |= set(task_ids.values())
        for position, why in result.refused:
            console.out(f"Refused at enqueue (job {position}): {why}", highlight=False)
        ended = cluster.wait_outcomes(task_ids.values(), timeout)
        outcomes = {p: ended[t] for p, t in task_ids.items()}
        with SimulatorClient(simulator.url) as client:
            ok = _report(console, outcomes, task_ids, client)
        _report_dead_letters(console, cluster.dead_letters)
        if not ok:  # the log goes with the demo's folder: show its end first
            console.out("The worker's log ends with:\n" + worker.log()[-3000:], highlight=False)
        return ok
    finally:
        if cluster is not None:
            cluster.close()
        if simulator is not None:
            simulator.stop()
        try:
            if private is None:
                footprint.remove(state)
        finally:
            state.close()
            if private is not None:
                private.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def _report(
    console: Console,
    outcomes: dict[int, dict[str, Any] | None],
    task_ids: dict[int, str],
    client: SimulatorClient,
) -> bool:
    columns: list[Col | str] = [
        "#",
        "account",
        "chat",
        Col("scenario", prose=True),
        "outcome",
        "tries",
        Col("simulator now", prose=True),
        "ok",
    ]
    rows: list[list[Text | str]] = []
    all_agree = True
    for position in task_ids:
        job = JOBS[position - 1]
        result = outcomes.get(position)
        truth = simulator_truth(client, job)
        if result is None:
            outcome, attempts, agrees = "(no outcome in time)", "", False
        else:
            reason = result.get("reason")
            outcome = f"{result['outcome']}: {reason}" if reason else result["outcome"]
            attempts = str(result.get("attempts", ""))
            agrees = matches(result["outcome"], reason, truth)
        all_agree &= agrees
        rows.append(
            [
                str(position),
                Text(f"{job.provider} {job.account}"),
                Text(job.chat_id),
                Text(job.story),
                Text(outcome),  # from the result backend: never rich markup
                attempts,
                Text(truth),
                Text("yes") if agrees else Text("NO", style="red"),
            ]
        )
    title = "chat-archiver demo (the instance's first two calls answer 503 and 502)"
    print_table(console, columns, rows, title=title)
    if all_agree:
        console.out("Every outcome agrees with the simulator.")
    else:
        console.print(Text("Some outcomes disagree with the simulator.", style="red"))
    return all_agree


def _report_dead_letters(console: Console, store: DeadLetterStore) -> None:
    rows = []
    for entry in store.iter():
        chat = str(entry.job.get("chat_id"))
        # The id as `dlq list` prints it: `dlq show` takes it (a prefix of 6+ characters).
        rows.append(
            [Text(v) for v in (entry.id[:8], entry.reason, entry.account, chat, entry.detail)]
        )
    columns: list[Col | str] = ["id", "reason", "account", "chat", Col("detail", prose=True)]
    print_table(console, columns, rows, title="dead letters")
