"""Prometheus metrics read from Redis at each scrape: what every worker process and host wrote.

Served by ``chat-archiver metrics``. One exporter covers the whole deployment, however many
workers run, because the numbers live in Redis, not in worker memory
(worker/stores/metrics.py). Flower exports Celery's own task metrics; these are chat-archiver's.

Labels are the same everywhere: an account is ``provider`` plus ``account`` (its id, without the
provider: ``provider="green-api", account="7105187566"``), so one PromQL join or filter works
across every metric. A job too malformed to name its account has both empty.

When Redis does not answer, a scrape gets HTTP 503 with a one-line reason (Prometheus records the
target as down: ``up == 0``), and the log gets one line when Redis stops answering and one when it
answers again; no traceback, however many scrapes fail in between. Nothing needs restarting.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import kombu.exceptions
import redis
from prometheus_client import make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from config import AccountRegistry
from worker.services import Services
from worker.stores.client import safe_url
from worker.stores.metrics import LATENCY_BUCKETS
from worker.views.status import queue_depths

logger = logging.getLogger("chat_archiver.metrics")

ACCOUNT_LABELS = ["provider", "account"]


def _account_labels(key: str) -> list[str]:
    """``provider:id`` (how the dead-letter counts name an account) as the two labels; the
    store writes ``?`` for a part a malformed job lacked, the label is empty then."""
    provider, _, account = key.partition(":")
    return [part if part != "?" else "" for part in (provider, account)]


class ArchiverCollector(Collector):
    """``accounts``: the registry, or what returns the current one (``get_accounts``, which
    rereads the accounts file when it changes): an exporter that runs for months sees accounts
    added to the file without a restart, as the workers do."""

    def __init__(
        self, services: Services, accounts: AccountRegistry | Callable[[], AccountRegistry]
    ) -> None:
        self.services = services
        self._accounts = accounts
        self.accounts = self._current()

    def _current(self) -> AccountRegistry:
        return self._accounts if isinstance(self._accounts, AccountRegistry) else self._accounts()

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        self.accounts = self._current()  # one registry for the whole scrape
        yield from self._outcomes()
        yield from self._dead_letters()
        yield from self._queues()
        yield from self._limiter()
        yield from self._latency()
        yield from self._circuits()
        yield from self._workers()
        yield from self._sweeps()

    def _outcomes(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "chat_archiver_jobs",
            "Archive jobs ended, by outcome and reason",
            labels=[*ACCOUNT_LABELS, "outcome", "reason"],
        )
        for labels, count in sorted(self.services.metrics.outcomes().items()):
            family.add_metric(list(labels), count)
        yield family

    def _dead_letters(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "chat_archiver_dead_letters",
            "Entries in the dead-letter store",
            labels=[*ACCOUNT_LABELS, "reason"],
        )
        for (reason, account), count in sorted(self.services.dead_letters.counts().items()):
            family.add_metric([*_account_labels(account), reason], count)
        yield family

    def _queues(self) -> Iterator[GaugeMetricFamily]:
        settings = self.services.settings
        depths = queue_depths(self.services)
        family = GaugeMetricFamily(
            "chat_archiver_queue_depth",
            "Messages in a queue: the intake (raw producers), the nodes' ready queues (by hand)",
            labels=["queue"],
        )
        family.add_metric([settings.queue], depths["intake"])
        family.add_metric([f"{settings.queue}.ready"], depths["ready"])
        yield family
        store = self.services.jobs
        counts = store.counts()
        stored = GaugeMetricFamily(
            "chat_archiver_jobs_stored", "Jobs in the job store, by state", labels=["state"]
        )
        stored.add_metric(["delayed"], counts.delayed)
        stored.add_metric(["running_or_dispatched"], counts.active)
        stored.add_metric(["all"], counts.jobs)
        yield stored
        waiting = GaugeMetricFamily(
            "chat_archiver_jobs_waiting",
            "Jobs waiting for their account's turn",
            labels=["provider", "account"],
        )
        for key, count in store.waiting([a.key for a in self.accounts]).items():
            if count:
                provider, _, account_id = key.partition(":")
                waiting.add_metric([provider, account_id], count)
        yield waiting

    def _limiter(self) -> Iterator[CounterMetricFamily]:
        labels = [*ACCOUNT_LABELS, "method"]
        deferred = CounterMetricFamily(
            "chat_archiver_limiter_deferred",
            "Permits refused to retries and listing calls (the job waited for its turn)",
            labels=labels,
        )
        limited = CounterMetricFamily(
            "chat_archiver_provider_rate_limited", "429 answers from the provider", labels=labels
        )
        late = CounterMetricFamily(
            "chat_archiver_limiter_late_calls",
            "Calls sent later past their slot than the limiter allows: each pushed the later "
            "slots back",
            labels=labels,
        )
        limits = [(account, method) for account in self.accounts for method in account.rates]
        for (account, method), state in zip(
            limits, self.services.limiter.states(limits), strict=True
        ):
            if not (state.deferred or state.rate_limited or state.late):
                continue
            values = [account.provider, account.id, method]
            deferred.add_metric(values, state.deferred)
            limited.add_metric(values, state.rate_limited)
            late.add_metric(values, state.late)
        yield from (deferred, limited, late)

    def _latency(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "chat_archiver_provider_request_seconds",
            "Provider archive calls, by duration",
            labels=ACCOUNT_LABELS,
        )
        for (provider, account), values in sorted(self.services.metrics.latency().items()):
            cumulative, buckets = 0.0, []
            for bound in (*(f"{le:g}" for le in LATENCY_BUCKETS), "+Inf"):
                cumulative += values.get(bound, 0.0)
                buckets.append((bound, cumulative))
            family.add_metric([provider, account], buckets, values.get("sum", 0.0))
        yield family

    def _circuits(self) -> Iterator[GaugeMetricFamily]:
        open_ = GaugeMetricFamily(
            "chat_archiver_account_paused",
            "1 while an account's circuit is open",
            labels=[*ACCOUNT_LABELS, "reason"],
        )
        parked = GaugeMetricFamily(
            "chat_archiver_parked_jobs",
            "Jobs waiting for a paused account",
            labels=ACCOUNT_LABELS,
        )
        accounts = list(self.accounts)
        for account, state in zip(accounts, self.services.circuit.states(accounts), strict=True):
            labels = [account.provider, account.id]
            open_.add_metric([*labels, state.reason or ""], 1 if state.state == "open" else 0)
            parked.add_metric(labels, state.parked)
        yield from (open_, parked)

    def _workers(self) -> Iterator[GaugeMetricFamily]:
        # Each node renews its heartbeat every third of a lease; the janitor takes a node for gone
        # after two leases without one (worker/dispatch/janitor.py), and so does this count.
        services = self.services
        alive = len(services.jobs.nodes(2 * services.settings.lease_timeout))
        yield GaugeMetricFamily(
            "chat_archiver_workers_alive",
            "Worker nodes whose heartbeat is within two lease timeouts",
            value=alive,
        )

    def _sweeps(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "chat_archiver_sweeps",
            "Sweeps run, by result (completed, dry_run, skipped, held, failed)",
            labels=[*ACCOUNT_LABELS, "result"],
        )
        counts = self.services.redis.hgetall(self.services.keys.metrics_sweeps)
        for field, count in sorted(counts.items()):
            labels = str(field).split("|")
            if len(labels) == 3:  # provider|account|result; anything else is not ours to show
                family.add_metric(labels, int(count))
        yield family


# --- serving --------------------------------------------------------------------------------

# What a scrape meets when Redis (state or broker) does not answer.
UNAVAILABLE = (redis.RedisError, kombu.exceptions.OperationalError, OSError)
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class MetricsApp:
    """prometheus_client's WSGI app, plus a 503 and one log line per outage when Redis is down
    (the bare app lets the exception through: wsgiref answers 500 and logs a traceback for
    every scrape)."""

    def __init__(self, registry: CollectorRegistry, where: str) -> None:
        self._inner = make_wsgi_app(registry)
        self._where = where  # the Redis URLs, passwords masked
        self._lock = threading.Lock()
        self.down = False

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            # The inner app renders every metric before it starts the response.
            body = self._inner(environ, start_response)
        except UNAVAILABLE as error:
            reason = " ".join(f"{type(error).__name__}: {error}".split())
            self._went_down(reason)
            start_response(
                "503 Service Unavailable",
                [("Content-Type", "text/plain; charset=utf-8"), ("Retry-After", "15")],
            )
            return [f"chat-archiver metrics: cannot read {self._where}: {reason}\n".encode()]
        self._came_back()
        return body

    def _went_down(self, reason: str) -> None:
        with self._lock:
            if self.down:
                return
            self.down = True
        logger.error(
            "cannot read %s (%s): scrapes get HTTP 503 until it answers", self._where, reason
        )

    def _came_back(self) -> None:
        with self._lock:
            if not self.down:
                return
            self.down = False
        logger.warning("%s answers again: scrapes get metrics", self._where)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: Prometheus scrapes every few seconds."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper that hung up mid-answer: one line, not socketserver's traceback.
        logger.warning("metrics request from %s failed: a scraper gone?", client_address[0])


def serve(
    services: Services,
    accounts: AccountRegistry | Callable[[], AccountRegistry],
    host: str,
    port: int,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics on (host, port) from a thread; returns the server (``server_port`` is the
    port when 0 was asked for) and its thread."""
    registry = CollectorRegistry()
    registry.register(ArchiverCollector(services, accounts))
    settings = services.settings
    urls = {safe_url(settings.state_url), safe_url(settings.broker_url)}
    where = "Redis at " + " and ".join(sorted(urls))
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (_Server,), {"address_family": family})
    server: WSGIServer = make_server(
        host, port, MetricsApp(registry, where), server_class, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server, thread
