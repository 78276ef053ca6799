"""The account circuit breaker, one process, real Redis, HTTP mocked: a bad token pauses the
account, its jobs wait in the job store without running, one probe at a time, and the account
resumes by itself. Every store runs on a pinned clock the tests move: no test sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import patch

import httpx
import pytest
import redis
import respx

from config import Account
from tasks.archive import ArchiveRunner, Done, RunContext, RunEnd, Waiting
from tasks.archive.pauses import AccountPauses
from tasks.probe import look_after
from tests.conftest import CANARY, GREEN_ID, Env, accounts_toml, use_environment
from tests.support import JobDesk
from worker.contract import envelope
from worker.services import Services, get_accounts, reset_services
from worker.stores.clock import PinnedClock
from worker.stores.endings import Endings

GREEN_URL = f"http://provider.test/waInstance{GREEN_ID}/archiveChat/{CANARY}"


def job(n: int) -> dict[str, str]:
    return {"provider": "green-api", "account": GREEN_ID, "chat_id": f"7900000{n:04d}@c.us"}


@dataclass
class Circuit:
    services: Services
    runner: ArchiveRunner
    pauses: AccountPauses
    desk: JobDesk
    probes: list[tuple[str, float]] = field(default_factory=list)  # (chain, countdown) sent
    clock: PinnedClock = field(default_factory=PinnedClock)  # every store's: no test sleeps

    @property
    def account(self) -> Account:
        return get_accounts().get("green-api", GREEN_ID)

    def put(self, *numbers: int) -> None:
        for n in numbers:
            self.desk.put(job(n), task_id=f"task-{n}")

    def handed_out(self, budget: int = 100) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """What the dispatcher hands out now (messages unpacked)."""
        out = []
        for message in self.services.jobs.dispatch(budget).messages:
            _, kwargs, headers = envelope.unpack(message)
            out.append((str(headers["id"]), kwargs, headers))
        return out

    def run_next(self) -> RunEnd:
        task_id, kwargs, headers = self.desk.take()
        return self.runner.run((), kwargs, RunContext(task_id, "w@h", headers))

    def run(self, handed: tuple[str, dict[str, Any], dict[str, Any]]) -> RunEnd:
        task_id, kwargs, headers = handed
        return self.runner.run((), kwargs, RunContext(task_id, "w@h", headers))

    def parked(self) -> list[str]:
        return [task_id for task_id, _ in self.services.jobs.parked_head(self.account.key, 100)]

    def look_after(self, chain: str) -> dict[str, Any]:
        return look_after(self.pauses, self.account, chain)

    def chain_mark(self) -> str | None:
        return self.services.redis.get(self.services.keys.probe_chain(self.account.key))


@pytest.fixture
def archiver_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path) -> Iterator[Env]:
    """A limit far above what these tests call: jobs handed out together run on their slots."""
    accounts_file = tmp_path / "accounts.toml"
    accounts_file.write_text(accounts_toml("http://provider.test", green_rate="1000/s"))
    yield use_environment(monkeypatch, redis_url, accounts_file)
    reset_services()


@pytest.fixture
def make_circuit(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> Iterator[Callable[..., Circuit]]:
    def make(**settings: str) -> Circuit:
        defaults = {"circuit_cooldown": "0.3", "circuit_cooldown_max": "5"}
        defaults["circuit_max_pause"] = "600"
        services = use_environment(
            monkeypatch, redis_url, archiver_env.accounts_file, **{**defaults, **settings}
        ).services
        endings = Endings(services)
        sent: list[tuple[str, float]] = []
        pauses = AccountPauses(
            services, endings, lambda _account, chain, wait: sent.append((chain, wait))
        )
        client = httpx.Client(timeout=2)
        runner = ArchiveRunner(
            services,
            get_accounts(),
            client_factory=lambda: client,
            sleep=lambda _: None,
            endings=endings,
            pauses=pauses,
        )
        clock = PinnedClock(time.time())
        services.use_clock(clock)
        return Circuit(services, runner, pauses, JobDesk(services, get_accounts()), sent, clock)

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
    assert circuit.parked()[0] == "task-1"  # the job that tripped it, first
    assert len(circuit.services.dead_letters) == 0  # nothing dead-lettered, nothing lost
    # The first turn of the chain that looks after the account is on its way, after the cooldown.
    [(chain, countdown)] = circuit.probes
    assert chain == circuit.chain_mark() and countdown == pytest.approx(0.3, abs=0.05)


def test_a_probe_that_succeeds_resumes_the_account(circuit: Circuit) -> None:
    trip(circuit)
    circuit.put(2, 3, 4, 5)
    circuit.handed_out()  # parks them
    circuit.clock.advance(0.35)  # the cooldown
    assert circuit.pauses.release_probe(circuit.account) == "task-1"
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(200)
        probe = circuit.run_next()
    assert isinstance(probe, Done) and probe.result["outcome"] == "archived"
    assert circuit.services.circuit.state(circuit.account).state == "closed"
    # Every parked job is back in the account's wait list, oldest first.
    assert circuit.services.jobs.wait_head(circuit.account.key, 10) == [
        f"task-{n}" for n in range(2, 6)
    ]
    assert circuit.parked() == []


def test_a_probe_that_fails_again_doubles_the_cooldown(circuit: Circuit) -> None:
    trip(circuit)
    circuit.put(2)
    circuit.handed_out()
    circuit.clock.advance(0.35)
    circuit.pauses.release_probe(circuit.account)
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(401)
        again = circuit.run_next()  # the probe
    assert isinstance(again, Waiting) and route.call_count == 1
    state = circuit.services.circuit.state(circuit.account)
    # The clock is pinned, so the second cooldown is exactly twice the first (0.3 s); the
    # tolerance only absorbs the stored timestamp's six decimals.
    assert state.trips == 2 and state.probe_in == pytest.approx(0.6, abs=1e-5)
    assert circuit.parked() == ["task-1", "task-2"]  # back at the head, still oldest first
    assert len(circuit.probes) == 1  # the chain the first trip started wakes up for it


def test_jobs_in_flight_when_it_opens_do_not_stretch_the_cooldown(circuit: Circuit) -> None:
    breaker = circuit.services.circuit
    assert breaker.trip(circuit.account, "unauthorized", "HTTP 401", False, "c1") is not None
    # Four more jobs that were already calling come back with the same 401.
    for n in range(4):
        assert breaker.trip(circuit.account, "unauthorized", "HTTP 401", False, f"c{n}") is None
    state = breaker.state(circuit.account)
    assert state.trips == 1 and state.probe_in == pytest.approx(0.3, abs=1e-5)


def test_a_transient_probe_lets_the_next_job_probe(circuit: Circuit) -> None:
    trip(circuit)
    circuit.clock.advance(0.35)
    circuit.pauses.release_probe(circuit.account)
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(503)
        unsure = circuit.run_next()
    assert isinstance(unsure, Waiting)
    state = circuit.services.circuit.state(circuit.account)
    assert state.state == "open" and not state.probing  # the claim is free for the next job


def test_a_lost_probe_chain_is_replaced(circuit: Circuit) -> None:
    breaker = circuit.services.circuit
    trip(circuit)
    circuit.services.redis.delete(circuit.services.keys.probe_chain(circuit.account.key))
    assert breaker.chain_to_start(circuit.account, "new") is not None
    assert breaker.chain_to_start(circuit.account, "other") is None  # once
    assert circuit.chain_mark() == "new"
    assert breaker.paused_accounts() == [circuit.account.key]


def test_the_chain_releases_one_probe_per_turn_and_stops_when_nothing_is_parked(
    circuit: Circuit,
) -> None:
    trip(circuit, 1)
    circuit.put(2)
    circuit.handed_out()
    [(chain, _)] = circuit.probes
    early = circuit.look_after(chain)
    assert early["probe"] is None and 0.1 < early["next_turn_in"] <= 0.3  # not due yet
    circuit.clock.advance(0.35)
    turn = circuit.look_after(chain)
    assert turn["probe"] == "task-1"  # the oldest, to the front of the wait list
    assert circuit.services.jobs.wait_head(circuit.account.key, 5) == ["task-1"]
    assert turn["next_turn_in"] == pytest.approx(0.3)  # a cooldown: the probe answers by then
    # Another chain (a replacement started while this one looked lost) gives way.
    assert circuit.look_after("impostor")["chain"] == "superseded"
    # The probe job never runs (lost); the next turn releases the next job.
    assert circuit.look_after(chain)["probe"] == "task-2"
    # Nothing parked: the chain ends and says so, and a job that parks starts a new one.
    assert circuit.look_after(chain)["chain"] == "ended"
    assert circuit.chain_mark() is None
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(401)
        assert isinstance(circuit.run_next(), Waiting)  # task-1 probes, and parks again
    assert circuit.chain_mark() not in (None, chain)


def test_a_probe_that_fails_again_keeps_its_clock_until_the_maximum_pause(
    make_circuit: Callable[..., Circuit],
) -> None:
    circuit = make_circuit(circuit_max_pause="1.2")
    trip(circuit, 1)
    first_parked = dict(circuit.services.jobs.parked_head(circuit.account.key, 1))["task-1"]
    [(chain, _)] = circuit.probes
    circuit.clock.advance(0.35)
    assert circuit.look_after(chain)["probe"] == "task-1"
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(401)
        assert isinstance(circuit.run_next(), Waiting)  # the probe: 401 again
    circuit.put(2)
    circuit.handed_out()  # parked later than task-1, and behind it
    assert circuit.parked() == ["task-1", "task-2"]
    assert dict(circuit.services.jobs.parked_head(circuit.account.key, 1))["task-1"] == first_parked
    circuit.clock.seconds = first_parked + 1.25  # past the maximum pause since first parked
    turn = circuit.look_after(chain)
    # Past the maximum pause since it was first parked, however often it was released.
    assert turn["dead_lettered"] == 1
    [entry] = list(circuit.services.dead_letters.iter())
    assert entry.reason == "unauthorized" and entry.task_id == "task-1"
    assert entry.job["chat_id"] == "79000000001@c.us" and entry.attempts == 2
    assert circuit.services.jobs.record("task-1") is None
    # task-2 has not waited that long: it is this turn's probe.
    assert turn["probe"] == "task-2" and circuit.parked() == []


def test_jobs_released_by_a_closed_circuit_start_a_new_pause_afresh(circuit: Circuit) -> None:
    trip(circuit, 1)
    circuit.put(2)
    circuit.handed_out()
    circuit.clock.advance(0.35)
    circuit.pauses.release_probe(circuit.account)
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(200)
        circuit.run_next()  # the probe: the account works again
    keys = circuit.services.keys
    assert circuit.services.redis.hlen(keys.parked_since) == 0
    task_id, _, headers = circuit.desk.take()
    assert task_id == "task-2" and "archiver_attempts" not in headers  # it never called


def test_jobs_in_flight_when_it_opens_park_without_a_permit_or_the_probe(
    circuit: Circuit,
) -> None:
    limiter = circuit.services.limiter

    def granted() -> int:
        return limiter.state(circuit.account, "archiveChat").granted

    circuit.put(1, 2)
    first, second = circuit.desk.take(), circuit.desk.take()  # both handed out, both in flight
    before = granted()
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(401)
        assert isinstance(circuit.run(first), Waiting)  # trips the circuit
        assert isinstance(circuit.run(second), Waiting)  # meets it open: parks
    assert route.call_count == 1 and granted() == before  # no new permit for the parked one
    assert circuit.parked() == ["task-1", "task-2"]
    assert circuit.services.circuit.state(circuit.account).probing is False
    circuit.clock.advance(0.35)
    # A second job for task-1's chat (task-1 holds it while parked) is a duplicate: it must not
    # take the probe that is now due.
    circuit.desk.put(job(1), task_id="twin")
    twin = circuit.run_next()
    assert isinstance(twin, Done) and twin.result["outcome"] == "duplicate"
    assert circuit.services.circuit.state(circuit.account).probing is False


def test_a_probe_that_cannot_release_the_others_still_archives(circuit: Circuit) -> None:
    trip(circuit, 1)
    circuit.put(2)
    circuit.handed_out()
    [(chain, _)] = circuit.probes
    circuit.clock.advance(0.35)
    circuit.pauses.release_probe(circuit.account)
    broken = redis.ConnectionError("Redis gone")
    with (
        respx.mock() as mock,
        patch.object(circuit.services.jobs, "release_parked", side_effect=broken),
    ):
        mock.post(GREEN_URL).respond(200)
        probe = circuit.run_next()
    # Its own answer stands: not an internal error, not a dead letter.
    assert isinstance(probe, Done) and probe.result["outcome"] == "archived"
    assert len(circuit.services.dead_letters) == 0
    assert circuit.parked() == ["task-2"]
    # The chain's next turn finds the circuit closed and releases what was left.
    turn = circuit.look_after(chain)
    assert turn == {"account": f"green-api:{GREEN_ID}", "circuit": "closed", "released": 1}
    assert circuit.services.jobs.wait_head(circuit.account.key, 5) == ["task-2"]
