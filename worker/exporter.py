"""Prometheus metrics read from Redis at each scrape: what every worker process and host wrote.

Served by ``chat-archiver metrics``. One exporter covers the whole deployment, however many
workers run, because the numbers live in Redis, not in worker memory (worker/metrics.py). Flower
exports Celery's own task metrics; these are chat-archiver's.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from config import AccountRegistry
from worker.dispatch.router import intake_lists
from worker.metrics import LATENCY_BUCKETS
from worker.services import Services
from worker.stores.keys import ready_queue


class ArchiverCollector(Collector):
    def __init__(self, services: Services, accounts: AccountRegistry) -> None:
        self.services = services
        self.accounts = accounts

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        yield from self._outcomes()
        yield from self._dead_letters()
        yield from self._queues()
        yield from self._limiter()
        yield from self._latency()
        yield from self._circuits()

    def _outcomes(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "chat_archiver_jobs",
            "Archive jobs ended, by outcome and reason",
            labels=["provider", "account", "outcome", "reason"],
        )
        for labels, count in sorted(self.services.metrics.outcomes().items()):
            family.add_metric(list(labels), count)
        yield family

    def _dead_letters(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "chat_archiver_dead_letters",
            "Entries in the dead-letter store",
            labels=["reason", "account"],
        )
        for (reason, account), count in sorted(self.services.dead_letters.counts().items()):
            family.add_metric([reason, account], count)
        yield family

    def _queues(self) -> Iterator[GaugeMetricFamily]:
        settings = self.services.settings
        pipe = self.services.broker.pipeline(transaction=False)
        for name in intake_lists(settings.queue):
            pipe.llen(name)
        pipe.llen(ready_queue(settings.queue))
        pipe.hlen("unacked")  # kombu's: delivered, not yet acknowledged (running or held)
        *intake, ready, unacked = pipe.execute()
        family = GaugeMetricFamily(
            "chat_archiver_queue_depth", "Messages in a queue", labels=["queue"]
        )
        family.add_metric([settings.queue], sum(intake))
        family.add_metric([ready_queue(settings.queue)], ready)
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
        yield GaugeMetricFamily(
            "chat_archiver_jobs_unacked",
            "Jobs delivered to workers and not yet acknowledged",
            value=unacked,
        )

    def _limiter(self) -> Iterator[CounterMetricFamily]:
        labels = ["provider", "account", "method"]
        waited = CounterMetricFamily(
            "chat_archiver_limiter_wait_seconds",
            "Time spent waiting for rate-limit permits",
            labels=labels,
        )
        permits = CounterMetricFamily(
            "chat_archiver_limiter_permits",
            "Rate-limit permits asked for, by result",
            labels=[*labels, "result"],
        )
        limited = CounterMetricFamily(
            "chat_archiver_provider_rate_limited", "429 answers from the provider", labels=labels
        )
        limiter = self.services.limiter
        for account in self.accounts:
            for method in account.rates:
                state = limiter.state(account, method)
                if not (state.granted or state.deferred or state.rate_limited):
                    continue
                values = [account.provider, account.id, method]
                waited.add_metric(values, state.waited_seconds)
                permits.add_metric([*values, "granted"], state.granted)
                permits.add_metric([*values, "deferred"], state.deferred)
                limited.add_metric(values, state.rate_limited)
        yield from (waited, permits, limited)

    def _latency(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "chat_archiver_provider_request_seconds",
            "Provider archive calls, by duration",
            labels=["provider", "account"],
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
            labels=["account", "reason"],
        )
        parked = GaugeMetricFamily(
            "chat_archiver_parked_jobs", "Jobs waiting for a paused account", labels=["account"]
        )
        for account in self.accounts:
            state = self.services.circuit.state(account)
            open_.add_metric([account.key, state.reason or ""], 1 if state.state == "open" else 0)
            parked.add_metric([account.key], state.parked)
        yield from (open_, parked)
