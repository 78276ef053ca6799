"""Store behaviour the other unit tests left unasserted, found by the mutation run (see
tests/MUTATION.md): what closing a circuit clears, whose chats are unarchivable, a dead-letter
store's id lookups and corrupt entries, how a Lua script's header is read, and how a job ends
from the store (dead-lettered from its stored message, waiting at the front of its list)."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import GREEN_ID, KEYS, Env, green_accounts_toml, use_environment
from tests.support import JobDesk
from worker.celery_app import create_app
from worker.contract import envelope
from worker.contract.history import ATTEMPTS_HEADER, FIRST_ATTEMPT_HEADER, Delivery
from worker.contract.outcomes import DeadLettered, Outcome, Reason
from worker.contract.tasks import ARCHIVE_TASK
from worker.stores import endings as endings_module
from worker.stores import scripts
from worker.stores.clock import PinnedClock
from worker.stores.deadletters import (
    CorruptDeadLetter,
    DeadLetter,
    DeadLetterStore,
    _salvaged_count_field,
)
from worker.stores.endings import Endings, RunRef
from worker.stores.jobs import Lease, NewJob
from worker.stores.keys import ready_queue
from worker.stores.writes import Writes

# --- circuit ------------------------------------------------------------------------------------


def test_closing_a_circuit_clears_its_probe_claim_and_chain_and_says_if_it_was_open(
    archiver_env: Env,
) -> None:
    circuit = archiver_env.services.circuit
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    assert circuit.trip(account, "unauthorized", "401", probing=False, chain="chain-1") is not None
    archiver_env.redis.set(KEYS.circuit_probe(account.key), "probe-job")
    assert archiver_env.redis.exists(KEYS.probe_chain(account.key))

    assert circuit.close(account) is True
    assert not circuit.is_open(account)
    assert not archiver_env.redis.exists(KEYS.circuit_probe(account.key))
    assert not archiver_env.redis.exists(KEYS.probe_chain(account.key))
    assert circuit.paused_accounts() == []
    assert circuit.close(account) is False  # closed already


def test_an_overdue_probe_with_no_chain_running_starts_one_now(archiver_env: Env) -> None:
    """A chain lost while its probe was due: the next park must start a new chain at once (a
    wait of 0), not take "0 seconds" for "no chain to start"."""
    clock = PinnedClock(1_800_000_000.0)
    archiver_env.services.use_clock(clock)
    circuit = archiver_env.services.circuit
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    circuit.trip(account, "unauthorized", "401", probing=False, chain="chain-1")
    archiver_env.redis.delete(KEYS.probe_chain(account.key))  # the chain's task was lost
    clock.advance(archiver_env.settings.circuit_cooldown + 5)  # and its probe is overdue
    assert circuit.chain_to_start(account, "chain-2") == 0.0
    assert circuit.chain_to_start(account, "chain-3") is None  # chain-2 runs now


def test_every_paused_account_is_listed(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    many = tmp_path / "three.toml"
    many.write_text(green_accounts_toml(7_105_000_001, 3))
    env = use_environment(monkeypatch, archiver_env.settings.broker_url, many)
    for n, account in enumerate(env.accounts):
        env.services.circuit.trip(account, "unauthorized", "401", probing=False, chain=f"c{n}")
    assert sorted(env.services.circuit.paused_accounts()) == sorted(a.key for a in env.accounts)


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
    with pytest.raises(CorruptDeadLetter) as raised:
        store.get("bad00001")
    assert str(raised.value).startswith("bad00001: corrupt entry (JSONDecodeError")


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
    assert scripts._libraries(["outer", "inner", "third"], []) == ["inner", "outer", "third"]


def test_a_script_loaded_afresh_runs_with_its_libraries(archiver_env: Env) -> None:
    scripts.load.cache_clear()  # every other test reads the scripts parsed once per process
    try:
        script = scripts.load("take_lease")
        assert script.keys == ("jobs", "active", "runs", "deliveries")
        assert "clock_us" in script.source  # its library, before its body
        status, deliveries = script.run(
            archiver_env.redis,
            keys={"jobs": "t:j", "active": "t:a", "runs": "t:r", "deliveries": "t:d"},
            args={"now": "", "id": "x", "run": "r", "lease_us": 1, "deliveries_ttl": 1},
        )
        assert (status, int(deliveries)) == ("stale", 0)
    finally:
        scripts.load.cache_clear()


# --- a job dead-lettered from its stored message (the janitor, the maximum pause) --------------


def test_a_stored_job_is_dead_lettered_once_with_its_history(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = archiver_env.services
    # The result backend on the test Redis (the process's app may be configured already).
    app = create_app(archiver_env.settings)
    monkeypatch.setattr(endings_module, "app", app)
    kwargs = {"provider": "green-api", "account": GREEN_ID, "chat_id": "79000000001@c.us"}
    history = {ATTEMPTS_HEADER: 2, FIRST_ATTEMPT_HEADER: 100.0}
    message = envelope.build(ARCHIVE_TASK, "t-1", kwargs, "archive.ready", history=history)
    services.jobs.accept([NewJob("t-1", f"green-api:{GREEN_ID}", message)])
    endings = Endings(services)

    entry = endings.dead_letter_stored("t-1", Reason.UNAUTHORIZED, "paused too long")
    assert entry is not None
    assert (entry.reason, entry.detail, entry.task_id) == ("unauthorized", "paused too long", "t-1")
    assert entry.attempts == 2 and entry.first_attempt_at == 100.0
    assert entry.last_attempt_at is not None and entry.last_attempt_at > 100.0  # none: now
    assert entry.worker == socket.gethostname()
    assert services.dead_letters.get(entry.id) == entry
    assert services.jobs.record("t-1") is None
    outcomes = services.metrics.outcomes()
    assert outcomes[("green-api", GREEN_ID, "dead_lettered", "unauthorized")] == 1
    # No run reports this ending: the result backend says it, as a run would.
    result = app.AsyncResult("t-1")
    assert result.state == "FAILURE"
    assert isinstance(result.result, DeadLettered)
    assert (result.result.reason, result.result.detail) == ("unauthorized", "paused too long")
    assert result.result.dead_letter_id == entry.id
    # The job has ended: a second try changes nothing.
    assert endings.dead_letter_stored("t-1", Reason.UNAUTHORIZED, "again") is None
    assert len(services.dead_letters) == 1
    app.close()


def test_a_job_held_back_by_the_rate_limit_waits_at_the_front_of_its_list(
    archiver_env: Env,
) -> None:
    services = archiver_env.services
    desk = JobDesk(services, archiver_env.accounts)
    job = {"provider": "green-api", "account": GREEN_ID}
    for n in (1, 2, 3):
        desk.put({**job, "chat_id": f"7900000000{n}@c.us"}, task_id=f"t-{n}")
    task_id, kwargs, headers = desk.take()
    assert task_id == "t-1"
    assert services.jobs.take_lease(task_id, "run-1", 100)[0] is Lease.OK
    ref = RunRef(task_id, "run-1", f"green-api:{GREEN_ID}", kwargs)
    delivery = Delivery.from_headers(task_id, "w@h", headers)
    assert Endings(services).wait(ref, delivery, front=True)
    assert services.jobs.wait_head(f"green-api:{GREEN_ID}", 10) == ["t-1", "t-2", "t-3"]


# --- what an ending writes beside itself (found by the mutation run's second pass) --------------


def leased_run(env: Env, chat: str, task_id: str) -> tuple[RunRef, Delivery]:
    """A job of GREEN_ID put into the store, dispatched and leased by a run, as a worker has it."""
    desk = JobDesk(env.services, env.accounts)
    desk.put({"provider": "green-api", "account": GREEN_ID, "chat_id": chat}, task_id=task_id)
    taken, kwargs, headers = desk.take()
    assert taken == task_id
    assert env.services.jobs.take_lease(task_id, f"run-{task_id}", 100)[0] is Lease.OK
    ref = RunRef(task_id, f"run-{task_id}", f"green-api:{GREEN_ID}", kwargs)
    return ref, Delivery.from_headers(task_id, "w@h", headers)


def test_an_ending_records_the_chat_among_its_accounts_recent_outcomes(archiver_env: Env) -> None:
    services = archiver_env.services
    ref, _ = leased_run(archiver_env, "79000000001@c.us", "t-1")
    assert Endings(services).final(ref, Outcome.ARCHIVED, latencies=[0.25])
    [recent] = services.metrics.recent("green-api", GREEN_ID)
    assert (recent["outcome"], recent["chat_id"]) == ("archived", "79000000001@c.us")
    assert services.metrics.recent("wassenger", GREEN_ID) == []  # per provider and account
    assert services.metrics.latency()[("green-api", GREEN_ID)]["sum"] == 0.25


def test_only_no_messages_marks_a_chat_unarchivable_and_for_its_own_account(
    archiver_env: Env,
) -> None:
    services = archiver_env.services
    endings = Endings(services)
    for n, reason in ((1, Reason.NO_MESSAGES), (2, Reason.CHAT_NOT_FOUND)):
        chat = f"7900000000{n}@c.us"
        ref, _ = leased_run(archiver_env, chat, f"t-{n}")
        entry = DeadLetter(reason=str(reason), job=dict(ref.job), detail="", task_id=ref.task_id)
        assert endings.final(ref, Outcome.DEAD_LETTERED, reason=str(reason), entry=entry)
    assert services.unarchivable.since("green-api", GREEN_ID, 0) == {"79000000001@c.us"}
    assert services.unarchivable.since("wassenger", GREEN_ID, 0) == set()


@pytest.mark.parametrize("ending", ["wait", "park"])
def test_a_run_that_waits_or_parks_keeps_its_call_latencies_and_its_message(
    archiver_env: Env, ending: str
) -> None:
    services = archiver_env.services
    ref, delivery = leased_run(archiver_env, "79000000001@c.us", "t-1")
    endings = Endings(services)
    if ending == "wait":
        assert endings.wait(ref, delivery, at=time.time() + 60, latencies=[0.5, 1.5])
    else:
        assert endings.park(ref, delivery, latencies=[0.5, 1.5])
    assert services.metrics.latency()[("green-api", GREEN_ID)]["sum"] == 2.0
    stored = services.jobs.record("t-1")
    assert stored is not None and stored.task_id == "t-1"
    task, kwargs, _ = envelope.unpack(stored.message)
    assert (task, kwargs) == (ARCHIVE_TASK, dict(ref.job))
    routing = json.loads(stored.message)["properties"]["delivery_info"]["routing_key"]
    assert routing == ready_queue(archiver_env.settings.queue)


def test_a_stored_job_dead_lettered_by_the_janitor_releases_its_chat(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = archiver_env.services
    app = create_app(archiver_env.settings)  # its result backend on the test Redis
    monkeypatch.setattr(endings_module, "app", app)
    chat = "79000000001@c.us"
    JobDesk(services, archiver_env.accounts).put(
        {"provider": "green-api", "account": GREEN_ID, "chat_id": chat}, task_id="t-1"
    )
    pending = services.pending.key("green-api", GREEN_ID, chat)
    assert services.pending.claim(pending, "t-1").won
    assert Endings(services).dead_letter_stored("t-1", Reason.UNKNOWN_ACCOUNT, "gone")
    assert not archiver_env.redis.exists(pending)
    app.close()


# --- dead-letter counts -------------------------------------------------------------------------


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


# --- recorded writes ----------------------------------------------------------------------------


def test_recorded_writes_keep_every_field_and_member() -> None:
    writes = Writes().hset("h", "a", 1, mapping={"b": 2, "c": 3}).hset("h", mapping={"d": 4})
    writes.zadd("z", {"m1": 1, "m2": 2.5})
    assert writes.commands == [
        ("HSET", "h", "a", 1, "b", 2, "c", 3),
        ("HSET", "h", "d", 4),
        ("ZADD", "z", "1.0", "m1", "2.5", "m2"),
    ]
    assert writes.flat()[:2] == [3, 8]
