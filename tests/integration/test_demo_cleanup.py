"""``chat-archiver demo`` leaves nothing behind: not in a Redis it shares with a deployment, not in
the temporary directory. The demo's own code path, run in this process: its simulator, its real
``celery -A worker worker``, its jobs."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pytest
import redis
from rich.console import Console

from tests.conftest import KEYS
from worker.sandbox.demo import run_demo

pytestmark = pytest.mark.integration


@pytest.fixture
def temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where tempfile puts things during the test (ours and the demo worker's, which inherits
    TMPDIR): empty before, so anything in it afterwards was left by the demo."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


def seed_a_deployment(client: redis.Redis) -> None:
    """What a real deployment keeps in the Redis the demo is pointed at, kombu's shared keys
    first: the demo must leave every one of them exactly as it was."""
    client.set("foreign", "1")
    client.sadd("_kombu.binding.celery.pidbox", "\x06\x16\x06\x16celery@prod.celery.pidbox")
    client.zadd("_kombu.binding_deadlines", {"other.exchange": 4102444800000})
    client.sadd("_kombu.binding.archive", "archive\x06\x16\x06\x16archive")
    client.rpush("archive", '{"a job": "of the deployment"}')
    client.hset("unacked", "tag-1", '[{"a job": 1}, "", "archive"]')
    client.zadd("unacked_index", {"tag-1": 4102444800})  # not due for restoring
    client.set("celery-task-meta-0000", '{"status": "SUCCESS"}')
    client.hset(KEYS.dlq_entries, "e1", "{}")


def snapshot(client: redis.Redis) -> dict[bytes, tuple[bytes, object]]:
    """Every key, its type and its content (not DUMP: a hash that grew and shrank back keeps
    a different encoding for the same content)."""
    read = {
        b"string": client.get,
        b"hash": client.hgetall,
        b"set": client.smembers,
        b"list": lambda key: client.lrange(key, 0, -1),
        b"zset": lambda key: client.zrange(key, 0, -1, withscores=True),
    }
    found = {}
    for key in client.scan_iter():
        kind = client.type(key)
        found[key] = (kind, read[kind](key))
    return found


def test_the_demo_in_a_shared_redis_removes_exactly_what_it_wrote(
    redis_url: str, temporary_directory: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    seed_a_deployment(client)
    before = snapshot(client)
    output = io.StringIO()

    assert run_demo(Console(file=output, width=200), timeout=60, redis_url=redis_url)

    printed = output.getvalue()
    assert "Every outcome agrees with the simulator." in printed
    assert "everything the demo writes there is removed afterwards" in printed
    assert snapshot(client) == before  # key for key, value for value
    assert list(temporary_directory.iterdir()) == []


def test_the_demo_runs_in_a_private_redis_by_default(
    redis_url: str, temporary_directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ARCHIVER_BROKER_URL names a Redis that answers: the demo still keeps out of it.
    monkeypatch.setenv("ARCHIVER_BROKER_URL", redis_url)
    client = redis.Redis.from_url(redis_url)
    seed_a_deployment(client)
    before = snapshot(client)
    output = io.StringIO()

    assert run_demo(Console(file=output, width=200), timeout=60)

    assert "Private redis-server for the demo on redis://127.0.0.1:" in output.getvalue()
    assert snapshot(client) == before
    assert list(temporary_directory.iterdir()) == []  # the private server's folder too
