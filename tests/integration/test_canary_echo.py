"""Issue 9 end to end: a provider that echoes our request, token included, in every form the
simulator's echo fault has (raw, percent-encoded in either case, JSON-escaped, Basic and
Bearer credentials), to a real worker. The canaries are then looked for, in every form, in
the results, the dead letters as `chat-archiver dlq` shows them, Flower's API and task pages,
the worker's and Flower's logs and every key and value in Redis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import GREEN_ID, WASSENGER_CANARY, WASSENGER_ID
from tests.integration.conftest import Cluster
from tests.support import eventually
from tests.unit.test_canary import leaks
from worker.sandbox.local import worker_process
from worker.sandbox.simulator.echo import ECHO_FORMS

pytestmark = pytest.mark.integration


def everything_in(client: redis.Redis) -> str:
    """Every key and value of a Redis database as text (strings, hashes, lists, sets)."""
    chunks = []
    for key in client.scan_iter():
        kind = client.type(key)
        chunks.append(str(key))
        if kind == "string":
            chunks.append(str(client.get(key)))
        elif kind == "hash":
            chunks.append(json.dumps(client.hgetall(key)))
        elif kind == "list":
            chunks.append(json.dumps(client.lrange(key, 0, -1)))
        elif kind == "set":
            chunks.append(json.dumps(sorted(client.smembers(key))))
        elif kind == "zset":
            chunks.append(json.dumps(client.zrange(key, 0, -1)))
    return "\n".join(chunks)


def test_echoed_tokens_reach_no_result_dead_letter_flower_log_or_key(cluster: Cluster) -> None:
    _, flower = cluster.start_flower()
    forms = list(ECHO_FORMS)
    results = []
    task_ids = []
    for provider, account, reason in (
        ("green-api", GREEN_ID, "unexpected_response"),
        ("wassenger", WASSENGER_ID, "invalid_request"),
    ):
        chats = [f"7911100{n:04d}@c.us" for n in range(len(forms))]
        cluster.add_chats(provider, chats)
        # The echoes come back at once, and an undocumented answer makes the adapter read the
        # account's state (getStateInstance, /v1/devices): unlimited here, or a read refused
        # with 429 would pause the account instead of dead-lettering that echo's job.
        cluster.sim.patch_account(
            provider,
            account,
            faults={"echo_next": forms},
            rate_limits={"getStateInstance": None}
            if provider == "green-api"
            else {"listDevices": None},
        )
        # One job at a time: each echo makes its run read the account's state, which our own
        # limiter allows about once a second; a burst of them would pause the account instead.
        for chat in chats:
            task_id = cluster.producer.enqueue(
                {"provider": provider, "account": account, "chat_id": chat}
            )
            task_ids.append(task_id)
            result = cluster.result(task_id)
            assert (result["outcome"], result.get("reason")) == ("dead_lettered", reason), result
            results.append(result)
        assert cluster.sim.account(provider, account)["faults"]["echo_next"] == []

    shown = []
    for result in results:
        done = cluster.cli("dlq", "show", result["dead_letter_id"], "--json")
        assert done.returncode == 0, done.stderr
        entry = json.loads(done.stdout)
        # The echo came back and was kept, masked: the check below is not vacuous.
        assert entry["excerpt"].startswith("echo (") and "***" in entry["excerpt"]
        shown.append(done.stdout + done.stderr)
    listed = cluster.cli("dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr

    def all_failed() -> dict[str, Any] | None:
        tasks = flower.get("/api/tasks").json()
        done = all(tasks.get(task_id, {}).get("state") == "FAILURE" for task_id in task_ids)
        return tasks if done else None

    # Dead-lettered: failed, in Flower's words, with the reason as the exception.
    tasks = eventually(all_failed, 20, "Flower seeing every job end", 0.3)
    for task_id, result in zip(task_ids, results, strict=True):
        assert result["reason"] in tasks[task_id]["exception"]
    pages = [flower.get(f"/task/{task_id}").text for task_id in task_ids]
    assert all("archive.chat" in page and "DeadLettered" in page for page in pages)

    everything = "\n".join(
        [
            json.dumps(results),
            *shown,
            listed.stdout + listed.stderr,
            flower.get("/api/tasks").text,
            *pages,
            cluster.logs(),
            everything_in(cluster.redis),
        ]
    )
    assert leaks(everything) == []


@pytest.mark.timeout(120)
def test_a_worker_refuses_to_start_with_a_bad_token_and_does_not_show_it(
    redis_url: str, tmp_path: Path
) -> None:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        f'[[accounts]]\nprovider = "wassenger"\nid = "{WASSENGER_ID}"\ntoken_env = "ZWS_TOKEN"\n'
    )
    env = {
        "ARCHIVER_BROKER_URL": redis_url,
        "ARCHIVER_ACCOUNTS_FILE": str(accounts),
        "ZWS_TOKEN": WASSENGER_CANARY + "\u200b",  # a paste's zero-width space
    }
    worker = worker_process(env, tmp_path / "worker.log", name="refuses").start()
    assert worker.process is not None
    worker.process.wait(60)
    assert worker.process.returncode != 0
    log = worker.log()
    assert (
        f"account 1 (wassenger {WASSENGER_ID}): token_env: the value of ZWS_TOKEN has a "
        "non-ASCII character" in log
    )
    assert leaks(log) == []
