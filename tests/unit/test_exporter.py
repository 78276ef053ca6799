"""The Prometheus collector reads each figure where it lives (queues in the broker's Redis,
everything else in the state Redis: they may be two databases or two servers) and names accounts
the same way on every metric."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from tests.conftest import (
    GREEN_ID,
    KEYS,
    WASSENGER_ID,
    Env,
    RoundTrips,
    green_accounts_toml,
    use_environment,
)
from worker.services import accounts_file, get_accounts
from worker.stores.clock import PinnedClock
from worker.stores.deadletters import DeadLetter
from worker.stores.jobs import Tick
from worker.views.exporter import ArchiverCollector


def test_queue_depths_come_from_the_broker(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    broker_url = redis_url.rsplit("/", 1)[0] + "/1"
    monkeypatch.setenv("ARCHIVER_REDIS_URL", redis_url)  # the state apart from the broker
    env = use_environment(monkeypatch, broker_url, archiver_env.accounts_file)
    assert env.services.broker is not env.services.redis
    env.services.broker.rpush("archive", "a", "b")
    env.services.broker.rpush("archive\x06\x169", "a priority message")
    # Two nodes' ready queues (nodes are named in the state Redis, their queues in the broker's).
    env.services.redis.zadd(KEYS.nodes, {"w1@h#1": 1, "w2@h#2": 2})
    env.services.broker.rpush("archive.ready.w1@h#1", "c")
    env.services.broker.rpush("archive.ready.w2@h#2", "d", "e")
    env.services.redis.rpush("archive", "not a queue of the broker's")
    env.services.redis.rpush(KEYS.wait(f"green-api:{GREEN_ID}"), "j1", "j2")

    families = {f.name: f for f in ArchiverCollector(env.services, get_accounts()).collect()}
    depths = {s.labels["queue"]: s.value for s in families["chat_archiver_queue_depth"].samples}
    assert depths == {"archive": 3, "archive.ready": 3}
    [waiting] = families["chat_archiver_jobs_waiting"].samples
    assert waiting.labels == {"provider": "green-api", "account": GREEN_ID} and waiting.value == 2


def test_every_metric_names_an_account_the_same_way(archiver_env: Env) -> None:
    """provider + account (the id alone) on every metric that names an account: one PromQL
    filter, e.g. {provider="green-api", account="7105187566"}, selects the account everywhere."""
    services, accounts = archiver_env.services, get_accounts()
    green = accounts.find("green-api", GREEN_ID)
    assert green is not None
    services.dead_letters.add(
        DeadLetter(
            reason="chat_not_found",
            job={"provider": "green-api", "account": GREEN_ID, "chat_id": "79001234567@c.us"},
            detail="HTTP 400",
        )
    )
    services.dead_letters.add(DeadLetter(reason="invalid_request", job={}, detail="no job"))
    pipe = services.redis.pipeline()
    for _ in range(3):
        services.metrics.queue_outcome(pipe, "green-api", GREEN_ID, "archived", None)
    pipe.execute()
    services.circuit.trip(green, "unauthorized", "HTTP 401", probing=False)
    services.redis.rpush(services.keys.parked(green.key), "t1")  # a job parked behind it
    services.limiter.penalize(green, "archiveChat", 1.0)  # a 429: its limit shows
    services.redis.rpush(services.keys.wait(green.key), "t2")  # a job waiting its turn

    families = {f.name: f for f in ArchiverCollector(services, accounts).collect()}
    named = 0
    for family in families.values():
        for sample in family.samples:
            if "account" not in sample.labels:
                continue
            named += 1
            assert "provider" in sample.labels, sample
            assert ":" not in sample.labels["account"], sample  # never "green-api:710..."
            assert sample.labels["account"] in {GREEN_ID, WASSENGER_ID, ""}, sample

    def labels(name: str) -> list[dict[str, str]]:
        return [s.labels for s in families[name].samples if s.value]

    assert sorted(labels("chat_archiver_dead_letters"), key=str) == [
        {"provider": "", "account": "", "reason": "invalid_request"},
        {"provider": "green-api", "account": GREEN_ID, "reason": "chat_not_found"},
    ]
    assert {"provider": "green-api", "account": GREEN_ID, "reason": "unauthorized"} in labels(
        "chat_archiver_account_paused"
    )
    assert labels("chat_archiver_parked_jobs") == [{"provider": "green-api", "account": GREEN_ID}]
    assert labels("chat_archiver_jobs_waiting") == [{"provider": "green-api", "account": GREEN_ID}]
    assert labels("chat_archiver_jobs")[0]["account"] == GREEN_ID
    assert named >= 10


def test_the_latency_histogram_is_cumulative(archiver_env: Env) -> None:
    """Prometheus buckets count every call at or under their bound: a 0.07 s and a 3 s call make
    the 0.1 s bucket 1, the 5 s bucket 2 and +Inf 2."""
    services = archiver_env.services
    pipe = services.redis.pipeline()
    for seconds in (0.07, 3.0):
        services.metrics.queue_latency(pipe, "green-api", GREEN_ID, seconds)
    pipe.execute()
    families = {f.name: f for f in ArchiverCollector(services, get_accounts()).collect()}
    buckets = {
        s.labels["le"]: s.value
        for s in families["chat_archiver_provider_request_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert (buckets["0.05"], buckets["0.1"], buckets["2.5"], buckets["5"], buckets["+Inf"]) == (
        0,
        1,
        1,
        2,
        2,
    )


def test_a_scrape_reads_thousands_of_accounts_in_batches(
    archiver_env: Env,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    round_trips: Callable[[], RoundTrips],
) -> None:
    """The circuit and limiter figures of every account are read in pipelines of READ_BATCH: a
    scrape at 1,200 accounts takes a few dozen round trips, not one or more per account, and
    each account still gets its own figures."""
    many = tmp_path / "many.toml"
    many.write_text(green_accounts_toml(7_100_000_000, 1_200))
    env = use_environment(monkeypatch, archiver_env.settings.broker_url, many)
    services, accounts = env.services, get_accounts()
    paused = accounts.find("green-api", "7100001100")  # in the third batch
    busy = accounts.find("green-api", "7100000700")  # in the second
    assert paused is not None and busy is not None
    services.circuit.trip(paused, "unauthorized", "HTTP 401", probing=False)
    services.limiter.penalize(busy, "archiveChat", 1.0)  # it answered 429 once

    counter = round_trips()
    families = {f.name: f for f in ArchiverCollector(services, accounts).collect()}
    per_account = 1 + len(paused.rates)  # what one read per circuit and per limit would cost
    assert counter.count < 60 < len(accounts) * per_account

    def valued(name: str) -> list[dict[str, str]]:
        return [s.labels for s in families[name].samples if s.value]

    assert valued("chat_archiver_account_paused") == [
        {"provider": "green-api", "account": "7100001100", "reason": "unauthorized"}
    ]
    assert len(families["chat_archiver_account_paused"].samples) == 1_200
    assert valued("chat_archiver_provider_rate_limited") == [
        {"provider": "green-api", "account": "7100000700", "method": "archiveChat"}
    ]
    assert valued("chat_archiver_limiter_late_calls") == []  # nothing went out late


def test_late_calls_are_counted_per_limit(archiver_env: Env) -> None:
    services, accounts = archiver_env.services, archiver_env.accounts
    account = accounts.get("green-api", GREEN_ID)
    permit = services.limiter.acquire(account, "archiveChat", max_wait=1.0)
    deadline = time.monotonic() + permit.wait
    time.sleep(permit.wait + 0.03)  # the call goes 30 ms after its slot
    late = time.monotonic() - deadline
    assert services.limiter.keep_distance(account, "archiveChat", late, permit.slot) > 0
    families = {f.name: f for f in ArchiverCollector(services, accounts).collect()}
    [sample] = families["chat_archiver_limiter_late_calls"].samples
    assert sample.labels == {"provider": "green-api", "account": GREEN_ID, "method": "archiveChat"}
    assert sample.value == 1


def test_an_account_added_to_the_file_shows_at_the_next_scrape(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exporter runs for months: it rereads the accounts file when it changes, as workers
    do, instead of reporting the accounts it started with forever."""
    monkeypatch.setattr(accounts_file(), "check_every", 0.0)  # look at the file every scrape
    collector = ArchiverCollector(archiver_env.services, get_accounts)

    def paused_accounts() -> set[str]:
        families = {f.name: f for f in collector.collect()}
        return {s.labels["account"] for s in families["chat_archiver_account_paused"].samples}

    assert paused_accounts() == {GREEN_ID, WASSENGER_ID}
    with archiver_env.accounts_file.open("a") as file:
        file.write("\n" + green_accounts_toml(7_105_000_042, 1))
    assert paused_accounts() == {GREEN_ID, WASSENGER_ID, "7105000042"}


def test_workers_alive_counts_nodes_heard_within_two_leases(archiver_env: Env) -> None:
    """A node renews its heartbeat every third of a lease; after two leases without one the
    janitor takes it for gone, and the gauge stops counting it at the same moment."""
    services = archiver_env.services
    clock = PinnedClock()
    services.use_clock(clock)
    lease = services.settings.lease_timeout
    collector = ArchiverCollector(services, get_accounts())

    def alive() -> float:
        families = {f.name: f for f in collector.collect()}
        [sample] = families["chat_archiver_workers_alive"].samples
        return sample.value

    def heartbeat(node: str, janitor: bool = False) -> Tick:
        return services.jobs.tick(
            node, [], janitor_ms=1000 if janitor else 0, node_timeout=2 * lease, unknown_grace=60
        )

    def b_lives_on(seconds: float) -> None:
        for _ in range(3):
            clock.advance(seconds / 3)
            heartbeat("celery@b")

    assert alive() == 0  # no node ever started
    heartbeat("celery@a")
    b_lives_on(lease)
    assert alive() == 2
    b_lives_on(lease)  # a's last heartbeat is exactly two leases old: still counted
    assert alive() == 2
    clock.advance(0.001)
    assert alive() == 1
    assert len(services.jobs.nodes(2 * lease)) == 1
    # The janitor agrees (b's own turn heartbeats b again).
    assert heartbeat("celery@b", janitor=True).dead_nodes == ["celery@a"]


def test_sweeps_are_counted_by_account_and_result(archiver_env: Env) -> None:
    """The sweep writes provider|account|result -> count; Prometheus sees a counter,
    chat_archiver_sweeps_total, with the account named as on every other metric."""
    services = archiver_env.services
    key = services.keys.metrics_sweeps
    assert key == "chat-archiver:metrics:sweeps"
    services.redis.hincrby(key, f"green-api|{GREEN_ID}|completed", 3)
    services.redis.hincrby(key, f"green-api|{GREEN_ID}|held", 1)
    services.redis.hincrby(key, f"wassenger|{WASSENGER_ID}|failed", 2)
    services.redis.hincrby(key, "not a field of ours", 1)

    collector = ArchiverCollector(services, get_accounts())
    families = {f.name: f for f in collector.collect()}
    found = {
        (s.labels["provider"], s.labels["account"], s.labels["result"]): s.value
        for s in families["chat_archiver_sweeps"].samples
    }
    assert found == {
        ("green-api", GREEN_ID, "completed"): 3,
        ("green-api", GREEN_ID, "held"): 1,
        ("wassenger", WASSENGER_ID, "failed"): 2,
    }
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert "# TYPE chat_archiver_sweeps_total counter" in text
    assert (
        f'chat_archiver_sweeps_total{{account="{WASSENGER_ID}",provider="wassenger",'
        'result="failed"} 2.0' in text
    )
