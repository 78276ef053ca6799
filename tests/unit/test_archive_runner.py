"""The archive job's paths, end to end inside one process: real Redis (limiter and dead letters),
HTTP mocked with respx, sleeps recorded instead of slept."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
import respx

from tasks.archive import ArchiveRunner, archive_chat
from tasks.delivery import Delivery, Reschedule
from tests.conftest import CANARY, GREEN_ID, WASSENGER_ID, Env, RoundTrips
from worker.celery_app import create_app
from worker.producer import ArchiveProducer

GREEN_URL = f"http://provider.test/waInstance{GREEN_ID}/archiveChat/{CANARY}"
WASSENGER_URL = f"http://provider.test/v1/chat/{WASSENGER_ID}/chats/79001234567@c.us/archive"
JOB = {
    "provider": "green-api",
    "account": GREEN_ID,
    "chat_id": "79001234567@c.us",
    "request_id": "req-1",
    "source": "test",
}


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def producer(archiver_env: Env) -> Iterator[ArchiveProducer]:
    celery = create_app(archiver_env.settings)
    yield ArchiveProducer(celery, archiver_env.settings, archiver_env.accounts, archiver_env.redis)
    celery.close()


@pytest.fixture
def runner(archiver_env: Env, sleeps: list[float], producer: ArchiveProducer) -> ArchiveRunner:
    client = httpx.Client(timeout=2)
    return ArchiveRunner(
        archiver_env.services,
        archiver_env.accounts,
        client_factory=lambda: client,
        sleep=sleeps.append,
        producer=lambda: producer,
    )


GREEN_QUEUE = f"archive.green-api.{GREEN_ID}"


def delivery(**kwargs: object) -> Delivery:
    """A delivery from the account's own queue unless the test says otherwise."""
    fields: dict = {"task_id": "task-1", "worker": "test@host", "queue": GREEN_QUEUE, **kwargs}
    return Delivery(**fields)


def test_archived(runner: ArchiveRunner) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(200)
        result = runner.run((), JOB, delivery())
    assert result == {
        "outcome": "archived",
        "provider": "green-api",
        "account": GREEN_ID,
        "chat_id": "79001234567@c.us",
        "attempts": 1,
        "request_id": "req-1",
    }


def test_already_archived_is_success(runner: ArchiveRunner, archiver_env: Env) -> None:
    with respx.mock() as mock:
        mock.put(WASSENGER_URL).respond(409, json={"message": "Chat is already archived"})
        result = runner.run(
            (), {**JOB, "provider": "wassenger", "account": WASSENGER_ID}, delivery()
        )
    assert isinstance(result, dict) and result["outcome"] == "already_archived"
    assert len(archiver_env.services.dead_letters) == 0


def test_chat_not_found_is_dead_lettered_at_once(
    runner: ArchiveRunner, archiver_env: Env, sleeps: list[float]
) -> None:
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(400, text="chat with id 79001234567@c.us not found")
        result = runner.run((), JOB, delivery())
    assert route.call_count == 1 and sleeps == []  # never retried
    assert isinstance(result, dict)
    assert result["outcome"] == "dead_lettered" and result["reason"] == "chat_not_found"
    entry = archiver_env.services.dead_letters.get(result["dead_letter_id"])
    assert entry is not None
    assert entry.job == JOB
    assert entry.http_status == 400 and "not found" in entry.excerpt
    assert entry.attempts == 1 and entry.worker == "test@host" and entry.task_id == "task-1"
    assert entry.first_attempt_at is not None and entry.last_attempt_at is not None


def test_transient_burst_is_retried_by_tenacity_then_archived(
    runner: ArchiveRunner, sleeps: list[float]
) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).mock(
            side_effect=[httpx.Response(503), httpx.ReadTimeout("slow"), httpx.Response(200)]
        )
        result = runner.run((), JOB, delivery())
    assert isinstance(result, dict) and result["outcome"] == "archived"
    assert result["attempts"] == 3
    # Two backoff sleeps (exponential with jitter, capped), besides limiter waits of 0.
    backoffs = [s for s in sleeps if s >= 0.5]
    assert len(backoffs) == 2 and all(s <= 4.0 for s in backoffs)


def test_persistent_transient_becomes_celery_retry_then_retries_exhausted(
    runner: ArchiveRunner, archiver_env: Env
) -> None:
    settings = archiver_env.settings
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(502)
        first = runner.run((), JOB, delivery())
        assert isinstance(first, Reschedule)
        assert route.call_count == settings.transient_attempts
        assert first.delivery.transient_rounds == 1
        assert first.delivery.attempts == settings.transient_attempts
        assert settings.retry_countdown <= first.countdown <= settings.retry_countdown * 1.2
        assert first.countdown < settings.visibility_timeout
        # The last round: the budget is spent, the job is dead-lettered, nothing is lost.
        last = runner.run(
            (),
            JOB,
            delivery(transient_rounds=settings.retry_budget, attempts=15, first_attempt_at=1.0),
        )
    assert isinstance(last, dict)
    assert last["reason"] == "retries_exhausted"
    entry = archiver_env.services.dead_letters.get(last["dead_letter_id"])
    assert entry is not None and entry.attempts == 15 + settings.transient_attempts
    assert entry.first_attempt_at == 1.0 and entry.http_status == 502


def test_countdown_doubles_and_is_capped(runner: ArchiveRunner, archiver_env: Env) -> None:
    settings = archiver_env.settings
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(500)
        third = runner.run((), JOB, delivery(transient_rounds=2))
        late = runner.run((), JOB, delivery(transient_rounds=4))
    assert isinstance(third, Reschedule) and isinstance(late, Reschedule)
    assert settings.retry_countdown * 4 <= third.countdown <= settings.retry_countdown * 4 * 1.2
    assert late.countdown <= settings.retry_countdown_max  # jitter included


def test_a_long_retry_after_never_outlasts_the_visibility_timeout(
    runner: ArchiveRunner, archiver_env: Env
) -> None:
    settings = archiver_env.settings
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(429, headers={"Retry-After": "7200"})
        result = runner.run((), JOB, delivery())
        # Back before the provider's two hours are up: still held off, it waits again.
        again = runner.run((), JOB, delivery())
    # A countdown past the visibility timeout would have the broker deliver the job twice.
    assert isinstance(result, Reschedule) and isinstance(again, Reschedule)
    assert result.countdown == again.countdown == settings.retry_countdown_max
    assert settings.retry_countdown_max <= settings.visibility_timeout / 2
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    assert archiver_env.services.limiter.state(account, "archiveChat").next_permit_in > 7000


def test_rate_limited_is_rescheduled_never_dead_lettered(
    runner: ArchiveRunner, archiver_env: Env
) -> None:
    with respx.mock() as mock:
        route = mock.post(GREEN_URL).respond(429, headers={"Retry-After": "5"})
        result = runner.run((), JOB, delivery())
    assert isinstance(result, Reschedule)
    assert route.call_count == 1
    assert 4.5 <= result.countdown <= 6.5  # Retry-After honoured, with jitter
    assert len(archiver_env.services.dead_letters) == 0
    # Every worker now holds off this account: the next permit is about 5 s away.
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    state = archiver_env.services.limiter.state(account, "archiveChat")
    assert state.rate_limited == 1 and 4 < state.next_permit_in <= 5


def test_no_permit_soon_reschedules_without_calling(
    runner: ArchiveRunner, archiver_env: Env
) -> None:
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    archiver_env.services.limiter.penalize(account, "archiveChat", 30)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(GREEN_URL).respond(200)
        result = runner.run((), JOB, delivery())
    assert isinstance(result, Reschedule) and route.call_count == 0
    assert 29 < result.countdown <= 36


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (400, "last message not found", "no_messages"),
        (500, "interface conversion: interface {} is float64", "invalid_request"),
        (418, "I am a teapot", "unexpected_response"),
    ],
)
def test_permanent_answers_are_dead_lettered(
    runner: ArchiveRunner, status: int, body: str, reason: str
) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(status, text=body)
        result = runner.run((), JOB, delivery())
    assert isinstance(result, dict) and result["reason"] == reason


@pytest.mark.parametrize(
    ("args", "kwargs", "detail"),
    [
        ((), {**JOB, "chat_id": "not-a-chat"}, "chat_id:"),
        (("green-api",), {}, "keyword arguments only"),
        ((), {"provider": "green-api"}, "account: missing"),
    ],
)
def test_malformed_job_is_dead_lettered_invalid_request(
    runner: ArchiveRunner, archiver_env: Env, args: tuple, kwargs: dict, detail: str
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        result = runner.run(args, kwargs, delivery())
        assert not mock.calls
    assert isinstance(result, dict) and result["reason"] == "invalid_request"
    assert detail in result["detail"]
    assert archiver_env.services.dead_letters.get(result["dead_letter_id"]) is not None


def test_unknown_account_is_dead_lettered(runner: ArchiveRunner) -> None:
    result = runner.run((), {**JOB, "account": "9999999999"}, delivery())
    assert isinstance(result, dict) and result["reason"] == "unknown_account"


def test_token_never_in_results_or_dead_letters(runner: ArchiveRunner, archiver_env: Env) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).mock(side_effect=httpx.ConnectError(f"refused {GREEN_URL}"))
        mock.put(WASSENGER_URL).respond(404, json={"message": "Chat not found"})
        results = [
            runner.run((), JOB, delivery(transient_rounds=99)),
            runner.run((), {**JOB, "provider": "wassenger", "account": WASSENGER_ID}, delivery()),
        ]
    assert CANARY not in repr(results)
    for key in archiver_env.redis.scan_iter("*"):
        dumped = archiver_env.redis.dump(key) or b""
        assert CANARY.encode() not in dumped


def test_intake_job_runs_at_once_when_a_permit_is_free(runner: ArchiveRunner) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(200)
        result = runner.run((), JOB, delivery(queue="archive"))
    assert isinstance(result, dict) and result["outcome"] == "archived"


def test_intake_job_moves_to_its_account_queue_when_the_account_is_busy(
    runner: ArchiveRunner, archiver_env: Env
) -> None:
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    for _ in range(5):  # five calls already reserved: the next permit is ~0.5 s away
        archiver_env.services.limiter.acquire(account, "archiveChat", max_wait=5)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(GREEN_URL).respond(200)
        result = runner.run((), JOB, delivery(queue="archive"))
        assert route.call_count == 0
        # The same job on its own queue waits for its permit instead.
        waited = runner.run((), JOB, delivery())
    assert isinstance(result, Reschedule)
    assert result.countdown == 0 and result.queue == GREEN_QUEUE
    assert isinstance(waited, dict) and waited["outcome"] == "archived"


def test_every_reschedule_targets_the_account_queue(runner: ArchiveRunner) -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).mock(
            side_effect=[
                httpx.Response(429),
                httpx.Response(503),
                httpx.Response(503),
                httpx.Response(503),
            ]
        )
        limited = runner.run((), JOB, delivery())
        failing = runner.run((), JOB, delivery(queue="archive"))
    assert isinstance(limited, Reschedule) and limited.queue == GREEN_QUEUE
    assert isinstance(failing, Reschedule) and failing.queue == GREEN_QUEUE


def test_a_job_delivered_too_often_is_dead_lettered_worker_lost(
    runner: ArchiveRunner, archiver_env: Env
) -> None:
    # Three deliveries began and none ended: each killed its worker.
    key = "chat-archiver:deliveries:task-1"
    archiver_env.redis.set(key, archiver_env.settings.max_deliveries)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(GREEN_URL).respond(200)
        result = runner.run((), JOB, delivery())
    assert route.call_count == 0
    assert isinstance(result, dict) and result["reason"] == "worker_lost"
    assert not archiver_env.redis.exists(key)
    pending = archiver_env.services.pending
    assert pending.owner(pending.key("green-api", GREEN_ID, JOB["chat_id"])) is None


def test_a_run_costs_two_redis_round_trips(
    runner: ArchiveRunner, archiver_env: Env, round_trips: Callable[[], RoundTrips]
) -> None:
    """One script to be admitted, one at the end: the per-job overhead the unlimited
    benchmark measures (tests/benchmarks/bench_rate_limit.py)."""
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(200)
        runner.run((), {**JOB, "chat_id": "79000000001@c.us"}, delivery(task_id="warm-up"))
        sends = round_trips()
        result = runner.run((), JOB, delivery())
    assert isinstance(result, dict) and result["outcome"] == "archived"
    assert sends.count == 2
    assert not archiver_env.redis.exists("chat-archiver:deliveries:task-1")


def test_a_malformed_message_is_kept_whole_and_redacted(
    runner: ArchiveRunner, archiver_env: Env
) -> None:
    # Positional arguments, and a token pasted into a field: the entry keeps what was sent,
    # so an operator can see the mistake, and never the token.
    args = ("green-api", GREEN_ID, "79001234567@c.us")
    result = runner.run(args, {"note": f"token {CANARY}"}, delivery())
    assert isinstance(result, dict) and result["reason"] == "invalid_request"
    entry = archiver_env.services.dead_letters.get(result["dead_letter_id"])
    assert entry is not None
    assert "args=('green-api', '7105187566', '79001234567@c.us')" in entry.excerpt
    assert "'note'" in entry.excerpt and CANARY not in entry.to_json()


def test_an_exception_that_escapes_the_task_is_dead_lettered_internal_error(
    archiver_env: Env,
) -> None:
    # What Celery calls when the runner raises (a bug of ours) or the hard time limit kills it.
    archive_chat.on_failure(RuntimeError(f"boom {CANARY}"), "task-9", (), JOB, None)
    [entry] = list(archiver_env.services.dead_letters.iter())
    assert (entry.reason, entry.task_id, entry.job) == ("internal_error", "task-9", JOB)
    assert entry.detail == "RuntimeError escaped the task (see the worker log)"
    assert CANARY not in entry.to_json()
