"""Store behaviour the other unit tests leave unasserted, much of it found by the mutation run (see
tests/MUTATION.md): how a run's ending writes its result in Celery's format in the same step,
what an ending writes beside itself, how a job ends from the store (dead-lettered where it waits),
whose chats are unarchivable, a dead-letter store's id lookups and corrupt entries, and how a Lua
script's header is read."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from tests.conftest import GREEN_ID, KEYS, Env
from tests.support import JobDesk
from worker.celery_app import create_app
from worker.contract.history import ATTEMPTS_HEADER, FIRST_ATTEMPT_HEADER, Delivery, Ticket
from worker.contract.outcomes import DeadLettered, Deferred, Outcome, Reason
from worker.contract.tasks import ARCHIVE_TASK
from worker.stores import scripts
from worker.stores.clock import MICROS, PinnedClock
from worker.stores.deadletters import (
    CorruptEntry,
    DeadLetter,
    DeadLetterStore,
    _salvaged_count_field,
)
from worker.stores.endings import Endings, RunRef, refuses_writes
from worker.stores.jobs import Held, JobBody, NewJob, StoredJob, lease_member
from worker.stores.keys import result_key
from worker.stores.writes import Writes

ACCOUNT = f"green-api:{GREEN_ID}"


@pytest.fixture
def app(archiver_env: Env) -> Iterator[Celery]:
    """An app whose result backend is the test Redis: what a producer reads results with."""
    celery = create_app(archiver_env.settings)
    yield celery
    celery.close()


@pytest.fixture
def endings(archiver_env: Env, app: Celery) -> Endings:
    return Endings(archiver_env.services, app.backend)


def leased_run(env: Env, chat: str, task_id: str) -> tuple[RunRef, Delivery]:
    """A job of GREEN_ID put into the store and handed out, as its run has it."""
    desk = JobDesk(env.services, env.accounts)
    desk.put({"provider": "green-api", "account": GREEN_ID, "chat_id": chat}, task_id=task_id)
    taken, kwargs, headers = desk.take()
    assert taken == task_id
    ticket = Ticket.from_headers(headers)
    assert ticket is not None
    delivery = Delivery.from_headers(task_id, "w@h", headers)
    stored = StoredJob(
        task_id, ticket.account, ARCHIVE_TASK, ticket.mark, ticket.lost, JobBody(kwargs)
    )
    return RunRef(stored, lease_member(task_id, ticket.token)), delivery


# --- results, in Celery's format, written with the ending ------------------------------------


def test_a_final_ending_is_a_success_result_a_celery_client_reads(
    archiver_env: Env, endings: Endings, app: Celery
) -> None:
    ref, _ = leased_run(archiver_env, "79000000001@c.us", "t-1")
    result = {"outcome": "archived", "chat_id": "79000000001@c.us"}
    assert endings.final(ref, Outcome.ARCHIVED, result=result)
    read = app.AsyncResult("t-1")
    assert (read.state, read.result) == ("SUCCESS", result)
    assert read.date_done is not None
    assert read.get(timeout=1) == result
    meta = json.loads(archiver_env.redis.get(result_key("t-1")))
    assert meta["task_id"] == "t-1" and meta["traceback"] is None and meta["children"] == []
    ttl = archiver_env.redis.ttl(result_key("t-1"))
    assert 0 < ttl <= archiver_env.settings.result_expires
    # In the same step: the job has left the store and its outcome is counted.
    assert archiver_env.services.jobs.record("t-1") is None
    outcomes = archiver_env.services.metrics.outcomes()
    assert outcomes == {("green-api", GREEN_ID, "archived", ""): 1}


def test_a_dead_lettered_ending_is_a_failure_result_with_its_reason(
    archiver_env: Env, endings: Endings, app: Celery
) -> None:
    ref, _ = leased_run(archiver_env, "79000000001@c.us", "t-1")
    entry = DeadLetter(reason="chat_not_found", job=dict(ref.kwargs), detail="404", task_id="t-1")
    error = DeadLettered("chat_not_found", "404", entry.id)
    assert endings.final(
        ref, Outcome.DEAD_LETTERED, error=error, reason="chat_not_found", entry=entry
    )
    read = app.AsyncResult("t-1")
    assert read.state == "FAILURE"
    assert isinstance(read.result, DeadLettered)
    assert (read.result.reason, read.result.detail, read.result.dead_letter_id) == (
        "chat_not_found",
        "404",
        entry.id,
    )
    assert archiver_env.services.dead_letters.read(entry.id) == entry


@pytest.mark.parametrize("ending", ["wait", "park"])
def test_a_job_that_waits_has_a_retry_result_saying_why(
    archiver_env: Env, endings: Endings, app: Celery, ending: str
) -> None:
    ref, delivery = leased_run(archiver_env, "79000000001@c.us", "t-1")
    if ending == "wait":
        assert endings.wait(ref, delivery, "HTTP 503: again in 30s", delay=30)
    else:
        assert endings.wait(ref, delivery, "paused (unauthorized)", park=True)
    read = app.AsyncResult("t-1")
    assert read.state == "RETRY" and not read.ready()
    assert isinstance(read.result, Deferred)
    assert str(read.result) in ("HTTP 503: again in 30s", "paused (unauthorized)")
    assert json.loads(archiver_env.redis.get(result_key("t-1")))["date_done"] is None


def test_a_retry_countdown_runs_on_redis_clock_not_the_nodes(
    archiver_env: Env, endings: Endings
) -> None:
    """The store's clock (Redis's; pinned here a year away from this host's) times the retry:
    a node whose own clock is off waits neither longer nor shorter (issue 18)."""
    clock = PinnedClock(time.time() + 365 * 86400)
    archiver_env.services.use_clock(clock)
    ref, delivery = leased_run(archiver_env, "79000000001@c.us", "t-1")
    assert endings.wait(ref, delivery, "HTTP 503: again in 10s", delay=10)
    keys = archiver_env.services.keys
    assert archiver_env.redis.zscore(keys.delayed, f"{ACCOUNT}|t-1") == clock.micros + 10 * MICROS
    clock.advance(9.9)
    assert archiver_env.services.jobs.dispatch(10).jobs == []
    clock.advance(0.1)
    assert [j.task_id for j in archiver_env.services.jobs.dispatch(10).jobs] == ["t-1"]


def test_a_producer_waiting_on_a_result_is_told_when_the_job_ends(
    archiver_env: Env, endings: Endings, app: Celery
) -> None:
    """close.lua publishes the result on its key, as Celery's Redis backend does: a producer
    blocked in ``AsyncResult.get`` learns the outcome at once."""
    ref, _ = leased_run(archiver_env, "79000000001@c.us", "t-1")
    got: list[Any] = []
    waiting = threading.Thread(target=lambda: got.append(app.AsyncResult("t-1").get(timeout=10)))
    waiting.start()

    def subscribed() -> bool:
        return bool(archiver_env.redis.pubsub_numsub(result_key("t-1"))[0][1])

    deadline = time.monotonic() + 5
    while not subscribed() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert subscribed()
    assert endings.final(ref, Outcome.ARCHIVED, result={"outcome": "archived"})
    waiting.join(5)
    assert got == [{"outcome": "archived"}]


def test_a_run_that_no_longer_holds_its_job_writes_no_result(
    archiver_env: Env, endings: Endings, app: Celery
) -> None:
    """A second ending of the same run (its reply lost, the call made again) or a run whose
    lease went to another: the first result stands, nothing else is written."""
    ref, delivery = leased_run(archiver_env, "79000000001@c.us", "t-1")
    assert endings.final(ref, Outcome.ARCHIVED, result={"outcome": "archived"})
    assert not endings.wait(ref, delivery, "again", delay=1)
    assert not endings.final(ref, Outcome.ARCHIVED, result={"outcome": "other"})
    assert app.AsyncResult("t-1").result == {"outcome": "archived"}
    assert archiver_env.services.metrics.outcomes() == {("green-api", GREEN_ID, "archived", ""): 1}


def test_a_message_no_dispatcher_handed_out_gets_a_failure_result(
    archiver_env: Env, endings: Endings, app: Celery
) -> None:
    entry = DeadLetter(reason="invalid_request", job={}, detail="by hand", task_id="by-hand")
    endings.dead_letter_unstored(entry)
    read = app.AsyncResult("by-hand")
    assert read.state == "FAILURE" and isinstance(read.result, DeadLettered)
    assert read.result.dead_letter_id == entry.id
    assert archiver_env.services.dead_letters.read(entry.id) == entry


def test_an_ending_records_its_outcome_while_redis_is_full(
    archiver_env: Env, endings: Endings, app: Celery
) -> None:
    """Redis at maxmemory (noeviction) refuses commands that add data, but lets a script whose
    first write frees some (close.lua's ZREM of the lease) run whole: the ending, its result and
    its outcome are recorded while Redis is full."""
    ref, _ = leased_run(archiver_env, "79000000001@c.us", "t-1")
    client = archiver_env.redis
    client.config_set("maxmemory", "1")
    try:
        with pytest.raises(redis.ResponseError):
            client.set("t:k", "v")  # full indeed
        assert endings.final(ref, Outcome.ARCHIVED, result={"outcome": "archived"})
    finally:
        client.config_set("maxmemory", "0")
    assert app.AsyncResult("t-1").result == {"outcome": "archived"}
    assert archiver_env.services.jobs.record("t-1") is None


def test_an_ending_waits_while_redis_is_a_read_only_replica(
    archiver_env: Env, endings: Endings, app: Celery
) -> None:
    """After a failover the node may talk to a replica for a while (READONLY): the ending is
    tried again until Redis takes it, within the outage grace, instead of losing the outcome
    the run has (issue 18)."""
    ref, _ = leased_run(archiver_env, "79000000001@c.us", "t-1")
    client = archiver_env.redis
    client.execute_command("REPLICAOF", "127.0.0.1", "1")  # a master that never answers
    promoted = threading.Timer(0.5, lambda: client.execute_command("REPLICAOF", "NO", "ONE"))
    try:
        promoted.start()
        started = time.monotonic()
        assert endings.final(ref, Outcome.ARCHIVED, result={"outcome": "archived"})
        assert time.monotonic() - started >= 0.3
    finally:
        promoted.join()
        client.execute_command("REPLICAOF", "NO", "ONE")
    assert app.AsyncResult("t-1").result == {"outcome": "archived"}
    assert archiver_env.services.jobs.record("t-1") is None


@pytest.mark.parametrize(
    "command",
    [
        ("CONFIG", "SET", "maxmemory", "1"),  # full: OOM
        ("REPLICAOF", "127.0.0.1", "1"),  # a replica after a failover: READONLY
    ],
)
def test_what_redis_answers_while_it_refuses_writes_is_recognised(
    archiver_env: Env, command: tuple[str, ...]
) -> None:
    """As redis-py raises them: it maps OOM and READONLY to their own exception classes and
    strips the code from the message."""
    client = archiver_env.redis
    client.execute_command(*command)
    try:
        with pytest.raises(redis.ResponseError) as raised:
            client.eval("return redis.call('SET', KEYS[1], 'v')", 1, "t:k")
    finally:
        client.config_set("maxmemory", "0")
        client.execute_command("REPLICAOF", "NO", "ONE")
    assert refuses_writes(raised.value)
    assert not refuses_writes(redis.ResponseError("WRONGTYPE Operation against a key"))


# --- a job dead-lettered from where it waits (the janitor, the maximum pause) ------------------


def test_a_stored_job_is_dead_lettered_once_with_its_history(
    archiver_env: Env, endings: Endings, app: Celery
) -> None:
    services = archiver_env.services
    kwargs = {"provider": "green-api", "account": GREEN_ID, "chat_id": "79000000001@c.us"}
    history = {ATTEMPTS_HEADER: 2, FIRST_ATTEMPT_HEADER: 100.0}
    mark = services.keys.pending(ACCOUNT, "79000000001@c.us")
    job = NewJob("t-1", ACCOUNT, ARCHIVE_TASK, mark, JobBody(kwargs, history))
    assert services.jobs.submit([job], held=Held.SKIP) == ["new"]
    wait_key = services.keys.wait(ACCOUNT)

    entry = endings.dead_letter_stored("t-1", Reason.UNAUTHORIZED, "paused too long", wait_key)
    assert entry is not None
    assert (entry.reason, entry.detail, entry.task_id) == ("unauthorized", "paused too long", "t-1")
    assert entry.attempts == 2 and entry.first_attempt_at == 100.0
    assert entry.last_attempt_at is not None and entry.last_attempt_at > 100.0  # none: now
    assert entry.worker == socket.gethostname()
    assert services.dead_letters.read(entry.id) == entry
    assert services.jobs.record("t-1") is None
    assert services.jobs.wait_head(ACCOUNT, 10) == []
    assert not archiver_env.redis.exists(mark)  # its chat is free for a new job
    outcomes = services.metrics.outcomes()
    assert outcomes[("green-api", GREEN_ID, "dead_lettered", "unauthorized")] == 1
    # No run reports this ending: the result backend says it, as a run would.
    result = app.AsyncResult("t-1")
    assert result.state == "FAILURE"
    assert isinstance(result.result, DeadLettered)
    assert (result.result.reason, result.result.detail) == ("unauthorized", "paused too long")
    assert result.result.dead_letter_id == entry.id
    # The job has ended: a second try changes nothing.
    assert endings.dead_letter_stored("t-1", Reason.UNAUTHORIZED, "again", wait_key) is None
    assert len(services.dead_letters) == 1


def test_a_stored_job_that_left_its_list_is_not_dead_lettered(
    archiver_env: Env, endings: Endings
) -> None:
    """It was handed out meanwhile (a run holds it): the janitor's ending changes nothing."""
    ref, _ = leased_run(archiver_env, "79000000001@c.us", "t-1")
    wait_key = archiver_env.services.keys.wait(ACCOUNT)
    assert endings.dead_letter_stored("t-1", Reason.UNKNOWN_ACCOUNT, "gone", wait_key) is None
    assert len(archiver_env.services.dead_letters) == 0
    assert archiver_env.services.jobs.record("t-1") is not None
    assert endings.final(ref, Outcome.ARCHIVED, result={})  # its run still ends it
    assert endings.dead_letter_stored("gone", Reason.UNKNOWN_ACCOUNT, "x", wait_key) is None


def test_a_job_held_back_by_the_rate_limit_waits_at_the_front_of_its_list(
    archiver_env: Env, endings: Endings
) -> None:
    services = archiver_env.services
    desk = JobDesk(services, archiver_env.accounts)
    job = {"provider": "green-api", "account": GREEN_ID}
    for n in (1, 2, 3):
        desk.put({**job, "chat_id": f"7900000000{n}@c.us"}, task_id=f"t-{n}")
    task_id, kwargs, headers = desk.take()
    assert task_id == "t-1"
    ticket = Ticket.from_headers(headers)
    assert ticket is not None
    stored = StoredJob(task_id, ticket.account, ARCHIVE_TASK, ticket.mark, 0, JobBody(kwargs))
    ref = RunRef(stored, lease_member(task_id, ticket.token))
    delivery = Delivery.from_headers(task_id, "w@h", headers)
    assert endings.wait(ref, delivery, "next permit in 5s", front=True)
    assert services.jobs.wait_head(ACCOUNT, 10) == ["t-1", "t-2", "t-3"]


# --- what an ending writes beside itself ----------------------------------------------------------


def test_only_no_messages_marks_a_chat_unarchivable_and_for_its_own_account(
    archiver_env: Env, endings: Endings
) -> None:
    services = archiver_env.services
    for n, reason in ((1, Reason.NO_MESSAGES), (2, Reason.CHAT_NOT_FOUND)):
        chat = f"7900000000{n}@c.us"
        ref, _ = leased_run(archiver_env, chat, f"t-{n}")
        entry = DeadLetter(reason=str(reason), job=dict(ref.kwargs), detail="", task_id=ref.task_id)
        error = DeadLettered(str(reason), "", entry.id)
        assert endings.final(
            ref, Outcome.DEAD_LETTERED, error=error, reason=str(reason), entry=entry
        )
    assert services.unarchivable.since("green-api", GREEN_ID, 0) == {"79000000001@c.us"}
    assert services.unarchivable.since("wassenger", GREEN_ID, 0) == set()


@pytest.mark.parametrize("ending", ["wait", "park"])
def test_a_run_that_waits_or_parks_keeps_its_call_latencies_and_its_history(
    archiver_env: Env, endings: Endings, ending: str
) -> None:
    services = archiver_env.services
    ref, delivery = leased_run(archiver_env, "79000000001@c.us", "t-1")
    delivery = delivery.attempted(1234.5)
    if ending == "wait":
        assert endings.wait(ref, delivery, "again", delay=60, latencies=[0.5, 1.5])
    else:
        assert endings.wait(ref, delivery, "paused", park=True, latencies=[0.5, 1.5])
    assert services.metrics.latency()[("green-api", GREEN_ID)]["sum"] == 2.0
    assert services.metrics.outcomes() == {}  # not an outcome: the job has not ended
    stored = services.jobs.record("t-1")
    assert stored is not None and stored.task_id == "t-1"
    assert (stored.account, stored.task, stored.mark) == (ACCOUNT, ARCHIVE_TASK, ref.job.mark)
    assert stored.body.kwargs == dict(ref.kwargs)
    assert stored.body.history[ATTEMPTS_HEADER] == 1
    assert stored.body.history[FIRST_ATTEMPT_HEADER] == 1234.5


def test_an_endings_writes_are_made_in_the_same_step_only_if_the_ending_is(
    archiver_env: Env, endings: Endings
) -> None:
    ref, _ = leased_run(archiver_env, "79000000001@c.us", "t-1")
    assert endings.final(ref, Outcome.ARCHIVED, result={}, latencies=[0.2])
    assert not endings.final(ref, Outcome.ARCHIVED, result={}, latencies=[0.2])
    metrics = archiver_env.services.metrics
    assert sum(metrics.outcomes().values()) == 1
    assert metrics.latency()[("green-api", GREEN_ID)]["0.25"] == 1


# --- unarchivable chats -------------------------------------------------------------------------


def test_unarchivable_chats_are_kept_per_account(archiver_env: Env) -> None:
    chats = archiver_env.services.unarchivable
    pipe = archiver_env.redis.pipeline(transaction=False)
    chats.queue_add(pipe, "green-api", GREEN_ID, "79000000001@c.us")
    pipe.execute()
    assert chats.since("green-api", GREEN_ID, 0) == {"79000000001@c.us"}
    assert chats.since("green-api", "7105000000", 0) == set()
    assert chats.since("wassenger", GREEN_ID, 0) == set()


# --- dead letters -------------------------------------------------------------------------------


def dead_letter(entry_id: str, job: dict[str, str] | None = None) -> DeadLetter:
    return DeadLetter(
        reason="chat_not_found",
        job=job or {"provider": "green-api", "account": GREEN_ID, "chat_id": "79000000001@c.us"},
        detail="404",
        id=entry_id,
        created_at=1.0,
    )


@pytest.fixture
def store(archiver_env: Env) -> DeadLetterStore:
    return archiver_env.services.dead_letters


def test_find_lists_ten_ids_by_default_and_counts_them_all(store: DeadLetterStore) -> None:
    for n in range(12):
        store.add(dead_letter(f"abc{n:02d}"))
    store.add(dead_letter("xyz00"))
    count, ids = store.find("abc")
    assert count == 12
    assert ids == [f"abc{n:02d}" for n in range(10)]


def test_a_unique_prefix_is_eight_characters_unless_a_neighbour_needs_more(
    store: DeadLetterStore,
) -> None:
    for entry_id in ("aaaaaaaaaa00", "aaaaaaaaaa01", "aaaab0000000", "fedcba9876543210"):
        store.add(dead_letter(entry_id))
    assert store.unique_prefix_length(["fedcba9876543210"]) == 8
    # Each of the first two shares eleven characters with its nearest neighbour, one side only.
    assert store.unique_prefix_length(["aaaaaaaaaa00"]) == 12
    assert store.unique_prefix_length(["aaaaaaaaaa01"]) == 12
    assert store.unique_prefix_length(["aaaab0000000"]) == 8


def test_a_corrupt_entry_error_says_which_entry_and_why(store: DeadLetterStore) -> None:
    store.add(dead_letter("good0001"))
    store._redis.hset(KEYS.dlq_entries, "bad00001", '{"reason": "chat_not_found"')
    store._redis.zadd(KEYS.dlq_index, {"bad00001": 2.0})
    found = store.read("bad00001")
    assert isinstance(found, CorruptEntry)
    assert found.summary().startswith("bad00001: corrupt entry (JSONDecodeError")


def test_a_corrupt_entry_without_a_provider_still_gives_its_count_back(
    store: DeadLetterStore,
) -> None:
    # An entry whose job named no provider is counted under "?" (DeadLetter.account).
    entry = dead_letter("noprov01", job={"account": GREEN_ID, "chat_id": "79000000001@c.us"})
    store.add(entry)
    assert store.counts() == {("chat_not_found", f"?:{GREEN_ID}"): 1}
    text = store._redis.hget(KEYS.dlq_entries, "noprov01")
    assert _salvaged_count_field(str(text)) == f"chat_not_found|?:{GREEN_ID}"
    store._redis.hset(KEYS.dlq_entries, "noprov01", str(text)[:-1])  # cut: no longer JSON
    assert store.remove(["noprov01"]) == 1
    assert store.counts() == {}


def test_a_count_that_is_not_a_number_hides_no_other_count(store: DeadLetterStore) -> None:
    store._redis.hset(KEYS.dlq_counts, "chat_not_found|green-api:1", "not a number")
    store.add(dead_letter("good0001"))
    assert store.counts() == {("chat_not_found", f"green-api:{GREEN_ID}"): 1}


def test_removing_a_corrupt_entry_never_takes_a_count_below_zero(
    store: DeadLetterStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.add(dead_letter("bad00001"))
    field = f"chat_not_found|green-api:{GREEN_ID}"
    text = str(store._redis.hget(KEYS.dlq_entries, "bad00001"))
    store._redis.hset(KEYS.dlq_entries, "bad00001", text[:-1])  # no longer JSON
    store._redis.hset(KEYS.dlq_counts, field, 0)  # its count was already given back
    caplog.set_level(logging.WARNING, logger="chat_archiver")
    assert store.remove(["bad00001"]) == 1
    assert int(store._redis.hget(KEYS.dlq_counts, field) or 0) == 0
    assert "dead letter bad00001: removed; its count in" in caplog.text


# --- Lua script headers -------------------------------------------------------------------------


def lua(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "script.lua"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_script_header_declares_its_keys_args_rest_and_libraries(tmp_path: Path) -> None:
    body = (
        "--! keys: first second\n"
        "--! args: now id\n"
        "--!   args: extra\n"
        "--! rest: items\n"
        "--! uses: clock lease\n"
        "return 1\n"
    )
    parsed = scripts._parse(lua(tmp_path, body))
    assert parsed.keys == ("first", "second")
    assert parsed.args == ("now", "id", "extra")
    assert parsed.rest == "items"
    assert parsed.uses == ("clock", "lease")
    assert parsed.body == body
    bare = scripts._parse(lua(tmp_path, "--! keys: *chats\nreturn 1\n"))
    assert bare.keys == ("*chats",) and bare.args == () and bare.rest is None and bare.uses == ()


@pytest.mark.parametrize(
    ("header", "error"),
    [
        ("--! keys: Bad-Name", "'Bad-Name' is not a Lua-friendly name"),
        ("--! rest: one two", "one rest argument at most"),
        ("--! keys: *chats other", "a starred key list must be the only key"),
    ],
)
def test_a_script_header_refuses_what_the_prologue_cannot_express(
    tmp_path: Path, header: str, error: str
) -> None:
    with pytest.raises(ValueError, match=f"script.lua: {error}"):
        scripts._parse(lua(tmp_path, f"{header}\nreturn 1\n"))


def test_libraries_come_in_dependency_order_once_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "outer.lua").write_text("--! uses: inner\n", encoding="utf-8")
    (tmp_path / "lib" / "inner.lua").write_text("-- no uses\n", encoding="utf-8")
    (tmp_path / "lib" / "third.lua").write_text("-- no uses\n", encoding="utf-8")
    monkeypatch.setattr(scripts, "LUA_DIR", tmp_path)
    assert list(scripts._libraries(["outer", "inner", "third"], {})) == ["inner", "outer", "third"]


def test_a_script_loaded_afresh_runs_with_its_libraries(archiver_env: Env) -> None:
    scripts.load.cache_clear()  # every other test reads the scripts parsed once per process
    try:
        script = scripts.load("penalize")
        assert script.keys == ("tat", "stats")
        assert "clock_us" in script.source  # its library, before its body
        waited = script.run(
            archiver_env.redis,
            keys={"tat": "t:tat", "stats": "t:stats"},
            args={"now": "1000000", "delay_us": 500},
        )
        assert int(waited) == 500
        assert archiver_env.redis.get("t:tat") == "1000500"
    finally:
        scripts.load.cache_clear()


def test_every_script_in_the_package_loads(archiver_env: Env) -> None:
    """Each script's header parses and its libraries exist: a rename in lua/lib/ fails here,
    not in a worker."""
    names = sorted(p.stem for p in scripts.LUA_DIR.glob("*.lua"))
    assert names == [
        "acquire",
        "circuit_trip",
        "close",
        "dispatch",
        "penalize",
        "publish_accounts",
        "push_back",
        "resume",
        "submit",
        "take_intake",
        "tick",
    ]
    for name in names:
        script = scripts.load(name)
        assert archiver_env.redis.script_load(script.source)  # it compiles


# --- recorded writes ----------------------------------------------------------------------------


def test_recorded_writes_keep_every_field_and_member() -> None:
    writes = Writes().hset("h", "a", 1).hset("h", "d", 4)
    writes.zadd("z", {"m1": 1, "m2": 2.5})
    assert writes.commands == [
        ("HSET", "h", "a", 1),
        ("HSET", "h", "d", 4),
        ("ZADD", "z", "1.0", "m1", "2.5", "m2"),
    ]
    assert writes.flat()[:2] == [3, 4]
