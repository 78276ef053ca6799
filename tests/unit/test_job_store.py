"""The job store's scripts against a real Redis, on a pinned clock: what is stored, what waits,
what is handed out, in which order, under which rate, with which lease, and how every run ends
once (worker/stores/jobs.py, worker/stores/lua/)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from tests.support import published_accounts
from worker.contract.tasks import ARCHIVE_TASK, SWEEP_TASK, UNARCHIVE_TASK, UNPACED
from worker.stores.clock import MICROS, PinnedClock
from worker.stores.jobs import (
    DISPATCH_LEAD,
    Dispatch,
    Ending,
    Held,
    JobBody,
    JobStore,
    NewJob,
    StoredJob,
    Submitted,
    lease_member,
)
from worker.stores.keys import Keys, result_key
from worker.stores.scripts import ScriptCallError, load
from worker.stores.writes import Writes

A = "green-api:1101000001"
B = "green-api:1101000002"
LEASE = 30.0
CLAIM_TTL = 600
PROBE_TTL = 60.0
LEAD_US = int(DISPATCH_LEAD * MICROS)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def clock() -> PinnedClock:
    return PinnedClock()


@pytest.fixture
def keys() -> Keys:
    return Keys("t")


@pytest.fixture
def store(client: redis.Redis, keys: Keys, clock: PinnedClock) -> JobStore:
    return JobStore(
        client, keys, lease=LEASE, claim_ttl=CLAIM_TTL, probe_ttl=PROBE_TTL, clock=clock
    )


def limit(keys: Keys, account: str, per_second: float = 10, gap_us: int = 0) -> list[Any]:
    """One limit as dispatch.lua reads it: the method (the TAT key is Keys.limiter's of it),
    interval (µs), idle gap (µs)."""
    return ["archiveChat", int(MICROS / per_second), gap_us]


def conf(keys: Keys, account: str, per_second: float = 10, gap_us: int = 0) -> dict[str, Any]:
    """An account's entry in the accounts hash (worker/dispatch/registry.py's shape)."""
    return {"l": {ARCHIVE_TASK: limit(keys, account, per_second, gap_us)}}


def lives_on(store: JobStore, clock: PinnedClock, node: str, seconds: float) -> None:
    """``seconds`` pass while ``node`` heartbeats as a live node does (every third of a lease):
    the fleet is never silent long enough for the janitor to hold back."""
    while seconds > 0:
        step = min(seconds, LEASE / 3)
        clock.advance(step)
        seconds -= step
        store.tick(node, [], janitor_ms=0, node_timeout=600, unknown_grace=600)


def stored_conf(keys: Keys, account: str, per_second: float = 10) -> dict[str, Any]:
    """``conf`` as the accounts hash keeps it: each limit under its limiter key, the one
    dispatch.lua takes permits on."""
    interval = int(MICROS / per_second)
    return {"l": {ARCHIVE_TASK: [keys.limiter(account, "archiveChat"), interval, 0]}}


def chat_of(task_id: str) -> str:
    return f"7900{zlib.crc32(task_id.encode()) % 10**7:07d}@c.us"


def job(
    task_id: str,
    account: str = A,
    *,
    not_before: float | None = None,
    chat: str | None = None,
    history: dict[str, Any] | None = None,
) -> NewJob:
    provider, _, account_id = account.partition(":")
    chat = chat or chat_of(task_id)
    kwargs = {"provider": provider, "account": account_id, "chat_id": chat}
    mark = Keys("t").pending(account, chat)
    return NewJob(task_id, account, ARCHIVE_TASK, mark, JobBody(kwargs, history or {}), not_before)


def sweep(task_id: str) -> NewJob:
    return NewJob(task_id, UNPACED, SWEEP_TASK, "", JobBody({"provider": "green-api"}))


def submit(store: JobStore, *jobs: NewJob, held: Held = Held.KEEP, **options: Any) -> list[str]:
    return store.submit(list(jobs), held=held, **options)


def ids(dispatch: Dispatch) -> list[str]:
    return [j.task_id for j in dispatch.jobs]


def active(store: JobStore) -> dict[str, float]:
    return {
        str(m): float(s) for m, s in store.redis.zrange(store.keys.active, 0, -1, withscores=True)
    }


def pause(store: JobStore, account: str, probe_at: float) -> None:
    """What circuit_trip.lua leaves: the next probe's time in the account's entry, and the
    account due now (so that the dispatcher parks its waiting jobs)."""
    entry = json.loads(store.redis.hget(store.keys.accounts, account) or "{}")
    entry["p"] = int(probe_at * MICROS)
    store.redis.hset(store.keys.accounts, account, json.dumps(entry))
    store.redis.zadd(store.keys.due, {account: store.clock.micros})  # type: ignore[union-attr]


@contextmanager
def listening(client: redis.Redis, channel: str) -> Iterator[Callable[[], list[str]]]:
    """Subscribe to ``channel``; the callable returns what was published on it since."""
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    confirmed = pubsub.get_message(timeout=2)
    assert confirmed is not None and confirmed["type"] == "subscribe"

    def heard() -> list[str]:
        out = []
        while (message := pubsub.get_message(timeout=0.3)) is not None:
            out.append(str(message["data"]))
        return out

    try:
        yield heard
    finally:
        pubsub.close()


# --- submit -------------------------------------------------------------------------------------


def test_submitted_jobs_wait_in_order_and_an_id_is_stored_once(store: JobStore, keys: Keys) -> None:
    store.publish_accounts({A: conf(keys, A)})
    assert submit(store, job("j1"), job("j2"), job("j1")) == ["new", "new", "stored"]
    assert submit(store, job("j2")) == [Submitted.STORED]  # a resend changes nothing
    assert store.wait_head(A, 10) == ["j1", "j2"]
    record = store.record("j2")
    assert record is not None
    assert (record.account, record.task, record.lost) == (A, ARCHIVE_TASK, 0)
    assert record.mark == keys.pending(A, chat_of("j2"))
    assert record.body == job("j2").body
    assert store.redis.zscore(keys.due, A) == store.clock.micros  # type: ignore[union-attr]


def test_a_record_is_its_fields_and_body_and_parses_back() -> None:
    body = JobBody({"chat_id": "1@c.us"}, {"archiver_attempts": 3}, "me@host")
    stored = StoredJob("j1", A, ARCHIVE_TASK, "t:pending:x", 2, body)
    assert stored.record().split("\n", 4)[:4] == [A, ARCHIVE_TASK, "t:pending:x", "2"]
    assert StoredJob.parse("j1", stored.record()) == stored
    other = JobBody({"chat_id": "2@c.us"})
    assert StoredJob.parse("j1", stored.record(other)).body == other


def test_a_copy_of_a_job_that_ended_is_done_only_when_results_are_checked(
    store: JobStore, keys: Keys
) -> None:
    """Ids the caller did not make (a raw resend) are checked against Celery's result keys: a
    job with a result has ended and is not stored again. Ids a producer made are not."""
    store.publish_accounts({A: conf(keys, A)})
    store.redis.set(result_key("ended"), '{"status": "SUCCESS"}')
    assert submit(store, job("ended"), check_results=True) == [Submitted.DONE]
    assert store.record("ended") is None and store.wait_head(A, 10) == []
    assert submit(store, job("ended")) == [Submitted.NEW]


def test_a_copy_of_a_job_waiting_for_its_retry_is_stored_not_done(
    store: JobStore, keys: Keys
) -> None:
    """A job waiting for its retry has a RETRY result (its ending wrote it): a resend of it
    is a copy of a stored job, which has not ended. Submitted.DONE says "a copy of a job that
    has ended"; the router logs it as such."""
    store.publish_accounts({A: conf(keys, A)})
    submit(store, job("j1"))
    [handed] = store.dispatch(1).jobs
    assert store.close(
        "j1",
        handed.member,
        Ending.WAIT,
        account=A,
        record=store.record("j1").record(),  # type: ignore[union-attr]
        delay=30,
        result='{"status": "RETRY"}',
        result_ttl=60,
    )
    assert submit(store, job("j1"), check_results=True) == [Submitted.STORED]


def test_a_job_whose_chat_is_held_is_skipped_with_the_holders_id(
    store: JobStore, keys: Keys
) -> None:
    """Producers (held=skip): the chat's pending mark names the job that holds it; a second job
    for the chat is not stored, and its caller learns the holder's id."""
    store.publish_accounts({A: conf(keys, A)})
    chat = "79001234567@c.us"
    statuses = submit(
        store, job("first", chat=chat), job("second", chat=chat), job("other"), held=Held.SKIP
    )
    assert statuses == ["new", "first", "new"]
    assert store.record("second") is None
    assert store.wait_head(A, 10) == ["first", "other"]
    mark = keys.pending(A, chat)
    assert store.redis.get(mark) == "first"
    assert 0 < store.redis.ttl(mark) <= CLAIM_TTL
    assert submit(store, job("third", chat=chat), held=Held.SKIP) == ["first"]


def test_a_job_whose_chat_is_held_is_kept_when_asked_and_runs_as_a_duplicate(
    store: JobStore, keys: Keys
) -> None:
    """Raw messages (held=keep): stored, and handed out naming the holder, to end as a
    duplicate of it. The holder's mark is left alone."""
    store.publish_accounts({A: conf(keys, A, per_second=1000)})
    chat = "79001234567@c.us"
    mark = keys.pending(A, chat)
    store.redis.set(mark, "holder")
    assert submit(store, job("kept", chat=chat)) == [Submitted.NEW]
    [handed] = store.dispatch(1).jobs
    assert (handed.task_id, handed.holder, handed.mark) == ("kept", "holder", mark)
    assert store.redis.get(mark) == "holder"


def test_a_job_claims_its_chat_at_dispatch_when_nobody_holds_it(
    store: JobStore, keys: Keys
) -> None:
    """A kept job whose holder ended meanwhile holds the chat itself when it is handed out."""
    store.publish_accounts({A: conf(keys, A, per_second=1000)})
    chat = "79001234567@c.us"
    mark = keys.pending(A, chat)
    store.redis.set(mark, "holder")
    submit(store, job("kept", chat=chat))
    store.redis.delete(mark)  # the holder ended
    [handed] = store.dispatch(1).jobs
    assert handed.holder == ""
    assert store.redis.get(mark) == "kept" and 0 < store.redis.ttl(mark) <= CLAIM_TTL
    # A job that holds its own mark is no duplicate of itself.
    store.close("kept", handed.member, Ending.WAIT, account=A, record=_record(store, "kept"))
    [again] = store.dispatch(1).jobs
    assert (again.task_id, again.holder) == ("kept", "")


def test_a_job_without_a_mark_claims_nothing(store: JobStore) -> None:
    submit(store, sweep("s1"))
    [handed] = store.dispatch(1).jobs
    assert (handed.mark, handed.holder) == ("", "")
    assert store.redis.keys("t:pending:*") == []


def test_the_routing_list_leaves_in_the_same_step_as_its_batch_is_stored(
    store: JobStore, keys: Keys
) -> None:
    routing = keys.routing("node-a")
    store.redis.rpush(routing, "raw-1", "raw-2")
    assert submit(store, job("j1"), routing=routing) == ["new"]
    assert not store.redis.exists(routing)
    # A batch whose every message was refused still leaves.
    store.redis.rpush(routing, "raw-3")
    assert store.submit([], held=Held.KEEP, routing=routing) == []
    assert not store.redis.exists(routing)
    # No routing list named: another list is left alone.
    store.redis.rpush(routing, "raw-4")
    submit(store, job("j2"))
    assert store.redis.lrange(routing, 0, -1) == ["raw-4"]


def test_a_batch_wakes_idle_dispatchers_once_and_only_for_work_due_now(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A), B: conf(keys, B)})
    with listening(store.redis, keys.wake) as heard:
        submit(store, job("a1"), job("a2"), job("b1", B))
        assert heard() == ["1"]
        submit(store, job("later", not_before=clock.seconds + 60))
        submit(store, job("a1"))  # stored already
        assert heard() == []


def test_an_eta_waits_in_the_delayed_set(store: JobStore, keys: Keys, clock: PinnedClock) -> None:
    store.publish_accounts({A: conf(keys, A)})
    submit(store, job("j1", not_before=clock.seconds + 5))
    assert store.redis.zscore(keys.delayed, f"{A}|j1") == clock.micros + 5 * MICROS
    first = store.dispatch(10)
    # Looked at again when it is due, less the lead (its job may be handed out that early).
    assert first.jobs == [] and first.next_in == pytest.approx(5 - DISPATCH_LEAD)
    clock.advance(5)
    assert ids(store.dispatch(10)) == ["j1"]
    # A not-before that has passed already: it waits in its list at once.
    submit(store, job("j2", not_before=clock.seconds - 1))
    assert store.wait_head(A, 10) == ["j2"]


# --- accounts -----------------------------------------------------------------------------------


def test_jobs_of_an_account_nobody_knows_wait_until_a_worker_publishes_it(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    seen_at = clock.seconds
    submit(store, job("j1"))
    assert store.dispatch(10).jobs == []
    assert store.unknown_accounts() == {A: seen_at}
    clock.advance(1)
    with listening(store.redis, keys.wake) as heard:
        store.publish_accounts({A: conf(keys, A)})
        assert heard() == ["1"]
    assert store.unknown_accounts() == {}
    assert published_accounts(store) == {A: stored_conf(keys, A)}
    assert ids(store.dispatch(10)) == ["j1"]


def test_an_account_withdrawn_from_the_file_turns_unknown_at_its_next_turn(
    store: JobStore, keys: Keys
) -> None:
    store.publish_accounts({A: conf(keys, A)})
    submit(store, job("j1"))
    store.publish_accounts({A: None})
    assert published_accounts(store) == {}
    assert store.dispatch(10).jobs == []
    assert list(store.unknown_accounts()) == [A]
    assert store.wait_head(A, 10) == ["j1"]  # still waiting, nothing lost
    store.forget_unknown(A)
    assert store.unknown_accounts() == {}


def test_accounts_are_published_in_batches(store: JobStore, keys: Keys) -> None:
    many = {f"green-api:{n}": conf(keys, f"green-api:{n}") for n in range(1_201)}
    store.publish_accounts(many)
    assert published_accounts(store) == {name: stored_conf(keys, name) for name in many}


# --- dispatch: order, permits, leases -----------------------------------------------------------


def test_dispatch_spaces_an_accounts_jobs_at_its_rate(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, per_second=10)})
    submit(store, *(job(f"j{n}") for n in range(5)))
    first = store.dispatch(10)
    assert ids(first) == ["j0"]  # one slot now, the next 100 ms on
    assert first.jobs[0].slot == clock.micros and first.now_us == clock.micros
    assert first.next_in == pytest.approx(0.1 - DISPATCH_LEAD)  # woken just before, by the lead
    clock.advance(0.05)
    assert store.dispatch(10).jobs == []
    clock.advance(0.05)
    [second] = store.dispatch(10).jobs
    assert second.task_id == "j1" and second.slot - first.jobs[0].slot == 100_000


def test_a_job_is_handed_out_up_to_the_lead_before_its_slot(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    """So that its message reaches a worker in time: its run sleeps to the slot."""
    store.publish_accounts({A: conf(keys, A, per_second=10)})
    submit(store, job("j0"), job("j1"))
    store.dispatch(10)
    clock.advance(0.1 - DISPATCH_LEAD - 0.001)
    assert store.dispatch(10).jobs == []
    clock.advance(0.001)
    [early] = store.dispatch(10).jobs
    assert early.slot - clock.micros == LEAD_US


def test_an_idle_limit_gives_its_slot_now_and_keeps_the_next_a_gap_further(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    """lua/lib/gcra.lua: a limit that was idle reserves "now", and the next slot is one interval
    and the gap away; a busy limit spaces slots one interval apart."""
    store.publish_accounts({A: conf(keys, A, per_second=10, gap_us=5_000)})
    submit(store, *(job(f"j{n}") for n in range(4)))
    started = clock.micros
    [first] = store.dispatch(10).jobs
    assert first.slot == started
    tat = keys.limiter(A, "archiveChat")
    assert int(store.redis.get(tat)) == started + 105_000  # type: ignore[arg-type]
    clock.advance(0.09)  # within the lead of the next slot: busy, no gap
    [second] = store.dispatch(10).jobs
    assert second.slot == started + 105_000
    assert int(store.redis.get(tat)) == started + 205_000  # type: ignore[arg-type]
    clock.advance(5)  # idle again: the gap comes back
    [third] = store.dispatch(10).jobs
    assert third.slot == clock.micros
    assert int(store.redis.get(tat)) == clock.micros + 105_000  # type: ignore[arg-type]


def test_accounts_take_turns_in_the_order_of_their_next_slot(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, 10), B: conf(keys, B, 10)})
    submit(store, job("a1"), job("a2"), job("a3"), job("b1", B), job("b2", B))
    assert ids(store.dispatch(10)) == ["a1", "b1"]
    clock.advance(0.1)
    assert ids(store.dispatch(10)) == ["a2", "b2"]
    clock.advance(0.1)
    assert ids(store.dispatch(10)) == ["a3"]
    assert store.redis.zcard(keys.due) == 0  # every list empty: nothing is due


def test_a_fast_account_does_not_crowd_out_a_slow_one(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    """Round robin by next permitted time: an account with a thousand jobs and a high rate
    takes turns with one that has two."""
    store.publish_accounts({A: conf(keys, A, 1000), B: conf(keys, B, 1000)})
    submit(store, *(job(f"a{n}") for n in range(50)), job("b1", B), job("b2", B))
    handed = ids(store.dispatch(6))
    assert handed[:2] == ["a0", "b1"] and "b2" in handed


def test_dispatch_never_hands_out_more_than_its_budget(store: JobStore, keys: Keys) -> None:
    store.publish_accounts({A: conf(keys, A, 1000), B: conf(keys, B, 1000)})
    submit(store, *(job(f"a{n}") for n in range(20)), *(job(f"b{n}", B) for n in range(20)))
    result = store.dispatch(3)
    # The budget is spent: whether more is due was not looked at (a freed slot asks again).
    assert len(result.jobs) == 3 and result.next_in is None
    assert store.dispatch(0).jobs == []
    assert store.dispatch(-1).jobs == []


def test_each_run_holds_a_lease_member_with_a_token_unique_to_its_dispatch(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, 1000)})
    submit(store, *(job(f"j{n}") for n in range(4)))
    first = store.dispatch(2).jobs
    second = store.dispatch(2).jobs
    handed = first + second
    assert len({j.token for j in handed}) == 4
    assert all("|" not in j.token for j in handed)
    deadline = clock.micros + int(LEASE * MICROS)
    assert active(store) == {lease_member(j.task_id, j.token): deadline for j in handed}
    assert [j.member for j in handed] == [f"{j.task_id}|{j.token}" for j in handed]
    # The same job handed out again (its lease ran out) gets a new token.
    clock.advance(LEASE + 1)
    tick = store.tick("n", [], janitor_ms=1000, node_timeout=600, unknown_grace=600)
    assert sorted(tick.requeued) == ["j0", "j1", "j2", "j3"]
    again = store.dispatch(4).jobs
    assert {j.task_id for j in again} == {"j0", "j1", "j2", "j3"}
    assert not {j.token for j in again} & {j.token for j in handed}


def test_a_handed_out_job_carries_its_record(store: JobStore, keys: Keys) -> None:
    store.publish_accounts({A: conf(keys, A)})
    submit(store, job("j1", history={"archiver_attempts": 2}))
    [handed] = store.dispatch(1).jobs
    assert (handed.account, handed.task, handed.lost, handed.probe) == (A, ARCHIVE_TASK, 0, False)
    assert handed.body == job("j1", history={"archiver_attempts": 2}).body
    assert store.record("j1") is not None  # the record stays until the job ends


def test_sweeps_wait_for_a_free_slot_only(store: JobStore) -> None:
    submit(store, sweep("s1"), sweep("s2"))
    handed = store.dispatch(10).jobs
    assert [j.task_id for j in handed] == ["s1", "s2"]
    assert [j.slot for j in handed] == [0, 0]


def test_a_task_without_a_limit_on_its_account_needs_no_permit(store: JobStore, keys: Keys) -> None:
    """An account's entry names a limit per task; a task it does not name runs unpaced."""
    store.publish_accounts({A: conf(keys, A)})
    unarchive = NewJob("u1", A, UNARCHIVE_TASK, "", JobBody({}))
    submit(store, unarchive, NewJob("u2", A, UNARCHIVE_TASK, "", JobBody({})))
    assert [(j.task_id, j.slot) for j in store.dispatch(10).jobs] == [("u1", 0), ("u2", 0)]


def test_an_id_whose_job_is_gone_is_skipped(store: JobStore, keys: Keys) -> None:
    store.publish_accounts({A: conf(keys, A, 1000)})
    submit(store, job("j1"), job("j2"))
    store.redis.hdel(keys.jobs, "j1")  # dead-lettered by the janitor while its id waited
    assert ids(store.dispatch(10)) == ["j2"]
    assert store.wait_head(A, 10) == []


def test_a_permit_far_away_leaves_the_job_at_the_front(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    """A 429 pushed the account's next slot 5 s away: its jobs stay at the front of the list
    and the account is due again when the slot is near."""
    store.publish_accounts({A: conf(keys, A)})
    submit(store, job("j1"), job("j2"))
    store.redis.set(keys.limiter(A, "archiveChat"), clock.micros + 5 * MICROS)
    result = store.dispatch(10)
    assert result.jobs == [] and store.wait_head(A, 10) == ["j1", "j2"]
    assert store.redis.zscore(keys.due, A) == clock.micros + 5 * MICROS
    assert result.next_in == pytest.approx(5 - DISPATCH_LEAD)
    clock.advance(5)
    assert ids(store.dispatch(10)) == ["j1"]


# --- dispatch: paused accounts and probes -------------------------------------------------------


def test_a_paused_accounts_waiting_jobs_are_parked_without_running(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, 1000), B: conf(keys, B, 1000)})
    submit(store, job("a1"), job("a2"), job("b1", B))
    pause(store, A, clock.seconds + 60)
    result = store.dispatch(10)
    assert ids(result) == ["b1"]
    assert store.wait_head(A, 10) == []
    assert store.parked_head(A, 10) == [("a1", clock.seconds), ("a2", clock.seconds)]
    # The account is looked at again at its next probe.
    assert store.redis.zscore(keys.due, A) == clock.micros + 60 * MICROS
    assert result.next_in == pytest.approx(60 - DISPATCH_LEAD)
    assert store.record("a1") is not None  # parked, not ended


def test_the_oldest_parked_job_is_handed_out_as_the_probe_once_its_time_has_come(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, 1000)})
    submit(store, job("a1"), job("a2"))
    pause(store, A, clock.seconds + 60)
    store.dispatch(10)
    clock.advance(59.9)
    assert store.dispatch(10).jobs == []
    clock.advance(0.1)
    [probe] = store.dispatch(10).jobs
    assert (probe.task_id, probe.probe) == ("a1", True)
    claim = keys.circuit_probe(A)
    assert store.redis.get(claim) == "a1"
    assert 0 < store.redis.pttl(claim) <= PROBE_TTL * 1000
    assert [i for i, _ in store.parked_head(A, 10)] == ["a2"]
    # One probe at a time: while it runs, nothing more, and the account is looked at again
    # when a lost probe's claim would have run out.
    assert store.dispatch(10).jobs == []
    assert store.redis.zscore(keys.due, A) == clock.micros + PROBE_TTL * MICROS
    # A job that arrives meanwhile waits, unhanded, until the account is looked at again
    # (its due time stays the later one), and then parks behind the others.
    submit(store, job("a3"))
    assert store.dispatch(10).jobs == [] and store.wait_head(A, 10) == ["a3"]
    assert store.redis.zscore(keys.due, A) == clock.micros + PROBE_TTL * MICROS
    store.redis.delete(claim)  # the probe's run was lost: its claim ran out
    clock.advance(PROBE_TTL)
    [second] = store.dispatch(10).jobs
    assert (second.task_id, second.probe) == ("a2", True)
    assert [i for i, _ in store.parked_head(A, 10)] == ["a3"]


def test_a_paused_account_with_nothing_parked_leaves_the_schedule(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A)})
    pause(store, A, clock.seconds - 1)
    assert store.dispatch(10).jobs == []
    assert store.redis.zscore(keys.due, A) is None
    assert not store.redis.exists(keys.circuit_probe(A))


def test_a_probe_waits_for_its_permit_at_the_head_of_the_parked_list(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A)})
    submit(store, job("a1"))
    pause(store, A, clock.seconds + 1)
    store.dispatch(10)
    clock.advance(1)
    store.redis.set(keys.limiter(A, "archiveChat"), clock.micros + 3 * MICROS)  # a 429's push
    assert store.dispatch(10).jobs == []
    assert [i for i, _ in store.parked_head(A, 10)] == ["a1"]
    assert not store.redis.exists(keys.circuit_probe(A))
    assert store.redis.zscore(keys.due, A) == clock.micros + 3 * MICROS
    clock.advance(3)
    [probe] = store.dispatch(10).jobs
    assert probe.probe and probe.slot == clock.micros


def test_a_probe_due_within_the_lead_does_not_hold_up_other_accounts(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    """B's next job is due 15 ms from now, within the dispatch lead: it is handed out now,
    whatever a paused account whose probe is due 10 ms from now does."""
    store.publish_accounts({A: conf(keys, A), B: conf(keys, B)})
    submit(store, job("b1", B), job("b2", B))
    assert ids(store.dispatch(1)) == ["b1"]  # B's next slot: 100 ms on
    clock.advance(0.085)
    submit(store, job("a1"))
    pause(store, A, clock.seconds + 0.010)
    assert "b2" in ids(store.dispatch(10))


# --- close: every run ends once, with its result --------------------------------------------------


def _record(store: JobStore, task_id: str, **changes: Any) -> str:
    stored = store.record(task_id)
    assert stored is not None
    body = stored.body
    if changes:
        body = JobBody(dict(body.kwargs), {**body.history, **changes}, body.origin)
    return stored.record(body)


def handed_one(store: JobStore, keys: Keys, *jobs: NewJob) -> Any:
    store.publish_accounts({A: conf(keys, A, 1000)})
    submit(store, *(jobs or (job("j1"),)))
    return store.dispatch(1).jobs[0]


def test_a_final_ending_removes_the_job_releases_its_chat_and_writes_its_result(
    store: JobStore, keys: Keys
) -> None:
    handed = handed_one(store, keys)
    assert store.redis.get(handed.mark) == "j1"
    writes = Writes().hincrby("t:outcomes", "archived", 1)
    with listening(store.redis, result_key("j1")) as heard:
        assert store.close(
            "j1",
            handed.member,
            Ending.FINAL,
            account=A,
            mark=handed.mark,
            result='{"status": "SUCCESS"}',
            result_ttl=100,
            writes=writes,
        )
        # Published like Celery's own backend does, for a producer waiting on the result.
        assert heard() == ['{"status": "SUCCESS"}']
    assert store.record("j1") is None and active(store) == {}
    assert not store.redis.exists(handed.mark)
    assert store.redis.get(result_key("j1")) == '{"status": "SUCCESS"}'
    assert 0 < store.redis.ttl(result_key("j1")) <= 100
    assert store.redis.hget("t:outcomes", "archived") == "1"


def test_a_final_ending_leaves_a_chat_another_job_holds(store: JobStore, keys: Keys) -> None:
    handed = handed_one(store, keys)
    store.redis.set(handed.mark, "someone-else")
    assert store.close("j1", handed.member, Ending.FINAL, account=A, mark=handed.mark)
    assert store.redis.get(handed.mark) == "someone-else"


def test_an_ending_is_written_once_even_if_the_call_is_repeated(
    store: JobStore, keys: Keys
) -> None:
    handed = handed_one(store, keys)
    writes = Writes().hincrby("t:outcomes", "archived", 1)
    assert store.close("j1", handed.member, Ending.FINAL, writes=writes, mark=handed.mark)
    # The same call again (redis-py resends a script whose reply was lost): no second outcome.
    store.redis.delete(result_key("j1"))
    assert not store.close(
        "j1",
        handed.member,
        Ending.FINAL,
        writes=writes,
        result='{"status": "SUCCESS"}',
        result_ttl=100,
    )
    assert store.redis.hget("t:outcomes", "archived") == "1"
    assert not store.redis.exists(result_key("j1"))


def test_a_run_whose_member_is_gone_changes_nothing(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    """Its lease ran out and the janitor gave the job to another run: whatever this run says,
    nothing is written: no ending, no result, no outcome, the chat still held."""
    handed = handed_one(store, keys)
    clock.advance(LEASE + 1)
    assert store.tick("n", [], janitor_ms=1000, node_timeout=600, unknown_grace=600).requeued
    for ending in Ending:
        assert not store.close(
            "j1",
            handed.member,
            ending,
            account=A,
            record=_record(store, "j1", archiver_attempts=9),
            mark=handed.mark,
            result='{"status": "SUCCESS"}',
            result_ttl=100,
            writes=Writes().hincrby("t:outcomes", "archived", 1),
        )
    record = store.record("j1")
    assert record is not None and record.lost == 1 and record.body.history == {}
    assert store.wait_head(A, 10) == ["j1"]
    assert store.parked_head(A, 10) == [] and store.counts().delayed == 0
    assert store.redis.get(handed.mark) == "j1"
    assert not store.redis.exists(result_key("j1"))
    assert not store.redis.exists("t:outcomes")


def test_the_janitor_ends_a_job_only_while_it_waits_where_it_said(
    store: JobStore, keys: Keys
) -> None:
    """No run ends it (member ''): it must still be in the list it waited in, which it leaves."""
    store.publish_accounts({A: conf(keys, A)})
    submit(store, job("j1"), job("j2"))
    mark = keys.pending(A, chat_of("j1"))
    assert store.redis.get(mark) == "j1"
    elsewhere = keys.parked(A)
    assert not store.close(
        "j1", "", Ending.FINAL, waited_in=elsewhere, mark=mark, result="x", result_ttl=10
    )
    assert store.record("j1") is not None and not store.redis.exists(result_key("j1"))
    assert store.close(
        "j1", "", Ending.FINAL, waited_in=keys.wait(A), mark=mark, result="x", result_ttl=10
    )
    assert store.wait_head(A, 10) == ["j2"] and store.record("j1") is None
    assert not store.redis.exists(mark) and store.redis.get(result_key("j1")) == "x"
    assert not store.close("j1", "", Ending.FINAL, waited_in=keys.wait(A))  # once


def test_waiting_again_at_the_front_or_the_back_keeps_its_history(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, 1000)})
    submit(store, job("j1"), job("j2"), job("j3"))
    [first] = store.dispatch(1).jobs
    with listening(store.redis, keys.wake) as heard:
        assert store.close(
            "j1",
            first.member,
            Ending.WAIT,
            account=A,
            record=_record(store, "j1", archiver_attempts=1),
            front=True,
        )
        assert heard() == ["1"]  # it waits in its list: a dispatcher may take it now
    assert store.wait_head(A, 10) == ["j1", "j2", "j3"]
    record = store.record("j1")
    assert record is not None and record.body.history == {"archiver_attempts": 1}
    clock.advance(0.01)
    [again] = store.dispatch(1).jobs
    assert again.body.history == {"archiver_attempts": 1}
    store.close("j1", again.member, Ending.WAIT, account=A, record=_record(store, "j1"))
    assert store.wait_head(A, 10) == ["j2", "j3", "j1"]


def test_a_wait_with_a_delay_counts_on_redis_clock_and_comes_back_at_the_front(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, 1000)})
    submit(store, job("j1"), job("j2"), job("j3"))
    [first] = store.dispatch(1).jobs
    assert store.close(
        "j1", first.member, Ending.WAIT, account=A, record=_record(store, "j1"), delay=30
    )
    assert store.redis.zscore(keys.delayed, f"{A}|j1") == clock.micros + 30 * MICROS
    clock.advance(0.01)
    result = store.dispatch(1)
    assert ids(result) == ["j2"]
    clock.advance(29.99)
    # Due: out of the delayed set, back at the front of its account's wait list when the set's
    # turn comes in the schedule (the account was due before it: j3 goes first).
    assert ids(store.dispatch(1)) == ["j3"]
    assert store.counts().delayed == 1
    clock.advance(0.01)
    assert ids(store.dispatch(1)) == ["j1"]
    assert store.wait_head(A, 10) == [] and store.counts().delayed == 0


def test_a_wait_for_an_account_nobody_knows_goes_among_the_unknown(
    store: JobStore, keys: Keys
) -> None:
    handed = handed_one(store, keys)
    store.publish_accounts({A: None})
    assert store.close("j1", handed.member, Ending.WAIT, account=A, record=_record(store, "j1"))
    assert list(store.unknown_accounts()) == [A] and store.wait_head(A, 10) == ["j1"]


def test_parking_keeps_the_first_parked_time_and_a_failed_probe_goes_first(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, 1000)})
    submit(store, job("a1"), job("a2"))
    a1, a2 = store.dispatch(2).jobs
    first_parked = clock.seconds
    store.close("a1", a1.member, Ending.PARK, account=A, record=_record(store, "a1"))
    clock.advance(1)
    store.close("a2", a2.member, Ending.PARK, account=A, record=_record(store, "a2"))
    assert store.parked_head(A, 10) == [("a1", first_parked), ("a2", first_parked + 1)]
    # a1 runs again as the probe and fails: back at the head, parked since the first time.
    pause(store, A, clock.seconds)
    [probe] = store.dispatch(10).jobs
    assert probe.task_id == "a1" and probe.probe
    clock.advance(1)
    store.close("a1", probe.member, Ending.PARK, account=A, record=_record(store, "a1"), front=True)
    assert store.parked_head(A, 10) == [("a1", first_parked), ("a2", first_parked + 1)]
    # Its ending, once it comes, forgets when it was parked.
    pause(store, A, clock.seconds)
    store.redis.delete(keys.circuit_probe(A))
    [probe] = store.dispatch(10).jobs
    store.close("a1", probe.member, Ending.FINAL, account=A, parked=True)
    assert not store.redis.hexists(keys.parked_since, "a1")


# --- tick: leases, heartbeats, the janitor --------------------------------------------------------


def test_a_tick_renews_only_live_leases_and_never_shortens_one(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    handed = handed_one(store, keys)
    leased_until = active(store)[handed.member]
    clock.advance(-10)  # a node whose clock lags the one that took the lease
    tick = store.tick(
        "n", [handed.member, "ended|1.1"], janitor_ms=0, node_timeout=60, unknown_grace=60
    )
    assert not tick.janitor
    assert active(store) == {handed.member: leased_until}  # GT: never earlier; XX: no new lease
    clock.advance(20)
    store.tick("n", [handed.member], janitor_ms=0, node_timeout=60, unknown_grace=60)
    assert active(store)[handed.member] == leased_until + 10 * MICROS


def test_one_node_at_a_time_takes_the_janitors_turn(store: JobStore) -> None:
    kwargs: Any = {"node_timeout": 60, "unknown_grace": 60}
    assert store.tick("a", [], janitor_ms=5000, **kwargs).janitor
    assert not store.tick("b", [], janitor_ms=5000, **kwargs).janitor
    assert 0 < store.redis.pttl(store.keys.janitor) <= 5000
    store.redis.delete(store.keys.janitor)
    # janitor_ms 0: renewals and the heartbeat only, whoever holds the turn.
    assert not store.tick("b", [], janitor_ms=0, **kwargs).janitor
    assert store.tick("b", [], janitor_ms=5000, **kwargs).janitor


def test_after_the_whole_fleet_fell_silent_no_lease_is_taken_back_for_a_lease(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    """Redis refused writes (a failover) for longer than a lease: every lease ran out while its
    run lived on. The first tick after it holds the janitor back for a whole lease, in which each
    live node renews its own; then only the leases nobody renewed are given back."""
    kwargs: Any = {"node_timeout": 600, "unknown_grace": 600}
    store.publish_accounts({A: conf(keys, A, 1000)})
    submit(store, job("alive"), job("orphan"))
    first, second = store.dispatch(10).jobs
    store.tick("a", [first.member], janitor_ms=0, **kwargs)
    clock.advance(LEASE + 5)  # nobody could write: both leases ran out
    tick = store.tick("b", [], janitor_ms=1000, **kwargs)  # b's writes go through first
    assert (tick.janitor, tick.requeued, tick.held_after) == (False, [], LEASE + 5)
    assert set(active(store)) == {first.member, second.member}
    # The hold is the janitor's key, for a lease of Redis's own time (PX), not the pinned clock.
    assert LEASE * 1000 - 1000 < store.redis.pttl(keys.janitor) <= LEASE * 1000
    for _ in range(3):  # a lease passes; a renews the run it still holds
        store.tick("a", [first.member], janitor_ms=0, **kwargs)
        assert not store.tick("b", [], janitor_ms=1000, **kwargs).janitor
        clock.advance(LEASE / 3)
    store.redis.delete(keys.janitor)  # the hold's end
    tick = store.tick("b", [], janitor_ms=1000, **kwargs)
    assert (tick.janitor, tick.requeued) == (True, [second.task_id])
    assert set(active(store)) == {first.member}


def test_a_silence_no_live_lease_can_have_run_out_in_holds_nothing_back(
    store: JobStore, clock: PinnedClock
) -> None:
    """Half a lease without a heartbeat (a Redis restart, nodes restarting): a node that renews
    every third of a lease still has a sixth of it left, so the janitor goes on as usual."""
    kwargs: Any = {"node_timeout": 600, "unknown_grace": 600}
    store.tick("a", [], janitor_ms=0, **kwargs)
    clock.advance(LEASE / 2)
    tick = store.tick("b", [], janitor_ms=1000, **kwargs)
    assert tick.janitor and tick.held_after == 0
    # A node that renews more often says so: its shorter silence holds the janitor back.
    clock.advance(LEASE / 2)
    tick = store.tick("a", [], janitor_ms=1000, silence=LEASE / 4, **kwargs)
    assert not tick.janitor and tick.held_after == LEASE / 2


def test_the_janitor_gives_back_an_expired_lease_at_the_front_counting_a_lost_run(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, 1000)})
    submit(store, job("j1"), job("j2"))
    [handed] = store.dispatch(1).jobs
    kwargs: Any = {"janitor_ms": 1000, "node_timeout": 600, "unknown_grace": 600}
    clock.advance(LEASE - 1)
    assert store.tick("n", [], **kwargs).requeued == []
    store.redis.delete(keys.janitor)
    clock.advance(1)  # the lease's deadline: run out
    with listening(store.redis, keys.wake) as heard:
        assert store.tick("n", [], **kwargs).requeued == ["j1"]
        assert heard() == ["1"]
    assert active(store) == {}
    assert store.wait_head(A, 10) == ["j1", "j2"]
    record = store.record("j1")
    assert record is not None and record.lost == 1
    [again] = store.dispatch(1).jobs
    assert (again.task_id, again.lost) == ("j1", 1) and again.token != handed.token


def test_an_expired_lease_whose_job_ended_is_dropped(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    handed = handed_one(store, keys)
    store.redis.hdel(keys.jobs, "j1")
    clock.advance(LEASE + 1)
    with listening(store.redis, keys.wake) as heard:
        tick = store.tick("n", [], janitor_ms=1000, node_timeout=600, unknown_grace=600)
        assert heard() == []
    assert tick.requeued == [] and handed.member not in active(store)
    assert store.wait_head(A, 10) == []


def test_the_janitor_reports_dead_nodes_unknown_accounts_and_paused_ones(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    kwargs: Any = {"node_timeout": 60, "unknown_grace": 300}
    store.tick("old", [], janitor_ms=0, **kwargs)
    submit(store, job("u1", B))  # an account nobody published
    store.redis.zadd(keys.paused, {A: clock.seconds})
    lives_on(store, clock, "me", 61)
    tick = store.tick("me", [], janitor_ms=1000, **kwargs)
    assert (tick.janitor, tick.dead_nodes, tick.unknown, tick.paused) == (True, ["old"], [], [A])
    assert sorted(store.nodes()) == ["me", "old"]
    store.forget_node("old")
    assert store.nodes() == ["me"]
    lives_on(store, clock, "me", 240)
    store.redis.delete(keys.janitor)
    tick = store.tick("me", [], janitor_ms=1000, **kwargs)
    assert (tick.dead_nodes, tick.unknown) == ([], [B])


def test_a_heartbeat_on_redis_clock_is_stamped_with_redis_time(
    client: redis.Redis, keys: Keys
) -> None:
    store = JobStore(client, keys, lease=30, claim_ttl=60, probe_ttl=60)  # Redis's TIME
    store.tick("node-a", [], janitor_ms=0, node_timeout=60, unknown_grace=60)
    seconds, micros = client.time()
    stamped = client.zscore(keys.nodes, "node-a")
    assert stamped is not None
    assert abs(stamped / MICROS - (seconds + micros / MICROS)) < 5
    assert store.nodes(within=60) == ["node-a"]
    client.zadd(keys.nodes, {"node-b": (seconds - 120) * MICROS})
    assert store.nodes(within=60) == ["node-a"] and sorted(store.nodes()) == ["node-a", "node-b"]


# --- reading ------------------------------------------------------------------------------------


def test_heads_hold_exactly_as_many_as_asked(store: JobStore, keys: Keys) -> None:
    store.publish_accounts({A: conf(keys, A), B: conf(keys, B)})
    submit(store, job("a1"), job("a2"), job("a3"), job("b1", B))
    assert store.wait_head(A, 1) == ["a1"]
    assert store.wait_head(A, 2) == ["a1", "a2"]
    assert set(store.redis.zrange(keys.due, 0, -1)) == {A, B}
    assert store.waiting([A, B, "green-api:0"]) == {A: 3, B: 1, "green-api:0": 0}


def test_the_parked_head_holds_exactly_as_many_as_asked(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, 1000)})
    submit(store, job("a1"), job("a2"), job("a3"))
    pause(store, A, clock.seconds + 60)
    store.dispatch(10)
    assert [i for i, _ in store.parked_head(A, 1)] == ["a1"]
    assert [i for i, _ in store.parked_head(A, 2)] == ["a1", "a2"]
    assert store.parked_head(B, 5) == []


def test_the_store_counts_each_of_its_sets(store: JobStore, keys: Keys, clock: PinnedClock) -> None:
    store.publish_accounts({A: conf(keys, A, 1000)})
    submit(store, job("j1"), job("j2"), job("j3", not_before=clock.seconds + 60), job("u1", B))
    store.dispatch(1)  # j1 is handed out: leased
    counts = store.counts()
    assert (counts.jobs, counts.delayed, counts.active) == (4, 1, 1)


def test_a_script_refuses_keys_or_arguments_it_does_not_declare(client: redis.Redis) -> None:
    script = load("penalize")
    args = {"now": "", "delay_us": 1}
    with pytest.raises(ScriptCallError, match="keys"):
        script.run(client, keys={"tat": "k", "stats": "s", "other": "x"}, args=args)
    with pytest.raises(ScriptCallError, match="args"):
        script.run(client, keys={"tat": "k", "stats": "s"}, args={"now": "", "delay": 1})
    with pytest.raises(ScriptCallError, match="rest"):
        script.run(client, keys={"tat": "k", "stats": "s"}, args=args, rest=["x"])
    assert int(script.run(client, keys={"tat": "k", "stats": "s"}, args=args)) >= 0
