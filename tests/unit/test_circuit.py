"""The account circuit breaker, one process, real Redis, HTTP mocked: a bad token pauses the
account, its jobs wait durably, one probe at a time, and the account resumes by itself."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import respx

from config import Account
from tasks.archive import ArchiveRunner
from tasks.delivery import Delivery, Parked, Reschedule
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
                }
            )
        return found


@pytest.fixture
def circuit(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> Iterator[Circuit]:
    services = use_environment(
        monkeypatch,
        redis_url,
        archiver_env.accounts_file,
        circuit_cooldown="0.3",
        circuit_cooldown_max="5",
        circuit_max_pause="600",
    ).services
    celery = create_app(services.settings)
    producer = ArchiveProducer(celery, services.settings, get_accounts(), services.redis)
    client = httpx.Client(timeout=2)
    runner = ArchiveRunner(
        services,
        get_accounts(),
        client_factory=lambda: client,
        sleep=lambda _: None,
        producer=lambda: producer,
    )
    yield Circuit(services, runner)
    celery.close()


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
    # One probe task is on its way, after the cooldown, on the intake queue.
    [probe] = circuit.messages("archive")
    assert probe["task"] == "archive.probe" and probe["eta"] is not None
    assert probe["kwargs"] == {"provider": "green-api", "account": GREEN_ID}


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


def test_jobs_in_flight_when_it_opens_do_not_stretch_the_cooldown(circuit: Circuit) -> None:
    breaker = circuit.services.circuit
    assert breaker.trip(circuit.account, "unauthorized", "HTTP 401", probing=False) is not None
    # Four more jobs that were already calling come back with the same 401.
    for _ in range(4):
        assert breaker.trip(circuit.account, "unauthorized", "HTTP 401", probing=False) is None
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
    assert breaker.probe_to_schedule(circuit.account) is not None
    assert breaker.probe_to_schedule(circuit.account) is None  # once
