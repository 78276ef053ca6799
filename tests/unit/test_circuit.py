"""The account circuit breaker, one process, real Redis, HTTP mocked: a bad token pauses the
account, its jobs wait durably, one probe at a time, and the account resumes by itself."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from unittest.mock import patch

import httpx
import pytest
import redis
import respx

from config import Account
from tasks.archive import ArchiveRunner
from tasks.delivery import Delivery, Parked, Reschedule
from tasks.probe import look_after
from tests.conftest import CANARY, GREEN_ID, Env, use_environment
from worker.celery_app import create_app
from worker.circuit import Decision
from worker.producer import ArchiveProducer
from worker.services import Services, get_accounts

GREEN_URL = f"http://provider.test/waInstance{GREEN_ID}/archiveChat/{CANARY}"
QUEUE = f"archive.green-api.{GREEN_ID}"


@dataclass
class Circuit:
    services: Services
    runner: ArchiveRunner

    @property
    def account(self) -> Account:
        return get_accounts().get("green-api", GREEN_ID)

    def run(self, n: int) -> dict | Reschedule | Parked:
        job = {"provider": "green-api", "account": GREEN_ID, "chat_id": f"7900000{n:04d}@c.us"}
        return self.runner.run((), job, Delivery(f"task-{n}", "w@h", queue=QUEUE))

    def run_message(self, message: dict) -> dict | Reschedule | Parked:
        """Run a job as a worker would run this message from the account's queue."""
        delivery = Delivery.from_headers(message["id"], "w@h", message["headers"], QUEUE)
        return self.runner.run((), message["kwargs"], delivery)

    def look_after(self, chain: str) -> tuple[dict, dict[str, dict]]:
        """One turn of the probe chain; also what it recorded as results of parked jobs."""
        done: dict[str, dict] = {}
        turn = look_after(self.runner, self.account, chain, "w@h", done.__setitem__)
        return turn, done

    def chain_mark(self) -> str | None:
        return self.services.redis.get(f"chat-archiver:probe-scheduled:green-api:{GREEN_ID}")

    def messages(self, queue: str) -> list[dict]:
        found = []
        for raw in self.services.redis.lrange(queue, 0, -1):
            envelope = json.loads(raw)
            kwargs = json.loads(base64.b64decode(envelope["body"]))[1]
            found.append(
                {
                    "task": envelope["headers"]["task"],
                    "id": envelope["headers"]["id"],
                    "kwargs": kwargs,
                    "eta": envelope["headers"].get("eta"),
                    "headers": envelope["headers"],
                }
            )
        return found


@pytest.fixture
def make_circuit(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> Iterator[Callable[..., Circuit]]:
    apps = []

    def make(**settings: str) -> Circuit:
        defaults = {"circuit_cooldown": "0.3", "circuit_cooldown_max": "5"}
        defaults["circuit_max_pause"] = "600"
        services = use_environment(
            monkeypatch, redis_url, archiver_env.accounts_file, **{**defaults, **settings}
        ).services
        celery = create_app(services.settings)
        apps.append(celery)
        producer = ArchiveProducer(celery, services.settings, get_accounts(), services.redis)
        client = httpx.Client(timeout=2)
        runner = ArchiveRunner(
            services,
            get_accounts(),
            client_factory=lambda: client,
            sleep=lambda _: None,
            producer=lambda: producer,
        )
        return Circuit(services, runner)

    yield make
    for celery in apps:
        celery.close()


@pytest.fixture
def circuit(make_circuit: Callable[..., Circuit]) -> Circuit:
    return make_circuit()


def test_a_bad_token_pauses_the_account_and_parks_its_jobs(circuit: Circuit) -> None:
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(401, text="Unauthorized")
        first = circuit.run(1)
        later = [circuit.run(n) for n in range(2, 12)]
    # One provider call: the ten jobs after it waited without calling.
    assert route.call_count == 1
    assert isinstance(first, Parked) and first.reason == "unauthorized"
    assert all(isinstance(job, Parked) for job in later)
    state = circuit.services.circuit.state(circuit.account)
    assert (state.state, state.reason, state.parked, state.trips) == ("open", "unauthorized", 11, 1)
    assert len(circuit.services.dead_letters) == 0  # nothing dead-lettered, nothing lost
    # One probe task is on its way, after the cooldown, on the intake queue: the first turn of
    # the chain that looks after the account.
    [probe] = circuit.messages("archive")
    assert probe["task"] == "archive.probe" and probe["eta"] is not None
    assert probe["kwargs"] == {
        "provider": "green-api",
        "account": GREEN_ID,
        "chain": circuit.chain_mark(),
    }


def test_a_probe_that_succeeds_resumes_the_account(circuit: Circuit) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).mock(side_effect=[httpx.Response(401), httpx.Response(200)])
        for n in range(1, 6):
            circuit.run(n)
        time.sleep(0.35)  # the cooldown
        assert circuit.services.circuit.check(circuit.account) is Decision.PROBE
        circuit.services.circuit.release_probe(circuit.account)
        probe = circuit.run(99)
    assert isinstance(probe, dict) and probe["outcome"] == "archived"
    assert circuit.services.circuit.state(circuit.account).state == "closed"
    # Every parked job is back on the account's queue, with its own task id.
    assert sorted(m["id"] for m in circuit.messages(QUEUE)) == [f"task-{n}" for n in range(1, 6)]
    assert circuit.services.circuit.parked_count(circuit.account) == 0


def test_a_probe_that_fails_again_doubles_the_cooldown(circuit: Circuit) -> None:
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(401)
        circuit.run(1)
        time.sleep(0.35)
        again = circuit.run(2)  # the probe
        circuit.run(3)  # in flight with it: no second probe, no extra call
    assert isinstance(again, Parked)
    assert route.call_count == 2
    state = circuit.services.circuit.state(circuit.account)
    assert state.trips == 2 and 0.4 < (state.probe_in or 0) <= 0.6
    assert state.parked == 3
    # The chain started by the first trip wakes up for the next probe: no second chain.
    assert len(circuit.messages("archive")) == 1


def test_jobs_in_flight_when_it_opens_do_not_stretch_the_cooldown(circuit: Circuit) -> None:
    breaker = circuit.services.circuit
    trip = breaker.trip(circuit.account, "unauthorized", "HTTP 401", probing=False, chain="c1")
    assert trip is not None
    # Four more jobs that were already calling come back with the same 401.
    for n in range(4):
        again = breaker.trip(circuit.account, "unauthorized", "HTTP 401", False, chain=f"c{n}")
        assert again is None
    state = breaker.state(circuit.account)
    assert state.trips == 1 and (state.probe_in or 0) <= 0.3


def test_a_transient_probe_lets_the_next_job_probe(circuit: Circuit) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).mock(side_effect=[httpx.Response(401)] + [httpx.Response(503)] * 3)
        circuit.run(1)
        time.sleep(0.35)
        unsure = circuit.run(2)
    assert isinstance(unsure, Reschedule)
    assert circuit.services.circuit.check(circuit.account) is Decision.PROBE


def test_a_lost_probe_task_is_replaced(circuit: Circuit) -> None:
    breaker = circuit.services.circuit
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(401)
        circuit.run(1)
    circuit.services.redis.delete("archive")  # the probe task is lost
    circuit.services.redis.delete(f"chat-archiver:probe-scheduled:green-api:{GREEN_ID}")
    assert breaker.chain_to_start(circuit.account, "new") is not None
    assert breaker.chain_to_start(circuit.account, "other") is None  # once
    assert circuit.chain_mark() == "new"


def test_the_chain_releases_one_probe_per_turn_and_stops_when_nothing_is_parked(
    circuit: Circuit,
) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(401)
        circuit.run(1)
        circuit.run(2)
    [first] = circuit.messages("archive")
    chain = first["kwargs"]["chain"]
    early, _ = circuit.look_after(chain)
    assert early["probe"] is None and 0.1 < early["next_turn_in"] <= 0.3  # not due yet
    time.sleep(0.35)
    turn, _ = circuit.look_after(chain)
    assert turn["probe"] == "task-1"  # the oldest
    assert [m["id"] for m in circuit.messages(QUEUE)] == ["task-1"]
    assert turn["next_turn_in"] == pytest.approx(0.3)  # a cooldown: the probe answers by then
    # Another chain (a replacement started while this one looked lost) gives way.
    assert circuit.look_after("impostor")[0]["chain"] == "superseded"
    # The probe job never runs (lost); the next turn releases the next job.
    assert circuit.look_after(chain)[0]["probe"] == "task-2"
    # Nothing parked: the chain ends and says so, and a job that parks starts a new one.
    assert circuit.look_after(chain)[0]["chain"] == "ended"
    assert circuit.chain_mark() is None
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(401)
        assert isinstance(circuit.run(3), Parked)
    assert circuit.chain_mark() not in (None, chain)


def test_a_probe_that_fails_again_goes_back_to_the_head_and_keeps_its_clock(
    make_circuit: Callable[..., Circuit],
) -> None:
    circuit = make_circuit(circuit_max_pause="1.2")
    breaker = circuit.services.circuit
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(401)
        circuit.run(1)
        first_parked = breaker.head(circuit.account, 1)[0].parked_at
        chain = circuit.messages("archive")[0]["kwargs"]["chain"]
        time.sleep(0.35)
        assert circuit.look_after(chain)[0]["probe"] == "task-1"
        [released] = circuit.messages(QUEUE)
        assert isinstance(circuit.run_message(released), Parked)  # the probe: 401 again
        circuit.run(2)  # parked later than task-1, and behind it
    assert [job.task_id for job in breaker.head(circuit.account, 5)] == ["task-1", "task-2"]
    assert breaker.head(circuit.account, 1)[0].parked_at == first_parked
    time.sleep(max(0.0, first_parked + 1.25 - time.time()))
    turn, done = circuit.look_after(chain)
    # Past the maximum pause since it was first parked, however often it was released.
    assert turn["dead_lettered"] == 1
    assert done["task-1"]["outcome"] == "dead_lettered"
    assert done["task-1"]["reason"] == "unauthorized"
    [entry] = list(circuit.services.dead_letters.iter())
    assert entry.job["chat_id"] == "79000000001@c.us" and entry.attempts == 2
    # task-2 has not waited that long: it is this turn's probe.
    assert turn["probe"] == "task-2" and breaker.parked_count(circuit.account) == 0


def test_jobs_released_by_a_closed_circuit_start_a_new_pause_afresh(circuit: Circuit) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).mock(side_effect=[httpx.Response(401), httpx.Response(200)])
        circuit.run(1)
        time.sleep(0.35)
        circuit.run(2)  # the probe: the account works again
    [released] = circuit.messages(QUEUE)
    assert "archiver_first_parked" not in released["headers"]
    assert released["headers"]["archiver_attempts"] == 1


def test_jobs_that_will_not_call_take_no_permit_and_no_probe_claim(circuit: Circuit) -> None:
    limiter = circuit.services.limiter

    def granted() -> int:
        return limiter.state(circuit.account, "archiveChat").granted

    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(401)
        circuit.run(1)
    before = granted()
    for n in range(2, 6):
        assert isinstance(circuit.run(n), Parked)
    assert granted() == before  # parked jobs leave the account's rate to the probe
    time.sleep(0.35)
    # A second job for task-1's chat (task-1 holds it while parked) is a duplicate: it must not
    # take the probe that is now due.
    job = {"provider": "green-api", "account": GREEN_ID, "chat_id": "79000000001@c.us"}
    twin = circuit.runner.run((), job, Delivery("twin", "w@h", queue=QUEUE))
    assert isinstance(twin, dict) and twin["outcome"] == "duplicate"
    assert granted() == before
    assert circuit.services.circuit.check(circuit.account) is Decision.PROBE


def test_a_probe_that_cannot_release_the_others_still_archives(circuit: Circuit) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).mock(side_effect=[httpx.Response(401), httpx.Response(200)])
        circuit.run(1)
        circuit.run(2)
        chain = circuit.messages("archive")[0]["kwargs"]["chain"]
        time.sleep(0.35)
        broken = redis.ConnectionError("broker gone")
        with patch.object(circuit.runner.producer(), "republish", side_effect=broken):
            probe = circuit.run(3)
    # Its own answer stands: not an internal error, not a dead letter.
    assert isinstance(probe, dict) and probe["outcome"] == "archived"
    assert len(circuit.services.dead_letters) == 0
    assert circuit.services.circuit.parked_count(circuit.account) == 2
    # The chain's next turn finds the circuit closed and releases what was left.
    turn, _ = circuit.look_after(chain)
    assert turn == {"account": f"green-api:{GREEN_ID}", "circuit": "closed", "released": 2}
    assert sorted(m["id"] for m in circuit.messages(QUEUE)) == ["task-1", "task-2"]
