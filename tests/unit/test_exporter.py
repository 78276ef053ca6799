"""The Prometheus collector reads each figure where it lives (queues in the broker's Redis,
everything else in the state Redis: they may be two databases or two servers) and names accounts
the same way on every metric."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

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
from worker.stores.deadletters import DeadLetter
from worker.stores.metrics import MetricsRecorder
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
    env.services.broker.rpush("archive.ready", "c")
    env.services.broker.hset("unacked", "tag", "message")
    env.services.redis.rpush("archive", "not a queue of the broker's")
    env.services.redis.rpush(KEYS.wait(f"green-api:{GREEN_ID}"), "j1", "j2")

    families = {f.name: f for f in ArchiverCollector(env.services, get_accounts()).collect()}
    depths = {s.labels["queue"]: s.value for s in families["chat_archiver_queue_depth"].samples}
    assert depths == {"archive": 3, "archive.ready": 1}
    assert families["chat_archiver_jobs_unacked"].samples[0].value == 1
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
    field = MetricsRecorder.outcome_args("green-api", GREEN_ID, "archived", None, "7@c.us")[0]
    services.redis.hincrby(services.metrics.outcomes_key, field, 3)
    services.circuit.trip(green, "unauthorized", "HTTP 401", probing=False, chain="c1")
    services.redis.rpush(services.keys.parked(green.key), "t1")  # a job parked behind it
    services.limiter.acquire(green, "archiveChat", max_wait=1.0)
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
    services.circuit.trip(paused, "unauthorized", "HTTP 401", probing=False, chain="c1")
    services.limiter.acquire(busy, "archiveChat", max_wait=1.0)

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
    granted = [
        s.labels
        for s in families["chat_archiver_limiter_permits"].samples
        if s.labels["result"] == "granted" and s.value
    ]
    assert granted == [
        {
            "provider": "green-api",
            "account": "7100000700",
            "method": "archiveChat",
            "result": "granted",
        }
    ]
    assert valued("chat_archiver_limiter_late_calls") == []  # nothing went out late


def test_late_calls_are_counted_per_limit(archiver_env: Env) -> None:
    services, accounts = archiver_env.services, archiver_env.accounts
    account = accounts.get("green-api", GREEN_ID)
    asked = time.monotonic()
    permit = services.limiter.acquire(account, "archiveChat", max_wait=1.0)
    time.sleep(0.03)  # the call goes 30 ms after its slot
    assert services.limiter.keep_distance(account, "archiveChat", asked, permit) > 0
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
