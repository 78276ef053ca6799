"""The account circuit breaker, one process, real Redis, HTTP mocked: a bad token pauses the
account, its jobs wait in the job store without running, the dispatcher hands out one probe at a
time when the probe is due, and the account resumes by itself. Every store runs on a pinned clock
the tests move: no test sleeps."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import httpx
import pytest
import redis
import respx
from celery import Celery

from config import Account
from tasks.archive.runner import ArchiveRunner, Done, RunContext, RunEnd, Waiting
from tests.conftest import (
    CANARY,
    GREEN_ID,
    Env,
    accounts_toml,
    green_accounts_toml,
    use_environment,
)
from tests.support import JobDesk, published_accounts
from worker.celery_app import create_app
from worker.dispatch.dispatcher import run_headers, slot_deadline
from worker.dispatch.janitor import Janitor
from worker.dispatch.registry import dispatch_entry
from worker.dispatch.router import Router
from worker.services import Services, get_accounts, reset_services
from worker.stores.clock import MICROS, PinnedClock
from worker.stores.endings import Endings
from worker.stores.jobs import DispatchedJob
from worker.stores.keys import result_key

GREEN_URL = f"http://provider.test/waInstance{GREEN_ID}/archiveChat/{CANARY}"
COOLDOWN = 0.3
Handed = tuple[DispatchedJob, dict[str, Any]]  # a job handed out, and its message's headers


def job(n: int) -> dict[str, str]:
    return {"provider": "green-api", "account": GREEN_ID, "chat_id": f"7900000{n:04d}@c.us"}


@dataclass
class Circuit:
    services: Services
    runner: ArchiveRunner
    endings: Endings
    desk: JobDesk
    clock: PinnedClock  # every store's: no test sleeps

    @property
    def account(self) -> Account:
        return get_accounts().get("green-api", GREEN_ID)

    def put(self, *numbers: int) -> None:
        for n in numbers:
            self.desk.put(job(n), task_id=f"task-{n}")

    def handed_out(self, budget: int = 100) -> list[Handed]:
        """What the dispatcher hands out now, with the headers of each one's message."""
        dispatch = self.services.jobs.dispatch(budget)
        return [
            (j, run_headers(j, slot_deadline(j, dispatch, 0.0), dispatch.now_us))
            for j in dispatch.jobs
        ]

    def run(self, handed: Handed) -> RunEnd:
        dispatched, headers = handed
        kwargs = dict(dispatched.body.kwargs)
        return self.runner.run((), kwargs, RunContext(dispatched.task_id, "w@h", headers))

    def run_next(self) -> RunEnd:
        task_id, kwargs, headers = self.desk.take()
        return self.runner.run((), kwargs, RunContext(task_id, "w@h", headers))

    def parked(self) -> list[str]:
        return [task_id for task_id, _ in self.services.jobs.parked_head(self.account.key, 100)]

    def conf(self) -> dict[str, Any]:
        return published_accounts(self.services.jobs)[self.account.key]

    def janitor_turn(self) -> None:
        services = self.services
        settings = services.settings
        router = Router(
            services.broker,
            services.jobs,
            services.dead_letters,
            services.keys,
            intake=settings.queue,
            node="janitor",
            shared=services.shared,
        )
        services.redis.delete(services.keys.janitor)
        tick = services.jobs.tick(
            "janitor", [], janitor_ms=1000, node_timeout=3600, unknown_grace=3600
        )
        assert tick.janitor
        Janitor(services, router, "janitor", self.endings).after(tick)


@pytest.fixture
def archiver_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path) -> Iterator[Env]:
    """A limit far above what these tests call: jobs handed out together run on their slots."""
    accounts_file = tmp_path / "accounts.toml"
    accounts_file.write_text(accounts_toml("http://provider.test", green_rate="1000/s"))
    yield use_environment(monkeypatch, redis_url, accounts_file)
    reset_services()


@pytest.fixture
def app(archiver_env: Env) -> Iterator[Celery]:
    celery = create_app(archiver_env.settings)
    yield celery
    celery.close()


@pytest.fixture
def make_circuit(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch, redis_url: str, app: Celery
) -> Iterator[Callable[..., Circuit]]:
    def make(**settings: str) -> Circuit:
        defaults = {
            "circuit_cooldown": str(COOLDOWN),
            "circuit_cooldown_max": "5",
            "circuit_max_pause": "600",
        }
        services = use_environment(
            monkeypatch, redis_url, archiver_env.accounts_file, **{**defaults, **settings}
        ).services
        endings = Endings(services, app.backend)
        client = httpx.Client(timeout=2)
        runner = ArchiveRunner(
            services,
            get_accounts(),
            endings,
            client_factory=lambda: client,
            sleep=lambda _: None,
        )
        clock = PinnedClock()
        services.use_clock(clock)
        return Circuit(services, runner, endings, JobDesk(services, get_accounts()), clock)

    yield make
    reset_services()


@pytest.fixture
def circuit(make_circuit: Callable[..., Circuit]) -> Circuit:
    return make_circuit()


def trip(circuit: Circuit, n: int = 1) -> RunEnd:
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(401, text="Unauthorized")
        circuit.put(n)
        return circuit.run_next()


def probe(circuit: Circuit) -> Handed:
    """The probe the dispatcher hands out once the cooldown has passed."""
    circuit.clock.advance(COOLDOWN + 0.05)
    [handed] = circuit.handed_out()
    assert handed[0].probe
    return handed


def test_a_bad_token_pauses_the_account_and_its_jobs_wait_without_running(
    circuit: Circuit,
) -> None:
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(401, text="Unauthorized")
        circuit.put(1)
        first = circuit.run_next()
        circuit.put(*range(2, 12))
        # The dispatcher parks the paused account's jobs without handing any out.
        assert circuit.handed_out() == []
    assert route.call_count == 1
    assert isinstance(first, Waiting) and "paused (unauthorized)" in first.why
    state = circuit.services.circuit.state(circuit.account)
    assert (state.state, state.reason, state.parked, state.trips) == ("open", "unauthorized", 11, 1)
    assert state.probe_in == pytest.approx(COOLDOWN)
    assert circuit.parked()[0] == "task-1"  # the job that tripped it, first
    assert len(circuit.services.dead_letters) == 0  # nothing dead-lettered, nothing lost
    # The next probe's time is in the account's entry, where the dispatcher reads it.
    assert circuit.conf()["p"] == circuit.clock.micros + COOLDOWN * MICROS
    assert circuit.services.circuit.paused_accounts() == [circuit.account.key]
    # The parked job's result says it waits, and why.
    meta = json.loads(circuit.services.redis.get(result_key("task-1")))
    assert meta["status"] == "RETRY" and "paused (unauthorized)" in str(meta["result"])


def test_a_trip_makes_the_account_due_so_its_waiting_jobs_park(circuit: Circuit) -> None:
    circuit.put(1, 2)
    account = circuit.account
    jobs = circuit.services.jobs
    jobs.redis.zadd(circuit.services.keys.due, {account.key: circuit.clock.micros + 10**9})
    circuit.services.circuit.trip(account, "unauthorized", "HTTP 401", probing=False)
    assert jobs.redis.zscore(circuit.services.keys.due, account.key) == circuit.clock.micros
    assert circuit.handed_out() == [] and circuit.parked() == ["task-1", "task-2"]


def test_a_probe_that_succeeds_resumes_the_account(circuit: Circuit) -> None:
    trip(circuit)
    circuit.put(2, 3, 4, 5)
    assert circuit.handed_out() == []  # parks them
    handed = probe(circuit)
    assert handed[0].task_id == "task-1"  # the oldest parked job
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(200)
        end = circuit.run(handed)
    assert isinstance(end, Done) and end.result["outcome"] == "archived"
    state = circuit.services.circuit.state(circuit.account)
    assert state.state == "closed" and not state.probing
    # Every parked job is back at the front of the account's wait list, oldest first.
    assert circuit.services.jobs.wait_head(circuit.account.key, 10) == [
        f"task-{n}" for n in range(2, 6)
    ]
    assert circuit.parked() == []
    assert "p" not in circuit.conf()  # the dispatcher hands them out again
    assert circuit.services.circuit.paused_accounts() == []
    assert [j.task_id for j, _ in circuit.handed_out()] == [f"task-{n}" for n in range(2, 6)]


def test_released_jobs_go_ahead_of_jobs_that_arrived_later(circuit: Circuit) -> None:
    trip(circuit)
    circuit.put(2)
    circuit.handed_out()
    circuit.services.redis.rpush(circuit.services.keys.wait(circuit.account.key), "task-9")
    assert circuit.services.circuit.resume(circuit.account) == 2
    assert circuit.services.jobs.wait_head(circuit.account.key, 10) == [
        "task-1",
        "task-2",
        "task-9",
    ]


def test_a_probe_that_fails_again_doubles_the_cooldown(circuit: Circuit) -> None:
    trip(circuit)
    circuit.put(2)
    circuit.handed_out()
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(401)
        again = circuit.run(probe(circuit))
    assert isinstance(again, Waiting) and route.call_count == 1
    state = circuit.services.circuit.state(circuit.account)
    # The clock is pinned, so the second cooldown is exactly twice the first; the tolerance
    # only absorbs the stored timestamp's six decimals.
    assert state.trips == 2 and state.probe_in == pytest.approx(2 * COOLDOWN, abs=1e-5)
    assert not state.probing  # the claim is free for the next probe
    assert circuit.conf()["p"] == circuit.clock.micros + 2 * COOLDOWN * MICROS
    assert circuit.parked() == ["task-1", "task-2"]  # back at the head, still oldest first


def test_the_cooldown_doubles_up_to_its_maximum(make_circuit: Callable[..., Circuit]) -> None:
    circuit = make_circuit(circuit_cooldown="1", circuit_cooldown_max="5")
    breaker = circuit.services.circuit
    waits = [breaker.trip(circuit.account, "unauthorized", "401", probing=True) for _ in range(5)]
    assert waits == [1, 2, 4, 5, 5]


def test_jobs_in_flight_when_it_opens_do_not_stretch_the_cooldown(circuit: Circuit) -> None:
    breaker = circuit.services.circuit
    assert breaker.trip(circuit.account, "unauthorized", "HTTP 401", False) == COOLDOWN
    # Four more jobs that were already calling come back with the same 401.
    circuit.clock.advance(0.1)
    for _ in range(4):
        remaining = breaker.trip(circuit.account, "unauthorized", "HTTP 401", False)
        assert remaining == pytest.approx(COOLDOWN - 0.1, abs=1e-5)
    state = breaker.state(circuit.account)
    assert state.trips == 1 and state.probe_in == pytest.approx(COOLDOWN - 0.1, abs=1e-5)


def test_jobs_in_flight_when_it_opens_park_behind_the_one_that_tripped_it(
    circuit: Circuit,
) -> None:
    """Handed out before the circuit opened, they call (the dispatcher checked the circuit when
    it handed them out), meet the account problem and park; the cooldown is the first trip's."""
    circuit.put(1, 2)
    first, second = circuit.handed_out()
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(401)
        assert isinstance(circuit.run(first), Waiting)  # trips the circuit
        assert isinstance(circuit.run(second), Waiting)  # meets it open: parks
    assert route.call_count == 2
    assert circuit.parked() == ["task-1", "task-2"]
    state = circuit.services.circuit.state(circuit.account)
    assert state.trips == 1 and not state.probing


def test_a_transient_probe_lets_the_next_job_probe_now(circuit: Circuit) -> None:
    trip(circuit)
    circuit.put(2)
    circuit.handed_out()
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(503)
        unsure = circuit.run(probe(circuit))
    assert isinstance(unsure, Waiting)
    state = circuit.services.circuit.state(circuit.account)
    assert state.state == "open" and not state.probing  # the claim is free for the next job
    # The next parked job probes at once, not after a claim's time.
    [(next_probe, _)] = circuit.handed_out()
    assert (next_probe.task_id, next_probe.probe) == ("task-2", True)


def test_releasing_a_probe_makes_the_account_due_now(circuit: Circuit) -> None:
    trip(circuit)
    circuit.put(2)
    circuit.handed_out()
    probe(circuit)
    keys = circuit.services.keys
    later = circuit.services.redis.zscore(keys.due, circuit.account.key)
    assert later is not None and later > circuit.clock.micros
    circuit.services.circuit.release_probe(circuit.account.key)
    assert circuit.services.redis.zscore(keys.due, circuit.account.key) == 0
    assert not circuit.services.redis.exists(keys.circuit_probe(circuit.account.key))


def test_a_lost_probe_is_followed_by_another_once_its_claim_runs_out(circuit: Circuit) -> None:
    """The probe's run never ends (its node was killed): its claim outlives the longest run of
    a job; then the next parked job probes."""
    trip(circuit)
    circuit.put(2)
    circuit.handed_out()
    probe(circuit)
    assert circuit.handed_out() == []  # one probe at a time
    # Its claim runs out in Redis (PX on Redis's own clock; the store's clock is pinned).
    circuit.services.redis.delete(circuit.services.keys.circuit_probe(circuit.account.key))
    circuit.clock.advance(circuit.services.jobs.probe_ttl)
    [(second, _)] = circuit.handed_out()
    assert (second.task_id, second.probe) == ("task-2", True)


def test_a_probe_that_fails_again_keeps_its_clock_until_the_maximum_pause(
    make_circuit: Callable[..., Circuit],
) -> None:
    circuit = make_circuit(circuit_max_pause="1.2")
    trip(circuit, 1)
    first_parked = dict(circuit.services.jobs.parked_head(circuit.account.key, 1))["task-1"]
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(401)
        assert isinstance(circuit.run(probe(circuit)), Waiting)  # the probe: 401 again
    circuit.put(2)
    circuit.handed_out()  # parked later than task-1, and behind it
    assert circuit.parked() == ["task-1", "task-2"]
    assert dict(circuit.services.jobs.parked_head(circuit.account.key, 1))["task-1"] == first_parked
    circuit.clock.seconds = first_parked + 1.25  # past the maximum pause since first parked
    circuit.janitor_turn()
    # Past the maximum pause since it was first parked, however often it was released.
    [entry] = list(circuit.services.dead_letters.iter())
    assert entry.reason == "unauthorized" and entry.task_id == "task-1"
    assert entry.job["chat_id"] == "79000000001@c.us" and entry.attempts == 2
    assert circuit.services.jobs.record("task-1") is None
    assert not circuit.services.redis.exists(
        circuit.services.keys.pending(circuit.account.key, "79000000001@c.us")
    )
    meta = json.loads(circuit.services.redis.get(result_key("task-1")))
    assert meta["status"] == "FAILURE" and meta["result"]["exc_type"] == "DeadLettered"
    # task-2 has not waited that long: it waits on.
    assert circuit.parked() == ["task-2"]


def test_jobs_released_by_a_closed_circuit_start_a_new_pause_afresh(circuit: Circuit) -> None:
    trip(circuit, 1)
    circuit.put(2)
    circuit.handed_out()
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(200)
        circuit.run(probe(circuit))  # the account works again
    keys = circuit.services.keys
    assert circuit.services.redis.hlen(keys.parked_since) == 0
    task_id, _, headers = circuit.desk.take()
    assert task_id == "task-2" and "archiver_attempts" not in headers  # it never called


def test_a_probe_that_cannot_release_the_others_still_archives(circuit: Circuit) -> None:
    trip(circuit, 1)
    circuit.put(2)
    circuit.handed_out()
    handed = probe(circuit)
    broken = redis.ConnectionError("Redis gone")
    with (
        respx.mock() as mock,
        patch.object(circuit.services.circuit, "resume", side_effect=broken),
    ):
        mock.post(GREEN_URL).respond(200)
        end = circuit.run(handed)
    # Its own answer stands: not an internal error, not a dead letter.
    assert isinstance(end, Done) and end.result["outcome"] == "archived"
    assert len(circuit.services.dead_letters) == 0
    assert circuit.parked() == ["task-2"]
    # The account's next probe tries again, once the claim has run out.
    circuit.services.redis.delete(circuit.services.keys.circuit_probe(circuit.account.key))
    circuit.clock.advance(circuit.services.jobs.probe_ttl)
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(200)
        [next_probe] = circuit.handed_out()
        assert isinstance(circuit.run(next_probe), Done)
    assert circuit.services.circuit.state(circuit.account).state == "closed"


def test_a_duplicate_that_becomes_the_probe_lets_the_next_job_probe_now(
    circuit: Circuit,
) -> None:
    """The oldest parked job is a copy of another job's chat (kept, as raw messages are): it
    ends as a duplicate without calling the provider, so it cannot tell whether the account
    answers; the next parked job must probe at once, not after the probe claim's time
    (task_time_limit + 10 s)."""
    circuit.put(1)
    [original] = circuit.handed_out()  # task-1 holds the chat, and runs
    circuit.desk.put(job(1), task_id="twin")  # a copy, kept: it waits
    circuit.services.circuit.trip(circuit.account, "unauthorized", "HTTP 401", probing=False)
    assert circuit.handed_out() == []  # the twin parks
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(401)
        assert isinstance(circuit.run(original), Waiting)  # task-1 parks behind the twin
    assert circuit.parked() == ["twin", "task-1"]
    twin = probe(circuit)
    assert twin[0].holder == "task-1"
    end = circuit.run(twin)
    assert isinstance(end, Done) and end.result["outcome"] == "duplicate"
    [(after, _)] = circuit.handed_out()
    assert (after.task_id, after.probe) == ("task-1", True)


def test_closing_a_circuit_clears_its_probe_claim_and_its_next_probe(circuit: Circuit) -> None:
    breaker = circuit.services.circuit
    account = circuit.account
    breaker.trip(account, "unauthorized", "401", probing=False)
    circuit.services.redis.set(circuit.services.keys.circuit_probe(account.key), "probe-job")
    assert breaker.resume(account) == 0
    assert breaker.state(account).state == "closed"
    assert not circuit.services.redis.exists(circuit.services.keys.circuit_probe(account.key))
    assert breaker.paused_accounts() == [] and "p" not in circuit.conf()
    assert breaker.resume(account) == 0  # closed already: nothing changes


def test_a_published_account_keeps_its_pause(circuit: Circuit) -> None:
    """A worker publishing its accounts (at start, on a file change) keeps a paused account's
    next probe, whatever its new limits."""
    breaker = circuit.services.circuit
    account = circuit.account
    breaker.trip(account, "unauthorized", "401", probing=False)
    probe_at = circuit.conf()["p"]
    entry = dispatch_entry(account, circuit.services.limiter)
    entry["l"]["archive.chat"][1] = 1  # a new interval
    circuit.services.jobs.publish_accounts({account.key: entry})
    assert circuit.conf()["p"] == probe_at
    assert circuit.conf()["l"]["archive.chat"][1:] == [1, entry["l"]["archive.chat"][2]]
    breaker.resume(account)
    circuit.services.jobs.publish_accounts({account.key: entry})
    assert "p" not in circuit.conf() and circuit.conf()["l"]["archive.chat"][1] == 1


def test_a_trip_for_an_account_no_worker_published_holds_no_probe_time(circuit: Circuit) -> None:
    breaker = circuit.services.circuit
    account = circuit.account
    circuit.services.jobs.publish_accounts({account.key: None})
    assert breaker.trip(account, "unauthorized", "401", probing=False) == COOLDOWN
    assert breaker.state(account).state == "open"
    assert account.key not in published_accounts(circuit.services.jobs)
    assert circuit.services.redis.zscore(circuit.services.keys.due, account.key) is None


def test_every_paused_account_is_listed(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    many = tmp_path / "three.toml"
    many.write_text(green_accounts_toml(7_105_000_001, 3))
    env = use_environment(monkeypatch, archiver_env.settings.broker_url, many)
    for account in env.accounts:
        env.services.circuit.trip(account, "unauthorized", "401", probing=False)
    assert sorted(env.services.circuit.paused_accounts()) == sorted(a.key for a in env.accounts)
    states = env.services.circuit.states(list(env.accounts))
    assert [s.state for s in states] == ["open"] * 3
