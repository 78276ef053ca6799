"""The Prometheus collector reads each figure where it lives: queues in the broker's Redis,
everything else in the state Redis (they may be two databases or two servers)."""

from __future__ import annotations

import pytest

from tests.conftest import GREEN_ID, Env, use_environment
from worker.exporter import ArchiverCollector
from worker.services import get_accounts


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
    env.services.redis.rpush(f"chat-archiver:wait:green-api:{GREEN_ID}", "j1", "j2")

    families = {f.name: f for f in ArchiverCollector(env.services, get_accounts()).collect()}
    depths = {s.labels["queue"]: s.value for s in families["chat_archiver_queue_depth"].samples}
    assert depths == {"archive": 3, "archive.ready": 1}
    assert families["chat_archiver_jobs_unacked"].samples[0].value == 1
    [waiting] = families["chat_archiver_jobs_waiting"].samples
    assert waiting.labels == {"provider": "green-api", "account": GREEN_ID} and waiting.value == 2
