"""``chat-archiver metrics`` as it runs in the compose stack: a real process, real HTTP scrapes,
a real redis-server stopped under it and started again."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CANARY, accounts_toml
from tests.support import eventually
from worker.sandbox.local import PrivateRedis, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    # Not the session's pytest-redis server: this test stops its Redis.
    with PrivateRedis() as server:
        yield server


def scrape(port: int) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
            return answer.status, answer.read().decode(), time.monotonic() - started
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), time.monotonic() - started


def wait_until_listening(port: int, process: subprocess.Popen[str]) -> None:
    def listening() -> bool:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        scrape(port)
        return True

    eventually(
        listening, 30, "the exporter listening", 0.1, ignoring=(urllib.error.URLError, OSError)
    )


def test_redis_down_is_a_503_and_one_log_line_then_it_recovers(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(accounts_toml("http://127.0.0.1:9"))
    port = free_port()
    env = {
        **os.environ,
        "ARCHIVER_BROKER_URL": private_redis.url,
        "ARCHIVER_ACCOUNTS_FILE": str(accounts),
        "TEST_GREEN_TOKEN": CANARY,
        "TEST_WASSENGER_TOKEN": CANARY + "w",
    }
    exporter = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "metrics", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    restarted: PrivateRedis | None = None
    try:
        wait_until_listening(port, exporter)
        status, body, _ = scrape(port)
        assert status == 200
        assert 'chat_archiver_queue_depth{queue="archive"} 0.0' in body

        private_redis.stop()
        for _ in range(3):
            status, body, seconds = scrape(port)
            assert status == 503
            assert body.startswith(
                f"chat-archiver metrics: cannot read Redis at {private_redis.url}"
            )
            assert "Connection refused" in body and len(body.splitlines()) == 1
            assert seconds < 5  # Prometheus's scrape timeout is 10 s by default

        restarted = PrivateRedis(port=private_redis.port).start()
        status, body, _ = scrape(port)
        assert status == 200 and "chat_archiver_dead_letters" in body
    finally:
        exporter.terminate()
        exporter.wait(10)
        if restarted is not None:
            restarted.stop()
    log = exporter.stderr.read() if exporter.stderr else ""
    assert "Traceback" not in log
    lines = log.strip().splitlines()
    assert lines[0] == f"chat-archiver metrics on http://127.0.0.1:{port}/metrics"
    assert len(lines) == 3, log  # three failed scrapes: one line; the recovery: one line
    assert lines[1].startswith(
        f"ERROR chat_archiver.metrics: cannot read Redis at {private_redis.url} (ConnectionError: "
    )
    assert lines[2] == (
        f"WARNING chat_archiver.metrics: Redis at {private_redis.url} answers again: scrapes get "
        "metrics"
    )
