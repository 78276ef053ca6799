"""``chat-archiver enqueue`` while Redis refuses writes: it sends the rows not enqueued again for
``--retry-for`` seconds, then prints the summary and one ``Error:`` line saying what happened
and what a rerun does, exit 1, never a traceback. In-process (click's CliRunner) against the
test Redis at maxmemory."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

import worker.producer
from tests.conftest import GREEN_ID, Env, use_environment
from tests.support import stored_jobs
from tests.unit.conftest import Fill
from tests.unit.test_producer_refused import lose_the_reply_of_the_next_step, waiting_ids
from worker.celery_app import create_app
from worker.cli import main
from worker.producer import ArchiveProducer
from worker.sandbox.local import PrivateRedis
from worker.stores.jobs import NewJob

HEADER = "provider,account,chat_id\n"


def row(n: int) -> str:
    return f"green-api,{GREEN_ID},7900200{n:04d}@c.us\n"


def enqueue(*args: str) -> Result:
    return CliRunner().invoke(main, ["enqueue", *args])


def error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines
    assert isinstance(result.exception, SystemExit), result.exception  # never a traceback
    return lines[0]


def summary(result: Result) -> str:
    return result.stdout.strip().splitlines()[-1]


def stored_chats(env: Env) -> Counter[str]:
    return Counter(job.body.kwargs["chat_id"] for job in stored_jobs(env.services))


def chats(count: int) -> Counter[str]:
    return Counter(row(n).split(",")[2].strip() for n in range(count))


@pytest.fixture
def env(archiver_env: Env, producer: ArchiveProducer) -> Env:
    return archiver_env


FULL = (
    r"Error: Redis refused writes \(Redis is full: used [\d.]+ MB of maxmemory [\d.]+ MB, "
    r"policy noeviction\): "
)
RERUN = (
    "; free memory in Redis or raise its maxmemory, then run the same command again: it "
    "enqueues each row whose chat has no job pending (those not published, and any whose job "
    "has ended by then) and reports the others 'already pending'"
)
UNCERTAIN = (
    "; the {} uncertain rows, listed above with their job ids, may have been stored: sent again "
    "with those ids in a task_id column, each is stored once under its id, even if its job has "
    "ended by then (while its result is kept)"
)


def test_a_full_redis_is_one_line_saying_what_a_rerun_does(
    env: Env, fill: Fill, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(HEADER + row(0) + "green-api,1,bad\n" + "".join(row(n) for n in range(1, 699)))
    fill()
    result = enqueue("--file", str(path), "--retry-for", "0.5")
    assert result.exit_code == 1
    assert re.fullmatch(
        FULL + "0 enqueued, 699 not published, 0 uncertain" + re.escape(RERUN), error_line(result)
    ), error_line(result)
    assert summary(result) == "read 700 rows: enqueued 0, already pending 0, refused 1"
    assert "line 3: account: " in result.stdout  # the refused row, from the unsent rest
    assert stored_jobs(env.services) == []


def test_a_full_redis_part_way_then_a_rerun_enqueues_only_what_is_missing(
    env: Env,
    producer: ArchiveProducer,
    fill: Fill,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis fills up once the file's first 500 rows are stored: the second batch of the
    file is refused whole, nothing of it stored; the same command again, memory freed, stores
    exactly the missing rows."""
    path = tmp_path / "jobs.csv"
    path.write_text(HEADER + "".join(row(n) for n in range(700)))
    real = producer.store.submit
    sent: list[int] = []

    def full_after_500_jobs(jobs: Sequence[NewJob], **options: Any) -> list[str]:
        if sum(sent) >= 500:
            fill()
        sent.append(len(jobs))
        return real(jobs, **options)

    monkeypatch.setattr(producer.store, "submit", full_after_500_jobs)
    result = enqueue("--file", str(path), "--retry-for", "0")
    assert result.exit_code == 1
    assert re.fullmatch(
        FULL + "500 enqueued, 200 not published, 0 uncertain" + re.escape(RERUN),
        error_line(result),
    ), error_line(result)
    assert summary(result) == "read 700 rows: enqueued 500, already pending 0, refused 0"
    assert stored_chats(env) == chats(500)

    # Memory freed, the same command again: what the line said.
    monkeypatch.setattr(producer.store, "submit", real)
    env.redis.config_set("maxmemory", 0)
    rerun = enqueue("--file", str(path))
    assert rerun.exit_code == 0, rerun.output
    assert summary(rerun) == "read 700 rows: enqueued 200, already pending 500, refused 0"
    assert stored_chats(env) == chats(700)  # each chat once


def test_it_waits_out_a_short_refusal(env: Env, fill: Fill, tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(HEADER + "".join(row(n) for n in range(300)))
    fill()
    freed = threading.Timer(1.0, env.redis.config_set, ("maxmemory", 0))
    freed.start()
    try:
        result = enqueue("--file", str(path), "--retry-for", "30")
    finally:
        freed.join()
    assert result.exit_code == 0, result.output
    assert summary(result) == "read 300 rows: enqueued 300, already pending 0, refused 0"
    assert stored_chats(env) == chats(300)


@pytest.mark.parametrize("went_through", [True, False], ids=["stored", "not-stored"])
def test_uncertain_rows_are_sent_again_under_their_ids(
    env: Env,
    producer: ArchiveProducer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    went_through: bool,
) -> None:
    """The command resends the lost batch's rows under the ids it sent them with: stored
    already or not, each is one job under its first id."""
    path = tmp_path / "jobs.csv"
    path.write_text(HEADER + "".join(row(n) for n in range(20)))
    lost = lose_the_reply_of_the_next_step(monkeypatch, producer.store, went_through=went_through)
    result = enqueue("--file", str(path))
    assert result.exit_code == 0, result.output
    assert summary(result) == "read 20 rows: enqueued 20, already pending 0, refused 0"
    [ids] = lost
    assert len(ids) == 20
    assert waiting_ids(env) == ids
    assert stored_chats(env) == chats(20)


def test_one_job_under_a_full_redis_is_one_line(env: Env, fill: Fill) -> None:
    fill()
    job = ("--provider", "green-api", "--account", GREEN_ID, "--chat-id", "79001234567@c.us")
    result = enqueue(*job, "--retry-for", "0")
    assert result.exit_code == 1
    assert re.fullmatch(
        FULL + "0 enqueued, 1 not published, 0 uncertain; free memory in Redis or raise its "
        "maxmemory, then run the same command again",
        error_line(result),
    ), error_line(result)


def test_one_uncertain_job_is_one_line_naming_its_id(
    env: Env, producer: ArchiveProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection lost at each try: the job's fate is unknown, and the line says how to
    send it again under the id it was sent with."""
    real = producer.store.submit
    tried: list[str] = []

    def lost_every_time(jobs: Sequence[NewJob], **options: Any) -> list[str]:
        tried.extend(job.task_id for job in jobs)
        real(jobs, **options)
        raise redis.ConnectionError("Connection closed by server.")

    monkeypatch.setattr(producer.store, "submit", lost_every_time)
    job = ("--provider", "green-api", "--account", GREEN_ID, "--chat-id", "79001234567@c.us")
    result = enqueue(*job, "--retry-for", "0.5")
    assert result.exit_code == 1
    assert len(tried) > 1 and set(tried) == {tried[0]}  # resent under its first id
    assert error_line(result) == (
        "Error: lost the connection to Redis (Connection closed by server.): 0 enqueued, "
        "0 not published, 1 uncertain; check that Redis can be reached, then run the same "
        f"command again with --task-id {tried[0]} (it may have been stored: under that id it "
        "is stored once either way)"
    )
    assert waiting_ids(env) == [tried[0]]

    monkeypatch.setattr(producer.store, "submit", real)
    again = enqueue(*job, "--task-id", tried[0])
    assert (again.exit_code, again.stdout.strip()) == (0, tried[0])
    assert waiting_ids(env) == [tried[0]]


def test_a_job_goes_under_the_task_id_it_is_given(env: Env, tmp_path: Path) -> None:
    job = ("--provider", "green-api", "--account", GREEN_ID, "--chat-id", "79001234567@c.us")
    done = enqueue(*job, "--task-id", "crm-42")
    assert (done.exit_code, done.stdout.strip()) == (0, "crm-42")
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        json.dumps(
            {
                "provider": "green-api",
                "account": GREEN_ID,
                "chat_id": "79001234568@c.us",
                "task_id": "crm-43",
            }
        )
        + "\n"
    )
    assert enqueue("--file", str(path)).exit_code == 0
    assert waiting_ids(env) == ["crm-42", "crm-43"]
    wrong = enqueue(*job, "--task-id", "no spaces please")
    assert wrong.exit_code == 1
    assert error_line(wrong).startswith("Error: task_id: 'no spaces please' is not a task id")


@pytest.fixture
def unreachable(archiver_env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process's settings and default producer pointed at a port where a Redis was and
    nothing listens any more; yields its URL."""
    with PrivateRedis() as server:
        url = server.url
    settings = use_environment(monkeypatch, url, archiver_env.accounts_file).settings
    app = create_app(settings)
    worker.producer._default.install(ArchiveProducer(app, settings))
    yield url
    worker.producer._default.forget()
    app.close()


def test_a_redis_that_cannot_be_reached_is_still_one_line(unreachable: str, tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(HEADER + "".join(row(n) for n in range(5)))
    result = enqueue("--file", str(path), "--retry-for", "0")
    assert result.exit_code == 1
    line = error_line(result)
    assert re.fullmatch(
        r"Error: lost the connection to Redis \(Error 111 connecting to 127\.0\.0\.1:\d+\. "
        r"Connection refused\.\): 0 enqueued, 0 not published, 5 uncertain; check that Redis "
        r"can be reached, then run the same command again: .*" + re.escape(UNCERTAIN.format(5)),
        line,
    ), line
    listed = re.findall(r"^line \d: uncertain: may be queued as job \S+$", result.stdout, re.M)
    assert len(listed) == 5
