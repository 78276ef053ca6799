"""Accounts come and go without a restart: a job for an account no worker knows waits (it is not
dead-lettered), and runs once the account is added to the file; an account removed from the file
stops taking jobs, which wait as unknown."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import CANARY, KEYS
from tests.integration.conftest import Cluster
from tests.support import eventually

pytestmark = pytest.mark.integration

NEW_ID = "7105180001"


def new_account(api_url: str) -> str:
    return f"""
[[accounts]]
provider = "green-api"
id = "{NEW_ID}"
api_url = "{api_url}"
token_env = "TEST_GREEN_TOKEN"
rate_limit = "10/s"
"""


def test_an_account_added_to_the_file_takes_effect_without_a_restart(
    fresh_cluster: Cluster,
) -> None:
    cluster = fresh_cluster
    cluster.sim.put_account("green-api", NEW_ID, token=CANARY, chats=[{"id": "79150000001@c.us"}])
    worker = cluster.start_worker("w1", concurrency=2)
    job = {"provider": "green-api", "account": NEW_ID, "chat_id": "79150000001@c.us"}
    task_id = cluster.producer.enqueue(job)

    # Nobody knows the account yet: the job waits, safely, and status says why.
    key = f"green-api:{NEW_ID}"
    eventually(lambda: cluster.redis.zscore(KEYS.unknown, key), 10, "the job waiting")
    time.sleep(1.5)  # several reload checks pass: still nothing to do, and nothing dead-lettered
    assert cluster.app.AsyncResult(task_id).state == "PENDING"
    assert len(cluster.dead_letters) == 0
    status = cluster.cli("status", "--json")
    report = json.loads(status.stdout)
    assert report["accounts"]["unknown"] == {key: 1}
    assert any(f"1 jobs wait for {key}" in line for line in report["attention"])

    accounts = cluster.workdir / "accounts.toml"
    accounts.write_text(accounts.read_text() + new_account(cluster.simulator.url))
    added = time.monotonic()
    assert cluster.result(task_id, timeout=60)["outcome"] == "archived"
    took = time.monotonic() - added
    # Within the reload interval (0.5 s here; 10 s by default, and a minute at most).
    assert took < 10, took
    assert "accounts file reloaded: 3 accounts (1 added, 0 removed)" in worker.log()
    assert worker.process.poll() is None  # type: ignore[union-attr]  # the same process
    assert cluster.redis.zscore(KEYS.unknown, key) is None


def test_an_account_removed_from_the_file_keeps_its_jobs_waiting(fresh_cluster: Cluster) -> None:
    cluster = fresh_cluster
    accounts = cluster.workdir / "accounts.toml"
    accounts.write_text(accounts.read_text() + new_account(cluster.simulator.url))
    cluster.sim.put_account("green-api", NEW_ID, token=CANARY, chats=[{"id": "79150000002@c.us"}])
    worker = cluster.start_worker("w1", concurrency=2)
    first = cluster.producer.enqueue(
        {"provider": "green-api", "account": NEW_ID, "chat_id": "79150000002@c.us"}
    )
    assert cluster.result(first)["outcome"] == "archived"

    accounts.write_text(accounts.read_text().replace(new_account(cluster.simulator.url), ""))
    eventually(lambda: "1 removed" in worker.log(), 10, "the reload")
    later = cluster.producer.enqueue(
        {"provider": "green-api", "account": NEW_ID, "chat_id": "79150000003@c.us"}
    )
    key = f"green-api:{NEW_ID}"
    eventually(lambda: cluster.redis.zscore(KEYS.unknown, key), 10, "the job waiting")
    assert cluster.app.AsyncResult(later).state == "PENDING"
    assert len(cluster.dead_letters) == 0
