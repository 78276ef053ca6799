"""One run of a chat job, every path, inside one process: a real Redis (job store, limiter,
dead letters, results), jobs put in and handed out as a producer and the dispatcher would, HTTP
mocked with respx, sleeps recorded instead of slept."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import respx
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from tenacity import RetryCallState, Retrying

from tasks.archive import archive_chat
from tasks.archive.runner import ArchiveRunner, Done, Failed, Quiet, RunContext, Waiting
from tasks.providers import transient_backoff
from tests.conftest import (
    CANARY,
    GREEN_ID,
    WASSENGER_ID,
    Env,
    RoundTrips,
    accounts_toml,
    use_environment,
)
from tests.support import JobDesk
from worker.celery_app import create_app
from worker.contract.history import (
    ATTEMPTS_HEADER,
    FIRST_ATTEMPT_HEADER,
    ROUNDS_HEADER,
    Ticket,
)
from worker.services import reset_services
from worker.stores.endings import Endings, RunRef
from worker.stores.jobs import JobBody, StoredJob, lease_member
from worker.stores.keys import result_key

GREEN_URL = f"http://provider.test/waInstance{GREEN_ID}/archiveChat/{CANARY}"
# Read when an answer is undocumented: the instance works, so that answer is the job's problem.
GREEN_STATE_URL = f"http://provider.test/waInstance{GREEN_ID}/getStateInstance/{CANARY}"
WASSENGER_URL = f"http://provider.test/v1/io/{WASSENGER_ID}/chats/79001234567@c.us/archive"
JOB = {
    "provider": "green-api",
    "account": GREEN_ID,
    "chat_id": "79001234567@c.us",
    "request_id": "req-1",
    "source": "test",
}
WASSENGER_JOB = {**JOB, "provider": "wassenger", "account": WASSENGER_ID}


@pytest.fixture
def green_rate() -> str:
    return "1000/s"


@pytest.fixture
def archiver_env(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path, green_rate: str
) -> Iterator[Env]:
    """Sleeps are recorded, not slept, so time does not pass between a run's attempts: limits
    far above what these tests call keep tenacity's retries from waiting for permits (a test
    may set the GREEN-API account's rate with ``parametrize("green_rate", ...)``)."""
    accounts_file = tmp_path / "accounts.toml"
    accounts_file.write_text(
        accounts_toml("http://provider.test", green_rate=green_rate, wassenger_rate="1000/s")
    )
    yield use_environment(monkeypatch, redis_url, accounts_file)
    reset_services()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def app(archiver_env: Env) -> Iterator[Celery]:
    celery = create_app(archiver_env.settings)
    yield celery
    celery.close()


@pytest.fixture
def endings(archiver_env: Env, app: Celery) -> Endings:
    return Endings(archiver_env.services, app.backend)


@pytest.fixture
def runner(archiver_env: Env, sleeps: list[float], endings: Endings) -> ArchiveRunner:
    client = httpx.Client(timeout=2)
    services = archiver_env.services
    return ArchiveRunner(
        services,
        archiver_env.accounts,
        endings,
        client_factory=lambda: client,
        sleep=sleeps.append,
    )


@pytest.fixture
def desk(archiver_env: Env) -> JobDesk:
    return JobDesk(archiver_env.services, archiver_env.accounts)


@pytest.fixture
def run(runner: ArchiveRunner, desk: JobDesk) -> Callable[..., Any]:
    """Put a job in the store, take it out as the dispatcher would, run it."""

    def run_job(job: dict[str, Any] = JOB, **history: float) -> Any:
        desk.put(job)
        task_id, kwargs, headers = desk.take()
        return runner.run((), kwargs, RunContext(task_id, "test@host", {**headers, **history}))

    return run_job


def test_archived(run: Callable[..., Any], archiver_env: Env) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(200)
        end = run()
    assert end == Done(
        {
            "outcome": "archived",
            "provider": "green-api",
            "account": GREEN_ID,
            "chat_id": "79001234567@c.us",
            "attempts": 1,
            "request_id": "req-1",
        }
    )
    assert archiver_env.services.jobs.counts().jobs == 0  # the job has left the store
    metrics = archiver_env.services.metrics
    assert metrics.outcomes() == {("green-api", GREEN_ID, "archived", ""): 1}
    assert metrics.latency()[("green-api", GREEN_ID)]["sum"] > 0  # its call's duration


def test_already_archived_is_success(run: Callable[..., Any], archiver_env: Env) -> None:
    with respx.mock() as mock:
        mock.put(WASSENGER_URL).respond(409, json={"message": "Chat is already archived"})
        end = run(WASSENGER_JOB)
    assert isinstance(end, Done) and end.result["outcome"] == "already_archived"
    assert len(archiver_env.services.dead_letters) == 0


def test_chat_not_found_is_dead_lettered_at_once(
    run: Callable[..., Any], archiver_env: Env, sleeps: list[float]
) -> None:
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(400, text="chat with id 79001234567@c.us not found")
        end = run()
    assert route.call_count == 1 and all(s < 0.5 for s in sleeps)  # never retried
    assert isinstance(end, Failed)
    assert end.result["outcome"] == "dead_lettered" and end.result["reason"] == "chat_not_found"
    assert (end.error.reason, end.error.dead_letter_id) == (
        "chat_not_found",
        end.result["dead_letter_id"],
    )
    entry = archiver_env.services.dead_letters.read(end.result["dead_letter_id"])
    assert entry is not None
    assert entry.job == JOB
    assert entry.http_status == 400 and "not found" in entry.excerpt
    assert entry.attempts == 1 and entry.worker == "test@host"
    assert entry.first_attempt_at is not None and entry.last_attempt_at is not None
    assert entry.task_id  # the run that dead-lettered it
    assert entry.last_attempt_at >= entry.first_attempt_at
    metrics = archiver_env.services.metrics
    assert metrics.outcomes() == {("green-api", GREEN_ID, "dead_lettered", "chat_not_found"): 1}
    assert metrics.latency()[("green-api", GREEN_ID)]["sum"] > 0


# A minute's period: a run may be 0.3 s late for its slot before it pushes the later ones (a
# round trip), so a loaded machine cannot add one.
@pytest.mark.parametrize("green_rate", ["10/m"])
def test_a_run_calls_on_its_dispatch_ticket_and_ends_in_one_round_trip(
    runner: ArchiveRunner,
    desk: JobDesk,
    archiver_env: Env,
    round_trips: Callable[[], RoundTrips],
) -> None:
    """The dispatch reserved the permit and took the lease: the run's only Redis round trip is
    its ending, which writes the result too."""
    desk.put(JOB)
    task_id, kwargs, headers = desk.take()
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(200)
        sends = round_trips()
        end = runner.run((), kwargs, RunContext(task_id, "test@host", headers))
    assert isinstance(end, Done) and end.result["outcome"] == "archived"
    assert sends.count == 1
    meta = json.loads(archiver_env.redis.get(result_key(task_id)))
    assert (meta["status"], meta["result"], meta["task_id"]) == ("SUCCESS", end.result, task_id)
    assert meta["date_done"]


@pytest.mark.parametrize("green_rate", ["10/s"])  # slots 102.5 ms apart
def test_a_run_late_for_its_slot_calls_on_it_and_pushes_the_later_slots_back(
    runner: ArchiveRunner, desk: JobDesk, archiver_env: Env
) -> None:
    """Late past its slot by more than it may be (at 10/s: 5 ms, and 5 more for a slot an idle
    limit gave), the run still calls on it and moves the account's later slots by the excess, at
    most one interval."""
    desk.put(JOB)
    task_id, kwargs, headers = desk.take()
    slot = Ticket.from_headers(headers).slot  # type: ignore[union-attr]
    time.sleep(0.04)
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(200)
        end = runner.run((), kwargs, RunContext(task_id, "test@host", headers))
    assert isinstance(end, Done)
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    services = archiver_env.services
    assert services.limiter.state(account, "archiveChat").late == 1
    tat = int(services.redis.get(services.limiter.keys(account, "archiveChat")[0]))
    # The next slot: one interval and the idle gap (25 ms) after the reserved one, pushed by
    # 40 ms or more less the 10 a call from an idle limit may use (twice the allowance): at most
    # one interval more.
    assert 102_500 + 25_000 + 30_000 <= tat - slot <= 2 * 102_500 + 25_000


@pytest.mark.parametrize("green_rate", ["10/s"])
def test_a_write_redis_refuses_before_the_call_makes_the_job_wait_not_fail(
    runner: ArchiveRunner, desk: JobDesk, archiver_env: Env, fill: Callable[..., None]
) -> None:
    """Redis fills while a run is under way: its late call's push (a write) is refused. The job
    is not dead-lettered internal_error: it makes no call, goes back to the front of its wait
    list, and its ending waits until Redis takes writes again."""
    first = desk.put(JOB)
    task_id, kwargs, headers = desk.take()
    time.sleep(0.04)  # late past its slot: the run pushes the later slots back, a write
    fill()
    room_again = threading.Timer(0.5, archiver_env.redis.config_set, ("maxmemory", 0))
    room_again.start()
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(GREEN_URL).respond(200)
        end = runner.run((), kwargs, RunContext(task_id, "test@host", headers))
    room_again.join()
    assert isinstance(end, Waiting) and "Redis refuses writes" in end.why
    assert route.call_count == 0
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    assert archiver_env.services.jobs.wait_head(account.key, 10) == [first]


@pytest.mark.parametrize("green_rate", ["10/s"])
def test_every_attempt_measures_its_own_lateness(
    archiver_env: Env, desk: JobDesk, endings: Endings
) -> None:
    """The first call and tenacity's retry (on a permit of its own) each wake 30 ms after
    their slot: each pushes the account's later slots."""
    services = archiver_env.services

    def oversleep(seconds: float) -> None:
        if seconds < 0.5:  # a permit's wait
            time.sleep(seconds + 0.03)
        else:  # tenacity's backoff (from 0.5 s), shortened: the next slot comes within it
            time.sleep(0.1)

    runner = ArchiveRunner(
        services,
        archiver_env.accounts,
        endings,
        client_factory=lambda: httpx.Client(timeout=2),
        sleep=oversleep,
    )
    desk.put(JOB)
    task_id, kwargs, headers = desk.take()
    time.sleep(0.03)  # the first call's slot has passed by the time it runs
    with respx.mock() as mock:
        mock.post(GREEN_URL).mock(side_effect=[httpx.Response(503), httpx.Response(200)])
        end = runner.run((), kwargs, RunContext(task_id, "test@host", headers))
    assert isinstance(end, Done) and end.result["attempts"] == 2
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    assert services.limiter.state(account, "archiveChat").late == 2


def test_transient_burst_is_retried_by_tenacity_then_archived(
    run: Callable[..., Any], sleeps: list[float]
) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).mock(
            side_effect=[httpx.Response(503), httpx.ReadTimeout("slow"), httpx.Response(200)]
        )
        end = run()
    assert isinstance(end, Done) and end.result["outcome"] == "archived"
    assert end.result["attempts"] == 3
    # Two backoff sleeps (exponential with jitter, capped), besides waits for permits.
    backoffs = [s for s in sleeps if s >= 0.5]
    assert len(backoffs) == 2 and all(s <= 4.0 for s in backoffs)


def test_persistent_transient_waits_in_the_store_then_ends_retries_exhausted(
    run: Callable[..., Any], archiver_env: Env, desk: JobDesk, runner: ArchiveRunner
) -> None:
    settings = archiver_env.settings
    store = archiver_env.services.jobs
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(502)
        started = time.time()
        first = run()
        assert isinstance(first, Waiting) and first.why.startswith("HTTP 502: ")
        assert "again in" in first.why
        assert route.call_count == settings.transient_attempts
        # Each attempt's duration is recorded, though the job has not ended.
        latency = archiver_env.services.metrics.latency()[("green-api", GREEN_ID)]
        assert sum(v for k, v in latency.items() if k != "sum") == settings.transient_attempts
        # The job waits in the delayed set, not in anybody's memory, with its history.
        [(member, at)] = store.redis.zrange(store.keys.delayed, 0, -1, withscores=True)
        task_id = member.split("|")[1]
        assert settings.retry_countdown <= at / 1e6 - started <= settings.retry_countdown * 1.3
        record = store.record(task_id)
        assert record is not None and record.body.history[ROUNDS_HEADER] == 1
        meta = json.loads(store.redis.get(result_key(task_id)))
        assert meta["status"] == "RETRY" and meta["result"]["exc_type"] == "Deferred"
        # The last round: the budget is spent, the job is dead-lettered, nothing is lost.
        last = run(
            {**JOB, "chat_id": "79001234568@c.us"},
            **{
                ROUNDS_HEADER: settings.retry_budget,
                ATTEMPTS_HEADER: 15,
                FIRST_ATTEMPT_HEADER: 1.0,
            },
        )
    assert isinstance(last, Failed) and last.result["reason"] == "retries_exhausted"
    entry = archiver_env.services.dead_letters.read(last.result["dead_letter_id"])
    assert entry is not None and entry.attempts == 15 + settings.transient_attempts
    assert entry.first_attempt_at == 1.0 and entry.http_status == 502
    assert entry.detail.startswith(f"still failing after {entry.attempts} attempts: HTTP 502: ")


def test_a_call_that_got_no_answer_says_so(run: Callable[..., Any]) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).mock(side_effect=httpx.ConnectError("refused"))
        end = run()
    assert isinstance(end, Waiting) and end.why.startswith("no answer: ")


def test_transient_backoff_doubles_from_half_a_second_capped(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tenacity's waits: 0.5 s doubling, up to 0.5 s of jitter on each, at most the maximum."""
    backoff = transient_backoff(archiver_env.settings)
    assert archiver_env.settings.transient_wait_max == 4

    def waits(jitter_at: Callable[[float, float], float]) -> list[float]:
        monkeypatch.setattr("random.uniform", jitter_at)
        return [backoff(_attempt(n)) for n in (1, 2, 3, 4, 5)]

    assert waits(lambda low, high: low) == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert waits(lambda low, high: high) == [1.0, 1.5, 2.5, 4.0, 4.0]


def _attempt(number: int) -> RetryCallState:
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = number
    return state


def test_countdown_doubles_and_is_capped(run: Callable[..., Any], archiver_env: Env) -> None:
    settings = archiver_env.settings
    store = archiver_env.services.jobs
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(500)
        started = time.time()
        run(**{ROUNDS_HEADER: 2})
        run({**JOB, "chat_id": "79001234568@c.us"}, **{ROUNDS_HEADER: 4})
    [third, late] = sorted(
        at / 1e6 - started
        for _, at in store.redis.zrange(store.keys.delayed, 0, -1, withscores=True)
    )
    assert settings.retry_countdown * 4 <= third <= settings.retry_countdown * 4 * 1.2 + 1
    assert late <= settings.retry_countdown_max * 1.2 + 1  # jitter included


def test_a_429_slows_every_worker_and_the_job_waits_its_turn(
    run: Callable[..., Any], archiver_env: Env, desk: JobDesk
) -> None:
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(429, headers={"Retry-After": "5"})
        end = run()
    assert isinstance(end, Waiting) and "429" in end.why
    assert route.call_count == 1
    assert len(archiver_env.services.dead_letters) == 0
    # Every worker now holds off this account: the next permit is about 5 s away, and the job is
    # back at the front of its account's wait list, where the dispatcher finds it in time.
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    state = archiver_env.services.limiter.state(account, "archiveChat")
    assert state.rate_limited == 1 and 4 < state.next_permit_in <= 5
    store = archiver_env.services.jobs
    assert len(store.wait_head(account.key, 10)) == 1
    assert store.dispatch(10).jobs == []


def test_a_long_retry_after_is_waited_in_redis_not_in_a_worker(
    run: Callable[..., Any], archiver_env: Env
) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(429, headers={"Retry-After": "7200"})
        end = run()
    assert isinstance(end, Waiting)
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    assert archiver_env.services.limiter.state(account, "archiveChat").next_permit_in > 7000

    def due_in() -> float:  # when the dispatcher looks at the account next, from now
        score = archiver_env.redis.zscore(archiver_env.services.keys.due, account.key)
        return float(score or 0) / 1e6 - time.time()

    assert due_in() < 1  # it is the dispatcher that finds it far ...
    archiver_env.services.jobs.dispatch(10)  # ... and puts the account at its next permit
    assert due_in() > 7000


def test_a_retry_held_back_by_its_account_keeps_its_place_at_the_front(
    runner: ArchiveRunner, desk: JobDesk, archiver_env: Env
) -> None:
    """The first call failed; the retry's own permit is 30 s away: the job goes back to the
    front of its account's wait list without calling again, and no worker slot waits for it."""
    first = desk.put(JOB)
    desk.put({**JOB, "chat_id": "79001234568@c.us"})
    task_id, kwargs, headers = desk.take()
    assert task_id == first
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    archiver_env.services.limiter.penalize(account, "archiveChat", 30)  # the next slot: 30 s
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(503)
        end = runner.run((), kwargs, RunContext(task_id, "test@host", headers))
    assert isinstance(end, Waiting) and "permit in" in end.why
    assert route.call_count == 1
    assert archiver_env.services.jobs.wait_head(account.key, 10)[0] == first


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (400, "last message not found", "no_messages"),
        (500, "interface conversion: interface {} is float64", "invalid_request"),
        (418, "I am a teapot", "unexpected_response"),
    ],
)
def test_permanent_answers_are_dead_lettered(
    run: Callable[..., Any], status: int, body: str, reason: str
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        mock.post(GREEN_URL).respond(status, text=body)
        mock.get(GREEN_STATE_URL).respond(200, json={"stateInstance": "authorized"})
        end = run()
    assert isinstance(end, Failed) and end.result["reason"] == reason


@pytest.mark.parametrize(
    ("args", "kwargs", "detail"),
    [
        ((), {**JOB, "chat_id": "not-a-chat"}, "chat_id:"),
        (("green-api",), {}, "keyword arguments only"),
        ((), {"provider": "green-api"}, "account: missing"),
    ],
)
def test_a_malformed_job_that_got_past_the_router_is_dead_lettered(
    runner: ArchiveRunner,
    desk: JobDesk,
    archiver_env: Env,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    detail: str,
) -> None:
    desk.put_raw(kwargs, f"green-api:{GREEN_ID}", mark="")
    task_id, _, headers = desk.take()
    with respx.mock(assert_all_called=False) as mock:
        end = runner.run(args, kwargs, RunContext(task_id, "test@host", headers))
        assert not mock.calls
    assert isinstance(end, Failed) and end.result["reason"] == "invalid_request"
    assert detail in end.result["detail"]
    assert archiver_env.services.dead_letters.read(end.result["dead_letter_id"]) is not None
    assert archiver_env.services.jobs.record(task_id) is None


def test_a_message_no_dispatcher_handed_out_is_dead_lettered_as_it_came(
    runner: ArchiveRunner, archiver_env: Env
) -> None:
    """Pushed onto a ready queue by hand, with no ticket: not a job of the store, but nothing
    is dropped either."""
    with respx.mock(assert_all_called=False) as mock:
        end = runner.run((), JOB, RunContext("by-hand", "test@host"))
        assert not mock.calls
    assert isinstance(end, Failed) and end.result["reason"] == "invalid_request"
    assert "dispatcher" in end.result["detail"]
    entry = archiver_env.services.dead_letters.read(end.result["dead_letter_id"])
    assert entry is not None and entry.task_id == "by-hand"
    meta = json.loads(archiver_env.redis.get(result_key("by-hand")))
    assert meta["status"] == "FAILURE" and meta["result"]["exc_type"] == "DeadLettered"


def test_an_account_this_process_does_not_know_waits_instead_of_dead_lettering(
    runner: ArchiveRunner, desk: JobDesk, archiver_env: Env
) -> None:
    """The dispatcher knew the account (another node's accounts file named it) but this process
    does not (its file is being changed): the job waits, on Redis's clock."""
    job = {**JOB, "account": "9999999999"}
    archiver_env.services.jobs.publish_accounts({"green-api:9999999999": {"l": {}}})
    desk.put_raw(job, "green-api:9999999999")
    task_id, kwargs, headers = desk.take()
    before = archiver_env.redis.time()[0]
    end = runner.run((), kwargs, RunContext(task_id, "test@host", headers))
    assert isinstance(end, Waiting) and "accounts file" in end.why
    assert len(archiver_env.services.dead_letters) == 0
    [(member, at)] = archiver_env.redis.zrange(
        archiver_env.services.keys.delayed, 0, -1, withscores=True
    )
    assert member == f"green-api:9999999999|{task_id}" and at / 1e6 >= before + 9


def test_a_run_whose_lease_was_given_to_another_records_nothing(
    runner: ArchiveRunner, desk: JobDesk, archiver_env: Env
) -> None:
    """Its lease ran out (its node looked dead) and the janitor gave the job back: this run's
    answer is not recorded; the job's next run ends it."""
    desk.put(JOB)
    task_id, kwargs, headers = desk.take()
    ticket = Ticket.from_headers(headers)
    assert ticket is not None
    archiver_env.redis.zrem(archiver_env.services.keys.active, lease_member(task_id, ticket.token))
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(200)
        end = runner.run((), kwargs, RunContext(task_id, "test@host", headers))
    assert isinstance(end, Quiet)
    assert archiver_env.services.metrics.outcomes() == {}
    assert archiver_env.services.jobs.record(task_id) is not None
    assert not archiver_env.redis.exists(result_key(task_id))


def test_token_never_in_results_or_dead_letters(run: Callable[..., Any], archiver_env: Env) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).mock(side_effect=httpx.ConnectError(f"refused {GREEN_URL}"))
        mock.put(WASSENGER_URL).respond(404, json={"message": "Chat not found"})
        ends = [run(**{ROUNDS_HEADER: 99}), run(WASSENGER_JOB)]
    assert CANARY not in repr(ends)
    for key in archiver_env.redis.scan_iter("*"):
        dumped = archiver_env.redis.dump(key) or b""
        assert CANARY.encode() not in dumped


def test_a_job_whose_runs_keep_dying_is_dead_lettered_worker_lost(
    runner: ArchiveRunner, desk: JobDesk, archiver_env: Env
) -> None:
    desk.put(JOB)
    store = archiver_env.services.jobs
    for _ in range(archiver_env.settings.max_deliveries):  # each run killed its worker
        task_id, _, _ = desk.take()
        [member] = archiver_env.redis.zrange(archiver_env.services.keys.active, 0, -1)
        archiver_env.redis.zadd(archiver_env.services.keys.active, {member: 0})  # ran out
        tick = store.tick("janitor", [], janitor_ms=1000, node_timeout=60, unknown_grace=60)
        assert tick.requeued == [task_id]
        archiver_env.redis.delete(archiver_env.services.keys.janitor)
    task_id, kwargs, headers = desk.take()
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(GREEN_URL).respond(200)
        end = runner.run((), kwargs, RunContext(task_id, "test@host", headers))
    assert route.call_count == 0
    assert isinstance(end, Failed) and end.result["reason"] == "worker_lost"
    assert "began 4 runs" in end.result["detail"]
    assert store.record(task_id) is None
    assert not archiver_env.redis.exists(
        archiver_env.services.keys.pending(f"green-api:{GREEN_ID}", JOB["chat_id"])
    )


def test_a_malformed_message_is_kept_whole_and_redacted(
    runner: ArchiveRunner, desk: JobDesk, archiver_env: Env
) -> None:
    # Positional arguments, and a token pasted into a field: the entry keeps what was sent,
    # so an operator can see the mistake, and never the token.
    args = ("green-api", GREEN_ID, "79001234567@c.us")
    kwargs = {"note": f"token {CANARY}"}
    desk.put_raw(kwargs, f"green-api:{GREEN_ID}", mark="")
    task_id, _, headers = desk.take()
    end = runner.run(args, kwargs, RunContext(task_id, "test@host", headers))
    assert isinstance(end, Failed) and end.result["reason"] == "invalid_request"
    entry = archiver_env.services.dead_letters.read(end.result["dead_letter_id"])
    assert entry is not None
    assert "args=('green-api', '7105187566', '79001234567@c.us')" in entry.excerpt
    assert "'note'" in entry.excerpt and CANARY not in entry.to_json()


def test_a_malformed_jobs_result_holds_short_redacted_strings(
    runner: ArchiveRunner, desk: JobDesk, caplog: pytest.LogCaptureFixture
) -> None:
    """The result is a JobResult whatever arrived: strings, capped, with no token in them; and
    so is the job's log line."""
    kwargs = {
        "provider": ["green-api"],
        "account": None,
        "chat_id": f"{CANARY}@c.us" + "x" * 1_000_000,
        "request_id": 42,
    }
    desk.put_raw(kwargs, f"green-api:{GREEN_ID}", mark="")
    task_id, _, headers = desk.take()
    end = runner.run((), kwargs, RunContext(task_id, "test@host", headers))
    assert isinstance(end, Failed) and end.result["reason"] == "invalid_request"
    shown = {key: end.result[key] for key in ("provider", "account", "chat_id", "request_id")}
    assert shown["provider"] == "['green-api']" and shown["account"] == ""
    assert shown["request_id"] == "42"
    assert CANARY not in json.dumps(end.result) and len(json.dumps(end.result)) < 2_000
    [line] = [r for r in caplog.records if r.getMessage().startswith("dead_lettered")]
    assert CANARY not in line.getMessage() and len(line.getMessage()) < 1_000
    assert line.__dict__["chat_id"] == shown["chat_id"]  # the JSON log's field too


def test_an_exception_that_escapes_a_run_is_dead_lettered_internal_error(
    archiver_env: Env, desk: JobDesk, app: Celery
) -> None:
    # What Celery calls in the pool process when the runner raises (a bug of ours).
    desk.put(JOB, task_id="task-9")
    _, _, headers = desk.take()
    archive_chat.push_request(id="task-9", headers=headers, hostname="w@h")
    try:
        archive_chat.on_failure(RuntimeError(f"boom {CANARY}"), "task-9", (), JOB, None)
    finally:
        archive_chat.pop_request()
    [entry] = list(archiver_env.services.dead_letters.iter())
    assert (entry.reason, entry.task_id, entry.job) == ("internal_error", "task-9", JOB)
    assert entry.detail == "RuntimeError escaped the task (see the worker log)"
    assert CANARY not in entry.to_json()
    assert archiver_env.services.jobs.record("task-9") is None
    meta = json.loads(archiver_env.redis.get(result_key("task-9")))
    assert meta["status"] == "FAILURE" and meta["result"]["exc_message"][0] == "internal_error"


@pytest.mark.parametrize(
    "exc",
    [
        SoftTimeLimitExceeded(),
        redis.ConnectionError("Redis went away"),
        redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
    ],
    ids=["soft-time-limit", "connection", "full"],
)
def test_an_ending_redis_did_not_take_is_left_to_the_lease_not_dead_lettered(
    archiver_env: Env, desk: JobDesk, app: Celery, exc: BaseException
) -> None:
    """The run's ending could not be written (Redis away or full past the outage grace, or the
    soft time limit while it waited): no false internal_error; the job stays in the store and
    its lease brings it back."""
    desk.put(JOB, task_id="task-10")
    _, _, headers = desk.take()
    archive_chat.push_request(id="task-10", headers=headers, hostname="w@h")
    try:
        archive_chat.on_failure(exc, "task-10", (), JOB, None)
    finally:
        archive_chat.pop_request()
    assert list(archiver_env.services.dead_letters.iter()) == []
    assert archiver_env.services.jobs.record("task-10") is not None


def test_a_failure_after_the_run_ended_adds_no_dead_letter(
    archiver_env: Env, desk: JobDesk, endings: Endings
) -> None:
    """An exception raised after the run recorded its outcome (in Celery's own code, say): the
    job worked; no false internal_error."""
    desk.put(JOB, task_id="task-8")
    _, kwargs, headers = desk.take()
    ticket = Ticket.from_headers(headers)
    assert ticket is not None
    stored = StoredJob("task-8", ticket.account, "archive.chat", ticket.mark, 0, JobBody(kwargs))
    assert endings.final(RunRef(stored, lease_member("task-8", ticket.token)), result={})
    archive_chat.push_request(id="task-8", headers=headers, hostname="w@h")
    try:
        archive_chat.on_failure(ConnectionError("later"), "task-8", (), JOB, None)
    finally:
        archive_chat.pop_request()
    assert len(archiver_env.services.dead_letters) == 0


# -- verify = true, and further calls under the limit ------------------------------------------

GREEN_BASE = f"http://provider.test/waInstance{GREEN_ID}"


def green_url(method: str) -> str:
    return f"{GREEN_BASE}/{method}/{CANARY}"


@pytest.fixture
def verifying(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path
) -> Iterator[tuple[Env, ArchiveRunner, JobDesk]]:
    """The GREEN-API account with ``verify = true``: each success is read back."""
    accounts_file = tmp_path / "verify.toml"
    accounts_file.write_text(
        accounts_toml("http://provider.test", green_rate="1000/s", wassenger_rate="1000/s")
        .replace('rate_limit = "1000/s"', 'rate_limit = "1000/s"\nverify = true', 1)
        .replace("[[accounts]]", '[[accounts]]\nrate_limits = { getContactInfo = "1000/s" }', 1)
    )
    env = use_environment(monkeypatch, redis_url, accounts_file)
    assert env.accounts.get("green-api", GREEN_ID).verify
    app = create_app(env.settings)
    runner = ArchiveRunner(
        env.services,
        env.accounts,
        Endings(env.services, app.backend),
        client_factory=lambda: httpx.Client(timeout=2),
        sleep=lambda _: None,
    )
    yield env, runner, JobDesk(env.services, env.accounts)
    app.close()
    reset_services()


def test_verify_repairs_a_false_already_archived(
    verifying: tuple[Env, ArchiveRunner, JobDesk],
) -> None:
    """GREEN-API answered "already archived" for a chat that was not (green-api/issues #488,
    #744): read back not archived, it is unarchived and archived again, once."""
    _, runner, desk = verifying
    desk.put(JOB)
    task_id, kwargs, headers = desk.take()
    with respx.mock() as mock:
        archive = mock.post(green_url("archiveChat")).mock(
            side_effect=[
                httpx.Response(400, text='{"message": "ArchiveChatError: already archive=true"}'),
                httpx.Response(200),
            ]
        )
        unarchive = mock.post(green_url("unarchiveChat")).respond(200)
        read_back = mock.post(green_url("getContactInfo")).mock(
            side_effect=[
                httpx.Response(200, json={"isArchive": False}),
                httpx.Response(200, json={"isArchive": True}),
            ]
        )
        end = runner.run((), kwargs, RunContext(task_id, "test@host", headers))
        calls = list(mock.calls)
    assert isinstance(end, Done) and end.result["outcome"] == "archived"
    assert (archive.call_count, unarchive.call_count, read_back.call_count) == (2, 1, 2)
    order = [call.request.url.path.split("/")[2] for call in calls]
    assert order == [
        "archiveChat",
        "getContactInfo",
        "unarchiveChat",
        "archiveChat",
        "getContactInfo",
    ]


def test_verify_keeps_the_answer_when_the_read_back_cannot_tell(
    verifying: tuple[Env, ArchiveRunner, JobDesk],
) -> None:
    _, runner, desk = verifying
    desk.put(JOB)
    task_id, kwargs, headers = desk.take()
    with respx.mock() as mock:
        mock.post(green_url("archiveChat")).respond(
            400, text='{"message": "ArchiveChatError: already archive=true"}'
        )
        mock.post(green_url("getContactInfo")).respond(200, json={"name": "no flag here"})
        end = runner.run((), kwargs, RunContext(task_id, "test@host", headers))
        calls = len(mock.calls)
    assert isinstance(end, Done) and end.result["outcome"] == "already_archived"
    assert calls == 2


def test_an_answer_that_needs_the_accounts_state_reads_it_under_the_limit(
    run: Callable[..., Any], archiver_env: Env
) -> None:
    """An undocumented answer is only a job's problem if the instance says it works: that
    getStateInstance call takes a permit of the account's getStateInstance limit (1/s), like
    any call, so a burst of such answers cannot draw 429s on it."""
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(400, text="something no page documents")
        state = mock.get(green_url("getStateInstance")).respond(
            200, json={"stateInstance": "authorized"}
        )
        end = run()
    assert state.call_count == 1
    assert isinstance(end, Failed) and end.result["reason"] == "unexpected_response"
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    limiter = archiver_env.services.limiter
    assert archiver_env.redis.exists(limiter.keys(account, "getStateInstance")[0])
