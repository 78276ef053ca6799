"""``chat-archiver demo``: the whole pipeline on this machine, checked against the simulator.

It starts the provider simulator with two accounts (a GREEN-API instance and a Wassenger device)
and a mix of chats, writes an accounts file for them, starts a real ``celery -A worker worker``,
enqueues the jobs, waits for every outcome and prints them beside what the simulator says is true.
It uses Redis at ARCHIVER_BROKER_URL under its own queue and key prefix, or, when nothing answers
there, a private ``redis-server`` for its duration.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.result import AsyncResult
from rich.console import Console
from rich.table import Table

from config import GREEN_API, WASSENGER, Settings, get_settings
from worker.celery_app import create_app
from worker.contract.results import outcome_of
from worker.deadletters import DeadLetterStore
from worker.jobs import InvalidJob
from worker.local import WORKER_READY, PrivateRedis, redis_answers, worker_process
from worker.producer import ArchiveProducer
from worker.simulator import SimulatorClient, SimulatorError, start_in_thread
from worker.state import connect, safe_url

GREEN_ID = "1101000001"
WASSENGER_ID = "64a1f0c2b3d4e5f601234567"
UNCONFIGURED_ID = "1101009999"
DEMO_NAMESPACE = "chat-archiver-demo"
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


def run_demo(console: Console, timeout: float = 90.0) -> bool:
    """Run the demo; True when every outcome matches the simulator's truth."""
    broker_url = get_settings().broker_url
    private: PrivateRedis | None = None
    if not redis_answers(broker_url):
        if not PrivateRedis.available():
            raise RuntimeError(
                f"no Redis answers at {safe_url(broker_url)} and redis-server is not on the PATH: "
                "start Redis or set ARCHIVER_BROKER_URL"
            )
        private = PrivateRedis().start()
        console.print(
            f"No Redis answers at {safe_url(broker_url)}: running a private redis-server on "
            f"{private.url} for the demo."
        )
        broker_url = private.url
    workdir = Path(tempfile.mkdtemp(prefix="chat-archiver-demo-"))
    green_token, wassenger_token = secrets.token_hex(16), secrets.token_hex(16)
    simulator = start_in_thread(scenario=scenario(green_token, wassenger_token))
    env = {
        "ARCHIVER_BROKER_URL": broker_url,
        "ARCHIVER_REDIS_URL": broker_url,
        "ARCHIVER_ACCOUNTS_FILE": str(accounts_file(workdir / "accounts.toml", simulator.url)),
        # Its own queue and keys: the demo never mixes with a real deployment on the same Redis.
        "ARCHIVER_QUEUE": DEMO_NAMESPACE,
        "ARCHIVER_KEY_PREFIX": DEMO_NAMESPACE,
        "ARCHIVER_RESULT_EXPIRES": "3600",
        "ARCHIVER_RETRY_COUNTDOWN": "1",
        # Jobs for an account no accounts file names wait for one that does; the demo shows the
        # dead letter they end in after a few seconds instead of an hour.
        "ARCHIVER_UNKNOWN_ACCOUNT_GRACE": str(UNKNOWN_ACCOUNT_GRACE),
        "ARCHIVER_JANITOR_INTERVAL": "1",
        "DEMO_GREEN_API_TOKEN": green_token,
        "DEMO_WASSENGER_API_KEY": wassenger_token,
    }
    settings = Settings(
        broker_url=broker_url,
        redis_url=broker_url,
        queue=DEMO_NAMESPACE,
        key_prefix=DEMO_NAMESPACE,
        result_expires=3600,
    )
    worker = worker_process(env, workdir / "worker.log", name="demo", concurrency=2)
    app = create_app(settings)
    state = connect(broker_url)
    try:
        console.print(f"Simulator serving GREEN-API and Wassenger at {simulator.url}")
        worker.start()
        worker.wait_for_log(WORKER_READY, timeout=60)
        console.print(f"Worker started (log: {worker.log_path})")
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
        result = ArchiveProducer(app, settings, state=state).enqueue_many(rows)
        task_ids = dict(result.enqueued)
        for position, why in result.refused:
            console.print(f"Refused at enqueue (job {position}): {why}")
        outcomes = _wait(app, task_ids, timeout)
        with SimulatorClient(simulator.url) as client:
            ok = _report(console, outcomes, task_ids, client)
        _report_dead_letters(console, DeadLetterStore(state, DEMO_NAMESPACE))
        return ok
    finally:
        worker.stop()
        simulator.stop()
        _forget_demo_state(state)
        app.close()
        if private:
            private.stop()


def _wait(app: Any, task_ids: dict[int, str], timeout: float) -> dict[int, dict[str, Any]]:
    outcomes: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(outcomes) < len(task_ids) and time.monotonic() < deadline:
        for position, task_id in task_ids.items():
            if position not in outcomes:
                outcome = outcome_of(AsyncResult(task_id, app=app))
                if outcome is not None:
                    outcomes[position] = outcome
        time.sleep(0.2)
    return outcomes


def _report(
    console: Console,
    outcomes: dict[int, dict[str, Any]],
    task_ids: dict[int, str],
    client: SimulatorClient,
) -> bool:
    table = Table(
        "#",
        "account",
        "chat",
        "scenario",
        "outcome",
        "tries",
        "simulator now",
        "ok",
        title="chat-archiver demo (the instance's first two calls answer 503 and 502)",
    )
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
        table.add_row(
            str(position),
            f"{job.provider} {job.account}",
            job.chat_id,
            job.story,
            outcome,
            attempts,
            truth,
            "yes" if agrees else "[red]NO[/red]",
        )
    console.print(table)
    console.print(
        "Every outcome agrees with the simulator."
        if all_agree
        else "[red]Some outcomes disagree with the simulator.[/red]"
    )
    return all_agree


def _report_dead_letters(console: Console, store: DeadLetterStore) -> None:
    table = Table("id", "reason", "account", "chat", "detail", title="dead letters")
    for entry in store.iter():
        chat = str(entry.job.get("chat_id"))
        table.add_row(entry.id[:8], entry.reason, entry.account, chat, entry.detail)
    console.print(table)


def _forget_demo_state(client: Any) -> None:
    """Remove what the demo wrote under its own prefix and queue (never anything else)."""
    try:
        keys = list(client.scan_iter(f"{DEMO_NAMESPACE}*"))
        if keys:
            client.delete(*keys)
    except Exception:  # cleanup is best effort: the demo's result matters more
        return
