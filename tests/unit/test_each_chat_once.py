"""Each chat once: one pending or running job per chat, whoever asks, until it ends."""

from __future__ import annotations

import httpx
import pytest
import respx

from tasks.archive.runner import ArchiveRunner, Done, RunContext, Waiting
from tests.conftest import CANARY, GREEN_ID, Env
from tests.support import JobDesk
from worker.producer import ArchiveProducer, PublishFailed
from worker.stores.endings import Endings

GREEN_URL = f"http://provider.test/waInstance{GREEN_ID}/archiveChat/{CANARY}"
JOB = {"provider": "green-api", "account": GREEN_ID, "chat_id": "79001234567@c.us"}


def mark(env: Env) -> str:
    """The key of JOB's chat's pending mark, which holds the id of the job that owns it."""
    return env.services.keys.pending(f"green-api:{GREEN_ID}", JOB["chat_id"])


@pytest.fixture
def runner(archiver_env: Env, producer: ArchiveProducer) -> ArchiveRunner:
    client = httpx.Client(timeout=2)
    return ArchiveRunner(
        archiver_env.services,
        archiver_env.accounts,
        Endings(archiver_env.services, producer.app.backend),
        client_factory=lambda: client,
        sleep=lambda _: None,
    )


def test_enqueueing_a_pending_chat_again_stores_nothing(
    producer: ArchiveProducer, archiver_env: Env
) -> None:
    first = producer.enqueue(JOB)
    again = producer.enqueue({**JOB, "source": "sweep"})
    assert again == first  # the caller gets the pending job's id
    bulk = producer.enqueue_many([JOB, {**JOB, "chat_id": "79001234568@c.us"}, JOB])
    assert bulk.duplicates == [(1, first), (3, first)]
    assert len(bulk.enqueued) == 1
    assert archiver_env.services.jobs.counts().jobs == 2


def test_a_duplicate_job_makes_no_provider_call(runner: ArchiveRunner, archiver_env: Env) -> None:
    """A raw message the router stored while another job held the chat: handed out, its run
    ends as a duplicate of that job without calling."""
    archiver_env.redis.set(mark(archiver_env), "the-first-job")
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
    assert archiver_env.redis.get(mark(archiver_env)) == "the-first-job"


def test_the_mark_lasts_through_retries_and_goes_at_the_end(
    producer: ArchiveProducer, runner: ArchiveRunner, archiver_env: Env
) -> None:
    key = mark(archiver_env)
    desk = JobDesk(archiver_env.services, archiver_env.accounts)
    task_id = producer.enqueue(JOB)
    with respx.mock() as mock:
        mock.post(GREEN_URL).mock(
            side_effect=[httpx.Response(429, headers={"Retry-After": "0.2"}), httpx.Response(200)]
        )
        _, kwargs, headers = desk.take()
        retry = runner.run((), kwargs, RunContext(task_id, "w@h", headers))
        assert isinstance(retry, Waiting)
        assert archiver_env.redis.get(key) == task_id  # still pending: a new request is a duplicate
        assert producer.enqueue(JOB) == task_id
        _, kwargs, headers = desk.take()
        done = runner.run((), kwargs, RunContext(task_id, "w@h", headers))
    assert isinstance(done, Done) and done.result["outcome"] == "archived"
    assert archiver_env.redis.get(key) is None
    # A later, separate request is a new job.
    assert producer.enqueue(JOB) != task_id


def test_a_batch_is_stored_whole_or_not_at_all(
    producer: ArchiveProducer, archiver_env: Env
) -> None:
    """Redis refusing the batch's step (full, say) leaves no chat claimed and no job stored:
    nothing looks pending that is not."""
    archiver_env.redis.config_set("maxmemory", 1)
    try:
        with pytest.raises(PublishFailed, match="maxmemory"):
            producer.enqueue_many([JOB, {**JOB, "chat_id": "79001234568@c.us"}])
    finally:
        archiver_env.redis.config_set("maxmemory", 0)
    assert archiver_env.redis.get(mark(archiver_env)) is None
    assert archiver_env.services.jobs.counts().jobs == 0
