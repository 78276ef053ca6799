"""The Prometheus collector reads each figure where it lives (queues in the broker's Redis,
everything else in the state Redis: they may be two databases or two servers) and names accounts
the same way on every metric."""

from __future__ import annotations

import pytest

from tests.conftest import GREEN_ID, WASSENGER_ID, Env, use_environment
from worker.circuit import ParkedJob
from worker.deadletters import DeadLetter
from worker.exporter import ArchiverCollector
from worker.metrics import MetricsRecorder
from worker.services import get_accounts


def test_queue_depths_come_from_the_broker(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    broker_url = redis_url.rsplit("/", 1)[0] + "/1"
    monkeypatch.setenv("ARCHIVER_REDIS_URL", redis_url)  # the state apart from the broker
    env = use_environment(monkeypatch, broker_url, archiver_env.accounts_file)
    assert env.services.broker is not env.services.redis
    queue = f"archive.green-api.{GREEN_ID}"
    env.services.broker.rpush(queue, "a", "b")
    env.services.broker.hset("unacked", "tag", "message")
    env.services.redis.rpush(queue, "not a queue of the broker's")

    families = {f.name: f for f in ArchiverCollector(env.services, get_accounts()).collect()}
    depths = {s.labels["queue"]: s.value for s in families["chat_archiver_queue_depth"].samples}
    assert depths[queue] == 2 and depths["archive"] == 0
    assert families["chat_archiver_jobs_unacked"].samples[0].value == 1


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
    services.circuit.park(green, ParkedJob("t1", {"chat_id": "7@c.us"}, {}, parked_at=1.0))
    services.limiter.acquire(green, "archiveChat", max_wait=1.0)
    services.broker.rpush(f"archive.green-api.{GREEN_ID}", "job")

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
    assert {
        "queue": f"archive.green-api.{GREEN_ID}",
        "provider": "green-api",
        "account": GREEN_ID,
    } in labels("chat_archiver_queue_depth")
    assert labels("chat_archiver_jobs")[0]["account"] == GREEN_ID
    assert named >= 10
