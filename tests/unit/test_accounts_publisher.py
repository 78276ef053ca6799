"""A node publishes its accounts' limits for the dispatcher a batch at a time, then only what its
file changed, and again whatever did not reach Redis (worker/dispatch/registry.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import Env, green_accounts_toml
from tests.support import published_accounts
from worker.dispatch.registry import PUBLISH_BATCH, AccountsPublisher, dispatch_entry
from worker.services import AccountsFile
from worker.stores.jobs import JobStore

Batches = list[dict[str, Any]]


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> Batches:
    """Every batch the publisher hands the job store, each entry's JSON text read back."""
    sent: Batches = []
    original = JobStore.publish_accounts

    def recording(self: JobStore, entries: Mapping[str, Any]) -> None:
        sent.append({k: v if v is None else json.loads(v) for k, v in entries.items()})
        original(self, entries)

    monkeypatch.setattr(JobStore, "publish_accounts", recording)
    return sent


def publisher(env: Env, path: Path) -> AccountsPublisher:
    services = env.services
    return AccountsPublisher(
        AccountsFile(path, check_every=0), services.jobs, services.keys, services.limiter
    )


def rewrite(path: Path, text: str) -> None:
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))  # a change the file's identity shows


def expected(env: Env, path: Path) -> dict[str, Any]:
    """What the node publishes of each account in the file."""
    accounts = AccountsFile(path).get()
    return {a.key: dispatch_entry(a, env.services.limiter) for a in accounts}


def stored(env: Env, entries: dict[str, Any]) -> dict[str, Any]:
    """``entries`` as the accounts hash keeps them: each limit under its account's limiter key
    (the limiter's own, which dispatch.lua takes permits on) in place of the method."""
    keys = env.services.keys
    return {
        account: {
            "l": {
                task: [keys.limiter(account, method), *rest]
                for task, (method, *rest) in entry["l"].items()
            }
        }
        for account, entry in entries.items()
    }


def test_every_account_is_published_a_batch_at_a_time(
    archiver_env: Env, tmp_path: Path, batches: Batches
) -> None:
    path = tmp_path / "many.toml"
    text = green_accounts_toml(7_100_000_000, 1_234)
    path.write_text(text.replace('"7100000007"', '"7100000007"\nrate_limit = "2/s"', 1))
    node = publisher(archiver_env, path)
    node.publish(node.accounts.get())
    published = published_accounts(archiver_env.services.jobs)
    assert published == stored(archiver_env, expected(archiver_env, path))
    assert published["green-api:7100000007"] != published["green-api:7100000008"]
    assert [len(batch) for batch in batches] == [PUBLISH_BATCH, PUBLISH_BATCH, 234]


def test_a_changed_file_sends_only_what_changed(
    archiver_env: Env, tmp_path: Path, batches: Batches
) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text(green_accounts_toml(7_100_000_000, 3))
    node = publisher(archiver_env, path)
    node.publish(node.accounts.get())
    batches.clear()
    changed = green_accounts_toml(7_100_000_001, 3).replace(
        '"7100000002"', '"7100000002"\nrate_limit = "3/s"'
    )
    rewrite(path, changed)  # 7100000000 gone, 7100000002 slower, 7100000003 new
    node.check()
    entries = expected(archiver_env, path)
    assert batches == [
        {
            "green-api:7100000002": entries["green-api:7100000002"],
            "green-api:7100000003": entries["green-api:7100000003"],
            "green-api:7100000000": None,
        }
    ]
    assert published_accounts(archiver_env.services.jobs) == stored(archiver_env, entries)
    batches.clear()
    node.check()
    assert batches == []  # nothing changed since


def test_a_publish_that_did_not_finish_is_sent_again_at_the_next_check(
    archiver_env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "many.toml"
    path.write_text(green_accounts_toml(7_100_000_000, 1_200))
    node = publisher(archiver_env, path)
    original = JobStore.publish_accounts
    calls = 0

    def failing_second(self: JobStore, entries: Mapping[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise redis.ConnectionError("Redis went away")
        original(self, entries)

    monkeypatch.setattr(JobStore, "publish_accounts", failing_second)
    with pytest.raises(redis.ConnectionError):
        node.publish(node.accounts.get())
    assert len(published_accounts(archiver_env.services.jobs)) == PUBLISH_BATCH
    node.check()  # the file did not change, and Redis holds some of it: all of it goes again
    assert published_accounts(archiver_env.services.jobs) == stored(
        archiver_env, expected(archiver_env, path)
    )


def test_accounts_redis_lost_are_published_again(archiver_env: Env, tmp_path: Path) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text(green_accounts_toml(7_100_000_000, 3))
    node = publisher(archiver_env, path)
    node.publish(node.accounts.get())
    archiver_env.redis.delete(archiver_env.services.keys.accounts)  # a Redis restarted empty
    node.check()
    assert published_accounts(archiver_env.services.jobs) == stored(
        archiver_env, expected(archiver_env, path)
    )
