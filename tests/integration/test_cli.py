"""``chat-archiver`` as people run it: a real process, real Redis, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import redis

from tests.conftest import CANARY, GREEN_ID, KEYS, accounts_toml
from tests.support import run_cli
from worker.sandbox.local import CeleryProcess
from worker.stores.deadletters import DeadLetter, DeadLetterStore

pytestmark = pytest.mark.integration

JOBS = "chat-archiver:jobs"  # the job store, where the producer puts every job


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(accounts_toml("http://127.0.0.1:9"))
    return {
        **os.environ,
        "ARCHIVER_BROKER_URL": redis_url,
        "ARCHIVER_ACCOUNTS_FILE": str(accounts),
        "TEST_GREEN_TOKEN": CANARY,
        "TEST_WASSENGER_TOKEN": CANARY + "w",
    }


def run(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, stdin=stdin, timeout=60)


def test_enqueue_one_job_prints_its_id(env: dict[str, str], redis_url: str) -> None:
    done = run(
        env,
        "enqueue",
        "--provider",
        "green-api",
        "--account",
        GREEN_ID,
        "--chat-id",
        "79001234567@c.us",
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) == 36  # a task id
    assert redis.Redis.from_url(redis_url).hlen(JOBS) == 1


def test_enqueue_refuses_a_bad_job_in_one_line(env: dict[str, str], redis_url: str) -> None:
    done = run(
        env, "enqueue", "--provider", "green-api", "--account", GREEN_ID, "--chat-id", "+7 900"
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "Error: chat_id: '+7 900' is not a green-api chat id "
        "(79001234567@c.us, 120363043968066561@g.us or 123456789012345@lid)"
    )
    assert redis.Redis.from_url(redis_url).hlen(JOBS) == 0


def test_enqueue_csv_reports_refused_lines(
    env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(
        "provider,account,chat_id,request_id\n"
        f"green-api,{GREEN_ID},79001234567@c.us,a\n"
        f"green-api,{GREEN_ID},not-a-chat,b\n"
        "\n"
        f"green-api,{GREEN_ID},79001234568@c.us,c,extra-cell\n"
        f"wassenger,{GREEN_ID},447362053576@c.us,d\n"
        f"green-api,{GREEN_ID},120363043968066561@g.us\n"
    )
    done = run(env, "enqueue", "--file", str(jobs))
    assert done.returncode == 1
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("line 3: chat_id: 'not-a-chat'")
    assert lines[1] == "line 5: more cells than the header names"
    assert lines[2].startswith("line 6: account: '7105187566' is not a wassenger device id")
    assert lines[-1] == "read 5 rows: enqueued 2, already pending 0, refused 3"
    assert redis.Redis.from_url(redis_url).hlen(JOBS) == 2


def test_enqueue_jsonl_from_stdin(env: dict[str, str], redis_url: str) -> None:
    stdin = (
        f'{{"provider": "green-api", "account": "{GREEN_ID}", "chat_id": "79001234567@c.us"}}\n'
        "this is not json\n"
        f'{{"provider": "green-api", "account": "{GREEN_ID}", "chat_id": "79001234569@c.us"}}\n'
    )
    done = run(env, "enqueue", "--file", "-", stdin=stdin)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0].startswith("line 2: not a JSON object")
    assert done.stdout.strip().endswith("read 3 rows: enqueued 2, already pending 0, refused 1")
    assert redis.Redis.from_url(redis_url).hlen(JOBS) == 2


def test_dlq_show_and_purge_with_confirmation(env: dict[str, str], redis_url: str) -> None:
    store = DeadLetterStore(redis.Redis.from_url(redis_url, decode_responses=True), "chat-archiver")
    ids = [
        store.add(
            DeadLetter(
                reason="chat_not_found",
                job={
                    "provider": "green-api",
                    "account": GREEN_ID,
                    "chat_id": f"7900123456{n}@c.us",
                },
                detail="HTTP 400: chat not found",
            )
        )
        for n in range(3)
    ]
    shown = run(env, "dlq", "show", ids[0])
    assert shown.returncode == 0 and "7900123456" in shown.stdout
    short = run(env, "dlq", "show", "nope")
    assert short.returncode == 2
    assert short.stderr.strip() == "Error: ID 'nope': give at least 6 characters of the id"
    missing = run(env, "dlq", "show", "nope-nope")
    assert missing.returncode == 1 and missing.stderr.strip() == "Error: no dead letter 'nope-nope'"
    assert run(env, "dlq", "show", ids[1][:8]).returncode == 0  # a prefix, as list prints it

    declined = run(env, "dlq", "purge", "--reason", "chat_not_found", stdin="n\n")
    assert declined.returncode == 1 and len(store) == 3  # asked, refused: nothing deleted
    unsaid = run(env, "dlq", "purge")  # says which entries, or nothing happens
    assert unsaid.returncode == 2
    assert unsaid.stderr.strip() == "Error: say which entries: ids, --reason, --account or --all"
    purged = run(env, "dlq", "purge", ids[0], "--yes")
    assert purged.returncode == 0 and "purged 1" in purged.stdout
    assert sorted(e.id for e in store.iter()) == sorted(ids[1:])
    listed = run(env, "dlq", "list")
    assert listed.returncode == 0 and "2 dead letters" in listed.stdout


def test_unreachable_redis_is_one_line_without_its_password(env: dict[str, str]) -> None:
    url = "redis://:hunter2-password@127.0.0.1:1/0"
    done = run({**env, "ARCHIVER_BROKER_URL": url}, "dlq", "list")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: cannot reach Redis at redis://:**@127.0.0.1:1/0")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "hunter2" not in done.stderr


def test_status_reads_the_queues_from_the_broker(env: dict[str, str], redis_url: str) -> None:
    # State and broker in different databases: the queues are in the broker's.
    broker_url = redis_url.rsplit("/", 1)[0] + "/1"
    env = {**env, "ARCHIVER_BROKER_URL": broker_url, "ARCHIVER_REDIS_URL": redis_url}
    # A raw producer's message, not yet stored by a router: in the broker's intake.
    redis.Redis.from_url(broker_url).lpush("archive", b"{}")
    # A job stored for an account no worker's accounts file knows: it waits, and status says so.
    chat = ("--chat-id", "79001234567@c.us")
    unknown = ("--provider", "green-api", "--account", "1111111111", *chat)
    assert run(env, "enqueue", *unknown).returncode == 0
    done = run(env, "status", "--json")
    assert done.returncode == 1, done.stderr  # no worker answers, and the unknown account
    report = json.loads(done.stdout)
    assert report["queues"]["intake"] == 1  # read from the broker's database, not the state's
    assert report["accounts"]["unknown"] == {"green-api:1111111111": 1}
    assert any("1 jobs wait for green-api:1111111111" in line for line in report["attention"])
    assert "no worker answers" in report["attention"]


def test_status_unhealthy_is_1_and_a_wrong_setting_is_2(
    env: dict[str, str], redis_url: str
) -> None:
    # A health check tells "unhealthy" (1, with the reason) from "wrongly configured" (2).
    url = "redis://:hunter2-password@127.0.0.1:1/0"
    down = run({**env, "ARCHIVER_REDIS_URL": redis_url, "ARCHIVER_BROKER_URL": url}, "status")
    assert down.returncode == 1, down.stdout + down.stderr
    assert "cannot read the status from" in down.stdout and "hunter2" not in down.stdout
    wrong = run({**env, "ARCHIVER_LEASE_TIMEOUT": "half a minute"}, "status")
    assert wrong.returncode == 2, wrong.stdout + wrong.stderr
    assert "ARCHIVER_LEASE_TIMEOUT" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1


def test_worker_refuses_a_wrong_accounts_file_at_start(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[accounts]]\nprovider = "green-api"\nid = "7105187566"\n'
        'api_url = "https://x.test"\ntoken_env = "MISSING_TOKEN_VAR"\n'
    )
    worker = CeleryProcess(
        ["worker", "-P", "solo"],
        {**env, "ARCHIVER_ACCOUNTS_FILE": str(bad)},
        tmp_path / "worker.log",
    ).start()
    assert worker.process is not None
    assert worker.process.wait(60) != 0
    assert (
        f"chat-archiver: {bad}: account 1 (green-api 7105187566): token_env: environment "
        "variable MISSING_TOKEN_VAR is not set"
    ) in worker.log()


def test_limits_shows_each_account_limiter(env: dict[str, str], redis_url: str) -> None:
    done = run(env, "limits", "--json")
    assert done.returncode == 0, done.stderr
    states = {(s["account"], s["method"]): s for s in json.loads(done.stdout)}
    green = states[(f"green-api:{GREEN_ID}", "archiveChat")]
    assert green["allowed_per_second"] == 10 and green["rate_limited"] == 0
    assert green["late"] == 0
    assert ("wassenger:61b37a069cba0c15d6c81c8e", "archive") in states
    assert all(method in ("archiveChat", "archive") for _, method in states)  # unused: hidden
    table = run(env, "limits")
    assert table.returncode == 0 and "archiveChat" in table.stdout


def test_sweep_of_an_account_without_a_policy_is_one_line(env: dict[str, str]) -> None:
    done = run(env, "sweep", "--provider", "green-api", "--account", GREEN_ID)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"Error: green-api:{GREEN_ID} has no [accounts.sweep] policy in the accounts file"
    )


def test_dlq_reads_awkward_and_corrupt_entries_without_a_traceback(
    env: dict[str, str], redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = DeadLetterStore(client, "chat-archiver")
    awkward = store.add(
        DeadLetter(
            reason="unexpected_response",
            job={"provider": "green-api", "account": GREEN_ID, "chat_id": "7900\ud800@c.us"},
            detail="x" * 1_000_000,
            excerpt=f'POST /waInstance{GREEN_ID}/archiveChat/{CANARY}" [/] \\ \\"',
        )
    )
    # As the store wrote it before: redact() over the JSON text swallowed an escape.
    corrupt = "c0ffee" + "0" * 26
    broken = '{"excerpt": "/waInstance1/x/***" y", "reason": "chat_not_found"}'
    client.hset(KEYS.dlq_entries, corrupt, broken)
    client.zadd(KEYS.dlq_index, {corrupt: 1.0})

    listed = run(env, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert awkward[:8] in listed.stdout and "1 dead letter" in listed.stdout
    assert listed.stderr.startswith(f"corrupt entry {corrupt} skipped (JSONDecodeError")
    shown = run(env, "dlq", "show", awkward[:8])
    assert shown.returncode == 0 and "[/]" in shown.stdout and CANARY not in shown.stdout
    assert run(env, "dlq", "show", "c0ffee").returncode == 1
    purged = run(env, "dlq", "purge", "--all", "--yes")
    assert purged.returncode == 0 and purged.stdout.strip() == "purged 2"
    for done in (listed, shown, purged):
        assert "Traceback" not in done.stdout + done.stderr
