"""Each chat once: one pending or running job per chat, whoever asks, until it ends."""

from __future__ import annotations

import httpx
import pytest
import respx

from tasks.archive import ArchiveRunner, Done, RunContext, Waiting
from tests.conftest import CANARY, GREEN_ID, Env
from tests.support import JobDesk
from worker.producer import ArchiveProducer

GREEN_URL = f"http://provider.test/waInstance{GREEN_ID}/archiveChat/{CANARY}"
JOB = {"provider": "green-api", "account": GREEN_ID, "chat_id": "79001234567@c.us"}
QUEUE = "archive"


@pytest.fixture
def runner(archiver_env: Env) -> ArchiveRunner:
    client = httpx.Client(timeout=2)
    return ArchiveRunner(
        archiver_env.services,
        archiver_env.accounts,
        client_factory=lambda: client,
        sleep=lambda _: None,
    )


def test_enqueueing_a_pending_chat_again_publishes_nothing(
    producer: ArchiveProducer, archiver_env: Env
) -> None:
    first = producer.enqueue(JOB)
    again = producer.enqueue({**JOB, "source": "sweep"})
    assert again == first  # the caller gets the pending job's id
    bulk = producer.enqueue_many([JOB, {**JOB, "chat_id": "79001234568@c.us"}, JOB])
    assert bulk.duplicates == [(1, first), (3, first)]
    assert len(bulk.enqueued) == 1
    assert archiver_env.redis.llen(QUEUE) == 2


def test_a_duplicate_job_makes_no_provider_call(runner: ArchiveRunner, archiver_env: Env) -> None:
    pending = archiver_env.services.pending
    pending.claim(pending.key("green-api", GREEN_ID, "79001234567@c.us"), "the-first-job")
    desk = JobDesk(archiver_env.services, archiver_env.accounts)
    desk.put(JOB, task_id="a-raw-send-task")
    task_id, kwargs, headers = desk.take()
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(GREEN_URL).respond(200)
        end = runner.run((), kwargs, RunContext(task_id, "w@h", headers))
    assert route.call_count == 0
    assert isinstance(end, Done)
    assert end.result["outcome"] == "duplicate" and end.result["duplicate_of"] == "the-first-job"
    # The duplicate does not free a chat it never held.
    assert pending.owner(pending.key("green-api", GREEN_ID, "79001234567@c.us")) == "the-first-job"


def test_the_mark_lasts_through_retries_and_goes_at_the_end(
    producer: ArchiveProducer, runner: ArchiveRunner, archiver_env: Env
) -> None:
    pending = archiver_env.services.pending
    key = pending.key("green-api", GREEN_ID, "79001234567@c.us")
    task_id = producer.enqueue(JOB)
    desk = JobDesk(archiver_env.services, archiver_env.accounts)
    desk.put(JOB, task_id=task_id)  # as the router stores what the producer published
    with respx.mock() as mock:
        mock.post(GREEN_URL).mock(
            side_effect=[httpx.Response(429, headers={"Retry-After": "0.2"}), httpx.Response(200)]
        )
        _, kwargs, headers = desk.take()
        retry = runner.run((), kwargs, RunContext(task_id, "w@h", headers))
        assert isinstance(retry, Waiting)
        assert pending.owner(key) == task_id  # still pending: a new request is a duplicate
        assert producer.enqueue(JOB) == task_id
        _, kwargs, headers = desk.take()
        done = runner.run((), kwargs, RunContext(task_id, "w@h", headers))
    assert isinstance(done, Done) and done.result["outcome"] == "archived"
    assert pending.owner(key) is None
    # A later, separate request is a new job.
    assert producer.enqueue(JOB) != task_id


def test_a_failed_publish_frees_the_chats(
    producer: ArchiveProducer, archiver_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ConnectionError("broker went away")

    monkeypatch.setattr(producer.app.amqp, "send_task_message", broken)
    with pytest.raises(ConnectionError):
        producer.enqueue(JOB)
    pending = archiver_env.services.pending
    assert pending.owner(pending.key("green-api", GREEN_ID, "79001234567@c.us")) is None
