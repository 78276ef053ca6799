"""``chat-archiver status`` answers while Redis refuses writes (reads still work), says why, and
exits 1 (a person is needed), not 2 (cannot tell); ``status`` and ``dlq list`` only read.
In-process (click's CliRunner) against real redis-server processes."""

from __future__ import annotations

import importlib
import json
import re

import pytest
import redis
from click.testing import CliRunner, Result

from tests.conftest import GREEN_ID, Env, use_environment
from tests.unit.conftest import Fill
from tests.unit.test_deadletters import entry
from worker.cli import main
from worker.sandbox.local import PrivateRedis


def status(*args: str) -> Result:
    return CliRunner().invoke(main, ["status", *args])


def test_status_says_redis_is_full_and_needs_a_person(archiver_env: Env, fill: Fill) -> None:
    fill()
    done = status("--json")
    assert done.exit_code == 1, done.output
    report = json.loads(done.stdout)
    state = report["redis"]["state"]
    assert (state["accepts_writes"], state["refusal"]) == (False, "maxmemory")
    assert state["used_memory"] > state["maxmemory"] > 0
    assert state["maxmemory_policy"] == "noeviction"
    assert re.fullmatch(
        r"Redis is full: used [\d.]+ MB of maxmemory [\d.]+ MB, policy noeviction: workers take "
        r"no new job and enqueues fail until then; free memory in Redis or raise its maxmemory",
        report["attention"][0],
    ), report["attention"]
    # The rest is read too.
    assert report["queues"] == {"intake": 0, "ready": 0}
    assert report["jobs"]["stored"] == 0
    assert report["attention"][1:] == [
        "no worker heartbeat (a heartbeat is a write: Redis refuses them)"
    ]

    text = status()
    assert text.exit_code == 1, text.output
    assert re.search(
        r"^redis: refuses writes \(maxmemory\), used [\d.]+ MB of maxmemory [\d.]+ MB, "
        r"policy noeviction$",
        text.stdout,
        re.M,
    ), text.stdout
    assert "  - Redis is full: used " in text.stdout


def test_status_says_a_read_only_replica_or_misconf(
    archiver_env: Env,
    replica: tuple[PrivateRedis, PrivateRedis],
    misconf: PrivateRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MISCONF refuses PING too: our clients send none (worker/stores/client.py), so the whole
    status is read under it as under a read-only replica."""
    for server, refusal, says in [
        (replica[1], "read-only replica", "Redis is a read-only replica: "),
        (misconf, "MISCONF", "Redis stopped writes (MISCONF): its last RDB snapshot failed"),
    ]:
        use_environment(monkeypatch, server.url, archiver_env.accounts_file)
        done = status("--json")
        assert done.exit_code == 1, done.output
        report = json.loads(done.stdout)
        assert report["redis"]["state"]["refusal"] == refusal
        assert report["attention"][0].startswith(says), report["attention"]
        assert report["attention"][1:] == [
            "no worker heartbeat (a heartbeat is a write: Redis refuses them)"
        ]
        assert report["queues"] == {"intake": 0, "ready": 0}
        text = status()
        assert text.exit_code == 1, text.output
        assert f"redis: refuses writes ({refusal})" in text.stdout
        assert "intake queue 0, ready queues 0" in text.stdout


def test_status_says_what_it_can_read_when_the_rest_fails_while_redis_refuses_writes(
    archiver_env: Env, misconf: PrivateRedis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a read of the status fail while Redis refuses writes (a client that checks its
    connection with PING, which MISCONF refuses: a stand-in raises that reply), status shows
    what plain clients read and says the rest could not be, exit 1, not 2."""
    use_environment(monkeypatch, misconf.url, archiver_env.accounts_file)

    def refused(*_args: object, **_kwargs: object) -> dict[str, object]:
        raise redis.ResponseError("MISCONF Redis is configured to save RDB snapshots, but ...")

    # The module, not the command of the same name that worker.cli exports.
    module = importlib.import_module("worker.cli.status")
    monkeypatch.setattr(module, "collect_status", refused)
    done = status("--json")
    assert done.exit_code == 1, done.output
    report = json.loads(done.stdout)
    assert set(report) == {"healthy", "unhealthy", "attention", "redis"}
    assert report["redis"]["state"]["refusal"] == "MISCONF"
    assert report["attention"][-1] == (
        "the rest of the status cannot be read while Redis refuses writes"
    )
    text = status()
    assert text.exit_code == 1, text.output
    assert "redis: refuses writes (MISCONF)" in text.stdout
    assert "the rest of the status cannot be read while Redis refuses writes" in text.stdout

    # The same failure with Redis taking writes: the status cannot be read, which a health
    # check reports as unhealthy (exit 1) with the reason, not as a usage error (2).
    use_environment(monkeypatch, redis_url, archiver_env.accounts_file)
    cannot = status()
    assert cannot.exit_code == 1, cannot.output
    assert "cannot read the status from Redis" in cannot.output
    assert "MISCONF Redis is configured" in cannot.output


def test_status_and_dlq_list_only_read(
    archiver_env: Env, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a Redis user that may only read, every write would be refused (NOPERM)."""
    archiver_env.services.dead_letters.add(entry("chat_not_found"))
    admin = archiver_env.redis
    admin.acl_setuser(
        "reader",
        enabled=True,
        passwords=["+reader-pw"],
        keys=["~*"],
        channels=["&*"],
        commands=["-@all", "+@read", "+@connection", "+info", "+time", "+config|get"],
    )
    try:
        reader_url = redis_url.replace("redis://", "redis://reader:reader-pw@", 1)
        use_environment(monkeypatch, reader_url, archiver_env.accounts_file)
        with pytest.raises(redis.exceptions.NoPermissionError):
            redis.Redis.from_url(reader_url).set("probe", "1")  # the user is as described

        done = status("--json")
        assert done.exit_code == 1, done.output  # no worker: needs a person, not "cannot tell"
        report = json.loads(done.stdout)
        assert report["redis"]["state"]["accepts_writes"] is True
        assert report["dead_letters"]["total"] == 1
        assert report["attention"] == [
            "no worker answers",
            "1 dead letters (chat-archiver dlq list)",
        ]
        account = status("--account", f"green-api:{GREEN_ID}")
        assert account.exit_code == 1, account.output
        listed = CliRunner().invoke(main, ["dlq", "list"])
        assert listed.exit_code == 0, listed.output
        assert "chat_not_found" in listed.stdout
    finally:
        admin.acl_deluser("reader")
