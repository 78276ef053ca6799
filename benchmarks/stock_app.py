"""Stock Celery, as a team without chat-archiver would write it: the baseline of
``bench_rate_limit.py``.

    python -m celery -A benchmarks.stock_app worker -Q stock ...   (from the repo root)

Configured from the environment, because the benchmark starts it as its own process:

    BENCH_BROKER_URL      broker and result backend (the benchmark's private Redis)
    BENCH_SIMULATOR_URL   where GREEN-API lives (the simulator)
    BENCH_ACCOUNTS        comma-separated GREEN-API idInstances; account n (from 1) is the n-th
    BENCH_GREEN_TOKEN_<n> account n's apiTokenInstance
    BENCH_RATE_LIMIT      Celery ``rate_limit`` of every per-account task (default ``10/s``)

Tasks:
- ``stock.archive.<n>``: archiveChat on account n, ``rate_limit=BENCH_RATE_LIMIT``. Celery's
  rate limit is per task type and per worker node, so one task type per account is the most
  generous way to give stock Celery a per-account limit; it still multiplies by the number of
  nodes, which is what the benchmark shows.
- ``stock.bare_archive``: the same call on any account, no rate limit: the overhead baseline.

Neither retries: a 429 is returned like any other status (the benchmark counts them at the
simulator), so the baseline is exactly "one job, one HTTP call".
"""

from __future__ import annotations

import os
import threading

import httpx
from celery import Celery

QUEUE = "stock"
BARE_TASK = "stock.bare_archive"
DEFAULT_ACCOUNTS = ",".join(f"71000000{n:02d}" for n in range(1, 6))


def archive_task_name(index: int) -> str:
    """The task of account ``index`` (counted from 1, like BENCH_GREEN_TOKEN_<n>)."""
    return f"stock.archive.{index}"


BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
SIMULATOR_URL = os.environ.get("BENCH_SIMULATOR_URL", "http://127.0.0.1:8080").rstrip("/")
ACCOUNTS = [a for a in os.environ.get("BENCH_ACCOUNTS", DEFAULT_ACCOUNTS).split(",") if a]
RATE_LIMIT = os.environ.get("BENCH_RATE_LIMIT", "10/s")

app = Celery("stock", broker=BROKER_URL, backend=BROKER_URL)
# The reliability settings chat-archiver also uses, so the comparison is about the rate limit and
# the task body, not about acknowledging early or prefetching more. Task and sent events (what
# Flower needs, and chat-archiver sends) only with BENCH_EVENTS=1: the overhead section measures
# a bare task both ways, Celery's defaults and chat-archiver's Celery settings.
EVENTS = os.environ.get("BENCH_EVENTS") == "1"
app.conf.update(
    worker_send_task_events=EVENTS,
    task_send_sent_event=EVENTS,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    result_expires=3600,
    task_default_queue=QUEUE,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_reject_on_worker_lost=True,
    broker_connection_retry_on_startup=True,
    timezone="UTC",
)

_lock = threading.Lock()
_client: httpx.Client | None = None
_client_pid: int | None = None


def http_client() -> httpx.Client:
    """One keep-alive client per process; prefork children must not share the parent's sockets,
    so it is rebuilt when the process id changes (as tasks/providers/http.py does)."""
    global _client, _client_pid
    pid = os.getpid()
    if _client is None or _client_pid != pid:
        with _lock:
            if _client is None or _client_pid != pid:
                _client = httpx.Client(
                    timeout=httpx.Timeout(20.0, connect=5.0),
                    limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
                    follow_redirects=False,
                )
                _client_pid = pid
    return _client


def token_of(account: str) -> str:
    index = ACCOUNTS.index(account) + 1
    return os.environ[f"BENCH_GREEN_TOKEN_{index}"]


def archive_chat(account: str, chat_id: str) -> int:
    """GREEN-API archiveChat, exactly the request chat-archiver's adapter sends."""
    url = f"{SIMULATOR_URL}/waInstance{account}/archiveChat/{token_of(account)}"
    return http_client().post(url, json={"chatId": chat_id}).status_code


def _register_account_task(index: int, account: str) -> None:
    # A closure per account: each task type gets its own token bucket in the worker.
    @app.task(name=archive_task_name(index), rate_limit=RATE_LIMIT)
    def archive_on_account(chat_id: str) -> int:
        return archive_chat(account, chat_id)


for _index, _account in enumerate(ACCOUNTS, start=1):
    _register_account_task(_index, _account)


@app.task(name=BARE_TASK)
def bare_archive(account: str, chat_id: str) -> int:
    return archive_chat(account, chat_id)
