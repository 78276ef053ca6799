"""The job store's scripts against a real Redis, on a pinned clock: what waits, what is handed out,
in which order, under which rate, and how leases make every run unique and every ending once."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from worker.contract import envelope
from worker.contract.tasks import ARCHIVE_TASK, SWEEP_TASK, UNPACED
from worker.stores.clock import PinnedClock
from worker.stores.jobs import Ending, JobStore, Lease, NewJob
from worker.stores.keys import Keys
from worker.stores.scripts import ScriptCallError, load
from worker.stores.writes import Writes

A = "green-api:1101000001"
B = "green-api:1101000002"


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
    return JobStore(client, keys, lease=30, clock=clock)


def conf(keys: Keys, account: str, per_second: float = 10) -> dict:
    base = keys.limiter(account, "archiveChat")
    return {
        "interval": int(1_000_000 / per_second),
        "tat": base,
        "stats": f"{base}:stats",
        "recent": f"{base}:recent",
        "circuit": keys.circuit(account),
        "probe": keys.circuit_probe(account),
    }


def job(task_id: str, account: str = A, not_before: float | None = None) -> NewJob:
    provider, _, account_id = account.partition(":")
    kwargs = {"provider": provider, "account": account_id, "chat_id": f"{task_id[-5:]}00001@c.us"}
    message = envelope.build(ARCHIVE_TASK, task_id, kwargs, "archive.ready")
    return NewJob(task_id, account, message, not_before)


def leased_j1(store: JobStore, keys: Keys) -> tuple[Lease, int]:
    """Job j1 of account A accepted, dispatched and taken by run-1: what take_lease said."""
    store.publish_accounts({A: conf(keys, A)})
    store.accept([job("j1")])
    store.dispatch(1)
    return store.take_lease("j1", "run-1", 100)


def ids(messages: list[str]) -> list[str]:
    return [json.loads(m)["headers"]["id"] for m in messages]


def test_accepted_jobs_wait_in_order_and_an_id_is_stored_once(store: JobStore, keys: Keys) -> None:
    store.publish_accounts({A: conf(keys, A)})
    report = store.accept([job("j1"), job("j2"), job("j1")])
    assert report.accepted == 2 and report.duplicates == ["j1"]
    assert store.wait_head(A, 10) == ["j1", "j2"]
    assert store.record("j2") is not None and store.record("j2").account == A


def test_jobs_of_an_account_nobody_knows_wait_until_a_worker_publishes_it(
    store: JobStore, keys: Keys
) -> None:
    store.accept([job("j1")])
    assert store.dispatch(10).count == 0
    assert list(store.unknown_accounts()) == [A]
    store.publish_accounts({A: conf(keys, A)})
    assert store.unknown_accounts() == {}
    assert ids(store.dispatch(10).messages) == ["j1"]


def test_an_account_withdrawn_from_the_file_turns_unknown_at_its_next_turn(
    store: JobStore, keys: Keys
) -> None:
    store.publish_accounts({A: conf(keys, A)})
    store.accept([job("j1")])
    store.publish_accounts({A: None})
    assert store.dispatch(10).count == 0
    assert list(store.unknown_accounts()) == [A]
    assert store.wait_head(A, 10) == ["j1"]  # still waiting, nothing lost


def test_dispatch_spaces_an_accounts_jobs_at_its_rate(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, per_second=10)})
    store.accept([job(f"j{n}") for n in range(5)])
    first = store.dispatch(10)
    assert ids(first.messages) == ["j0"]  # one slot now, the next 100 ms on
    assert first.next_in == pytest.approx(0.1 - 0.02)  # woken just before, by the lead
    clock.advance(0.05)
    assert store.dispatch(10).count == 0
    clock.advance(0.05)
    assert ids(store.dispatch(10).messages) == ["j1"]
    # Each dispatched job holds the slot it was given, for its run to use.
    permits = store.redis.hgetall(keys.permits)
    assert int(permits["j1"]) - int(permits["j0"]) == 100_000


def test_accounts_take_turns_in_the_order_of_their_next_slot(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, 10), B: conf(keys, B, 10)})
    store.accept([job("a1", A), job("a2", A), job("a3", A), job("b1", B), job("b2", B)])
    assert ids(store.dispatch(10).messages) == ["a1", "b1"]
    clock.advance(0.1)
    assert ids(store.dispatch(10).messages) == ["a2", "b2"]
    clock.advance(0.1)
    assert ids(store.dispatch(10).messages) == ["a3"]


def test_dispatch_never_hands_out_more_than_its_budget(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, 1000), B: conf(keys, B, 1000)})
    store.accept([job(f"a{n}", A) for n in range(20)] + [job(f"b{n}", B) for n in range(20)])
    result = store.dispatch(3)
    assert result.count == 3 and result.next_in == 0  # more is due: call again
    assert store.dispatch(0).count == 0


def test_the_budget_counts_what_already_waits_in_the_ready_queue(
    store: JobStore, keys: Keys
) -> None:
    store.publish_accounts({A: conf(keys, A, 1000)})
    store.accept([job(f"j{n}") for n in range(10)])
    store.redis.lpush("archive.ready", "x", "y")
    assert store.dispatch(5, ready="archive.ready").count == 3
    assert store.redis.llen("archive.ready") == 5  # pushed there by the script itself


def test_each_dispatch_gives_a_fresh_delivery_tag(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A)})
    store.accept([job("j1")])
    [message] = store.dispatch(1).messages
    first = json.loads(message)["properties"]["delivery_tag"]
    clock.advance(31)  # its run never came: the lease runs out, the janitor gives it back
    assert store.requeue_expired() == ["j1"]
    [message] = store.dispatch(1).messages
    second = json.loads(message)["properties"]["delivery_tag"]
    assert first != second and envelope.TAG_PLACEHOLDER not in message
    assert first.startswith("j1.") and second.startswith("j1.")


def test_a_live_lease_makes_a_second_delivery_end_quietly(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    assert leased_j1(store, keys) == (Lease.OK, 1)
    assert store.take_lease("j1", "run-2", 100)[0] is Lease.BUSY
    clock.advance(29)
    store.renew(["j1"], "node-a")  # its node is alive: the lease runs on
    clock.advance(29)
    assert store.take_lease("j1", "run-2", 100)[0] is Lease.BUSY
    clock.advance(31)  # no renewal: the run is presumed dead, a new one takes over
    assert store.take_lease("j1", "run-2", 100) == (Lease.OK, 2)  # two runs began, none ended


def test_a_job_that_has_ended_finds_no_record(store: JobStore, keys: Keys) -> None:
    leased_j1(store, keys)
    assert store.close("j1", "run-1", Ending.FINAL)
    assert store.take_lease("j1", "run-2", 100)[0] is Lease.STALE
    assert store.record("j1") is None
    assert not store.redis.exists(keys.deliveries("j1"))


def test_an_ending_is_written_once_even_if_the_call_is_repeated(
    store: JobStore, keys: Keys
) -> None:
    leased_j1(store, keys)
    writes = Writes().hincrby("t:outcomes", "archived", 1)
    assert store.close("j1", "run-1", Ending.FINAL, writes=writes)
    # The same call again (redis-py resends a script whose reply was lost): no second outcome.
    assert not store.close("j1", "run-1", Ending.FINAL, writes=writes)
    assert store.redis.hget("t:outcomes", "archived") == "1"


def test_a_run_that_lost_its_lease_to_another_changes_nothing(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    leased_j1(store, keys)
    clock.advance(31)
    store.take_lease("j1", "run-2", 100)
    assert not store.close("j1", "run-1", Ending.FINAL)
    assert store.record("j1") is not None


def test_waiting_again_at_the_front_or_until_a_time(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, 1000)})
    store.accept([job("j1"), job("j2"), job("j3")])
    store.dispatch(1)
    store.take_lease("j1", "run-1", 100)
    message = job("j1").message.replace('"retries": 0', '"retries": 0, "archiver_attempts": 1')
    store.close("j1", "run-1", Ending.WAIT, account=A, message=message, front=True)
    assert store.wait_head(A, 10) == ["j1", "j2", "j3"]
    assert "archiver_attempts" in store.record("j1").message  # its history goes with it
    clock.advance(0.01)
    [first] = store.dispatch(1).messages
    store.take_lease("j1", "run-2", 100)
    store.close("j1", "run-2", Ending.WAIT, account=A, message=first, at=clock.seconds + 30)
    clock.advance(0.01)
    assert ids(store.dispatch(10).messages) == ["j2", "j3"]
    clock.advance(30)
    assert ids(store.dispatch(10).messages) == ["j1"]  # out of the delayed set when due


def test_a_lost_run_goes_back_to_the_front_of_its_wait_list(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, 1000)})
    store.accept([job("j1"), job("j2")])
    store.dispatch(1)
    store.take_lease("j1", "run-1", 100)
    clock.advance(29)
    assert store.requeue_expired() == []
    clock.advance(2)
    assert store.requeue_expired() == ["j1"]
    assert store.wait_head(A, 10) == ["j1", "j2"]


def test_a_paused_accounts_waiting_jobs_are_parked_without_running(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, 1000), B: conf(keys, B, 1000)})
    probe_at = clock.seconds + 60
    store.redis.hset(keys.circuit(A), mapping={"state": "open", "probe_at": probe_at})
    store.accept([job("a1", A), job("a2", A), job("b1", B)])
    assert ids(store.dispatch(10).messages) == ["b1"]
    assert store.parked_count(A) == 2 and store.wait_head(A, 10) == []
    assert [since for _, since in store.parked_head(A, 10)] == [clock.seconds] * 2
    # A probe: one parked job to the front of the wait list; the account is due at once.
    store.redis.hset(keys.circuit(A), "probe_at", clock.seconds - 1)
    assert store.release_parked(A, 1) == ["a1"]
    assert ids(store.dispatch(10).messages) == ["a1"]
    # The circuit closes: everything parked goes back, its clock forgotten.
    store.redis.delete(keys.circuit(A))
    assert store.release_parked(A, 0, afresh=True) == ["a2"]
    assert not store.redis.hexists(keys.parked_since, "a2")


def test_sweeps_and_probes_wait_for_a_slot_only(store: JobStore) -> None:
    message = envelope.build(SWEEP_TASK, "s1", {"provider": "green-api"}, "archive.ready")
    store.accept([NewJob("s1", UNPACED, message), NewJob("s2", UNPACED, message)])
    assert store.dispatch(10).count == 2


def test_an_eta_waits_in_the_delayed_set(store: JobStore, keys: Keys, clock: PinnedClock) -> None:
    store.publish_accounts({A: conf(keys, A)})
    store.accept([job("j1", not_before=clock.seconds + 5)])
    first = store.dispatch(10)
    assert first.count == 0 and first.next_in == pytest.approx(5)
    clock.advance(5)
    assert ids(store.dispatch(10).messages) == ["j1"]


def test_a_script_refuses_keys_or_arguments_it_does_not_declare(client: redis.Redis) -> None:
    script = load("release")
    with pytest.raises(ScriptCallError, match="keys"):
        script.run(client, keys={"chat": "k", "other": "x"}, args={"id": "1"})
    with pytest.raises(ScriptCallError, match="args"):
        script.run(client, keys={"chat": "k"}, args={"task": "1"})
    assert script.run(client, keys={"chat": "k"}, args={"id": "1"}) == 0


def test_a_heartbeat_extends_only_live_leases_and_never_shortens_one(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    leased_j1(store, keys)
    leased_until = store.redis.zscore(keys.active, "j1")
    assert leased_until is not None
    clock.advance(-10)  # a node whose clock lags the one that took the lease
    store.renew(["j1", "ended"], "node-a")
    assert store.redis.zscore(keys.active, "j1") == leased_until  # GT: never earlier
    assert store.redis.zscore(keys.active, "ended") is None  # XX: a heartbeat leases nothing
    clock.advance(20)
    store.renew(["j1"], "node-a")
    assert store.redis.zscore(keys.active, "j1") == leased_until + 10_000_000


def test_a_heartbeat_on_the_redis_clock_is_stamped_with_redis_time(
    client: redis.Redis, keys: Keys
) -> None:
    store = JobStore(client, keys, lease=30)  # no pinned clock: Redis's TIME
    store.renew([], "node-a")
    seconds, micros = client.time()
    stamped = client.zscore(keys.nodes, "node-a")
    assert stamped is not None
    assert abs(stamped / 1_000_000 - (seconds + micros / 1_000_000)) < 60
    assert store.dead_nodes(older_than=60) == []


def test_heads_hold_exactly_as_many_as_asked(store: JobStore, keys: Keys) -> None:
    store.publish_accounts({A: conf(keys, A), B: conf(keys, B)})
    store.accept([job("a1", A), job("a2", A), job("a3", A), job("b1", B)])
    assert store.wait_head(A, 1) == ["a1"]
    assert store.wait_head(A, 2) == ["a1", "a2"]
    assert len(store.due_accounts(1)) == 1
    assert {account for account, _ in store.due_accounts(2)} == {A, B}


def test_each_job_counts_its_own_deliveries(store: JobStore) -> None:
    store.accept(
        [
            NewJob(name, UNPACED, envelope.build(SWEEP_TASK, name, {}, "archive.ready"))
            for name in ("s1", "s2")
        ]
    )
    store.dispatch(10)
    assert store.take_lease("s1", "run-a", 100) == (Lease.OK, 1)
    assert store.take_lease("s2", "run-b", 100) == (Lease.OK, 1)  # s1's run is not s2's


def test_the_store_counts_each_of_its_sets(store: JobStore, keys: Keys, clock: PinnedClock) -> None:
    store.publish_accounts({A: conf(keys, A, 1000)})
    store.accept([job("j1"), job("j2"), job("j3", not_before=clock.seconds + 60), job("u1", B)])
    store.dispatch(1)  # j1 is handed out: leased
    counts = store.counts()
    assert (counts.jobs, counts.delayed, counts.active) == (4, 1, 1)
    assert (counts.due_accounts, counts.unknown_accounts) == (1, 1)


def test_unknown_accounts_are_listed_with_when_they_were_first_seen(
    store: JobStore, clock: PinnedClock
) -> None:
    seen_at = clock.seconds
    store.accept([job("u1", B)])
    assert store.unknown_accounts() == {B: seen_at}
    clock.advance(10)
    assert store.unknown_accounts(older_than=5) == {B: seen_at}
    assert store.unknown_accounts(older_than=20) == {}


def test_the_parked_head_holds_exactly_as_many_as_asked(
    store: JobStore, keys: Keys, clock: PinnedClock
) -> None:
    store.publish_accounts({A: conf(keys, A, 1000)})
    store.redis.hset(keys.circuit(A), mapping={"state": "open", "probe_at": clock.seconds + 60})
    store.accept([job("a1"), job("a2"), job("a3")])
    store.dispatch(10)
    assert store.parked_count(A) == 3
    assert [i for i, _ in store.parked_head(A, 1)] == ["a1"]
    assert [i for i, _ in store.parked_head(A, 2)] == ["a1", "a2"]
