"""``chat-archiver status`` as a health check (worker/cli/status.py): 0 healthy, 1 unhealthy with
one reason a line, 2 a usage or configuration error; and neither it nor ``limits`` nor the
exporter needs the provider tokens, since none of them calls a provider. In-process (click's
CliRunner) against a real redis-server, except the exporter, run as its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner, Result

from tests.conftest import GREEN_ID, WASSENGER_ID, Env
from tests.support import JobDesk, eventually, run_cli
from tests.unit.test_deadletters import entry
from worker.cli import main
from worker.sandbox.local import free_port
from worker.services import get_accounts

TOKEN_VARIABLES = ("TEST_GREEN_TOKEN", "TEST_WASSENGER_TOKEN")


def status(*args: str) -> Result:
    return CliRunner().invoke(main, ["status", *args])


@pytest.fixture
def alive(archiver_env: Env) -> Env:
    """A worker node whose heartbeat is fresh (its housekeeper's step, as a node writes it)."""
    archiver_env.services.jobs.tick(
        "celery@node#1", [], janitor_ms=0, node_timeout=60, unknown_grace=60
    )
    return archiver_env


def pause(env: Env, provider: str, account_id: str) -> None:
    account = get_accounts().get(provider, account_id)
    env.services.circuit.trip(account, "unauthorized", "HTTP 401: bad token", probing=False)


def reasons(result: Result) -> list[str]:
    """The lines under ``unhealthy:``."""
    lines = result.stdout.splitlines()
    if "unhealthy:" not in lines:
        return []
    found = []
    for line in lines[lines.index("unhealthy:") + 1 :]:
        if not line.startswith("  - "):
            break
        found.append(line[4:])
    return found


def test_healthy_is_0_and_says_all_well(alive: Env) -> None:
    done = status()
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines()[-1] == "all well"
    report = json.loads(status("--json").stdout)
    assert (report["healthy"], report["unhealthy"], report["attention"]) == (True, [], [])


def test_no_worker_alive_is_unhealthy(archiver_env: Env) -> None:
    done = status()
    assert done.exit_code == 1, done.output
    assert reasons(done) == ["no worker answers"]


def test_dead_letters_need_a_person_but_are_unhealthy_only_past_a_given_threshold(
    alive: Env,
) -> None:
    for n in range(3):
        alive.services.dead_letters.add(entry("chat_not_found", created=float(n)))
    done = status()
    assert done.exit_code == 0, done.output
    assert "needs attention:\n  - 3 dead letters (chat-archiver dlq list)\n" in done.stdout
    assert "unhealthy:" not in done.stdout
    assert status("--max-dead-letters", "3").exit_code == 0
    over = status("--max-dead-letters", "2")
    assert over.exit_code == 1, over.output
    assert reasons(over) == [
        "3 dead letters, more than --max-dead-letters 2 (chat-archiver dlq list)"
    ]


def test_one_paused_account_among_others_is_a_note_every_account_paused_is_unhealthy(
    alive: Env,
) -> None:
    pause(alive, "green-api", GREEN_ID)
    done = status()
    assert done.exit_code == 0, done.output
    assert f"  - green-api:{GREEN_ID} paused (unauthorized): 0 jobs waiting" in done.stdout
    limited = status("--max-paused", "0")
    assert limited.exit_code == 1
    assert reasons(limited) == ["1 accounts paused, more than --max-paused 0"]

    pause(alive, "wassenger", WASSENGER_ID)
    both = status("--json")
    assert both.exit_code == 1, both.output
    report = json.loads(both.stdout)
    assert report["unhealthy"] == ["every account is paused (2): nothing can be archived"]
    assert len(report["attention"]) == 3  # each paused account, and the verdict


def test_strict_makes_anything_that_needs_a_person_unhealthy(alive: Env) -> None:
    alive.services.dead_letters.add(entry("no_messages"))
    assert status().exit_code == 0
    strict = status("--strict")
    assert strict.exit_code == 1
    assert reasons(strict) == ["1 dead letters (chat-archiver dlq list)"]


def test_redis_unreachable_is_unhealthy_with_its_reason_and_no_password(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARCHIVER_BROKER_URL", "redis://:hunter2-password@127.0.0.1:1/0")
    done = run_cli("status")  # a fresh process: settings and clients built from this URL
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = done.stdout.splitlines()[1:]
    assert done.stdout.startswith("unhealthy:\n")
    assert line.startswith("  - cannot read the status from Redis at redis://:**@127.0.0.1:1/0:")
    assert "hunter2" not in done.stdout + done.stderr
    as_json = json.loads(run_cli("status", "--json").stdout)
    assert as_json["healthy"] is False and as_json["unhealthy"] == [line[4:]]


@pytest.mark.parametrize(
    "args",
    [
        ["--max-dead-letters", "-1"],
        ["--max-paused", "many"],
        ["--no-such-option"],
        ["--account", "green-api:1999999999"],
    ],
)
def test_a_usage_error_is_2(alive: Env, args: list[str]) -> None:
    done = status(*args)
    assert done.exit_code == 2, done.output
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("Error: ")


def test_a_configuration_error_is_2(alive: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIVER_LEASE_TIMEOUT", "half a minute")
    done = run_cli("status")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "ARCHIVER_LEASE_TIMEOUT" in done.stderr


@pytest.fixture
def no_tokens(alive: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    """The accounts file names token variables this environment does not set."""
    for name in TOKEN_VARIABLES:
        monkeypatch.delenv(name)
    return alive


def test_status_and_limits_need_no_provider_token(no_tokens: Env) -> None:
    pause(no_tokens, "green-api", GREEN_ID)  # an account's state is read without its token
    done = run_cli("status", "--account", f"green-api:{GREEN_ID}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"green-api:{GREEN_ID} paused (unauthorized)" in done.stdout
    assert "TEST_GREEN_TOKEN" not in done.stdout + done.stderr
    limits = run_cli("limits")
    assert limits.returncode == 0, limits.stderr
    assert f"wassenger:{WASSENGER_ID}" in limits.stdout
    # A command that calls a provider still needs its token, and says which.
    sweep = run_cli("sweep", "--provider", "green-api", "--account", GREEN_ID, "--dry-run")
    assert sweep.returncode != 0
    assert "token_env: environment variable TEST_GREEN_TOKEN is not set" in sweep.stderr


def test_the_exporter_needs_no_provider_token(no_tokens: Env) -> None:
    pause(no_tokens, "green-api", GREEN_ID)
    port = free_port()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "metrics", "--port", str(port)],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        scrape = eventually(
            lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5),
            30,
            "the exporter answering",
            0.2,
            ignoring=(httpx.TransportError,),
        )
        assert scrape.status_code == 200
        labels = f'account="{GREEN_ID}",provider="green-api",reason="unauthorized"'
        assert f"chat_archiver_account_paused{{{labels}}} 1.0" in scrape.text
        assert "chat_archiver_workers_alive 1.0" in scrape.text
    finally:
        exporter.terminate()
        _, stderr = exporter.communicate(timeout=10)
    assert "TEST_GREEN_TOKEN" not in stderr, stderr


def test_a_paused_accounts_line_counts_the_jobs_that_came_since_it_paused(alive: Env) -> None:
    """Jobs enqueued after the pause wait in the account's list until its next probe turn parks
    them: they wait for the account all the same."""
    pause(alive, "green-api", GREEN_ID)
    desk = JobDesk(alive.services, get_accounts())
    desk.put({"provider": "green-api", "account": GREEN_ID, "chat_id": "79001234567@c.us"})
    done = status("--json")
    [paused] = json.loads(done.stdout)["accounts"]["paused"]
    assert (paused["parked"], paused["waiting"]) == (0, 1)
    assert f"  - green-api:{GREEN_ID} paused (unauthorized): 1 jobs waiting" in status().stdout
