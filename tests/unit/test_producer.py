"""The producer: refuse invalid jobs at enqueue, store valid ones in the job store as the task
expects them, many in few Redis round trips, and tell Flower about each (task-sent)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from itertools import islice

import pytest

from tests.conftest import GREEN_ID, Env, RoundTrips
from worker.contract.jobs import InvalidJob
from worker.contract.tasks import ARCHIVE_TASK, UNARCHIVE_TASK
from worker.dispatch.registry import dispatch_entry
from worker.producer import (
    ArchiveProducer,
    batch_sizes,
    enqueue_archive,
    enqueue_many,
    enqueue_unarchive,
)
from worker.stores.jobs import StoredJob

ACCOUNT = f"green-api:{GREEN_ID}"


def stored(env: Env, account: str = ACCOUNT) -> list[StoredJob]:
    """The jobs waiting in an account's wait list, oldest first."""
    store = env.services.jobs
    jobs = [store.record(task_id) for task_id in store.wait_head(account, 10_000)]
    assert all(job is not None for job in jobs)
    return [job for job in jobs if job is not None]


def test_one_job_is_stored_with_its_kwargs(producer: ArchiveProducer, archiver_env: Env) -> None:
    task_id = enqueue_archive(
        "green-api", GREEN_ID, "79001234567@c.us", request_id="r-9", producer=producer
    )
    [job] = stored(archiver_env)
    assert (job.task_id, job.task, job.account, job.lost) == (task_id, ARCHIVE_TASK, ACCOUNT, 0)
    assert job.body.kwargs == {
        "provider": "green-api",
        "account": GREEN_ID,
        "chat_id": "79001234567@c.us",
        "request_id": "r-9",
        "source": "api",
    }
    assert job.mark == archiver_env.services.keys.pending(ACCOUNT, "79001234567@c.us")
    assert archiver_env.redis.get(job.mark) == task_id  # claimed in the same step


def test_an_undo_is_a_job_of_its_own_with_its_own_mark(
    producer: ArchiveProducer, archiver_env: Env
) -> None:
    archived = enqueue_archive("green-api", GREEN_ID, "79001234567@c.us", producer=producer)
    restored = enqueue_unarchive("green-api", GREEN_ID, "79001234567@c.us", producer=producer)
    assert restored != archived
    jobs = stored(archiver_env)
    assert [job.task for job in jobs] == [ARCHIVE_TASK, UNARCHIVE_TASK]
    assert jobs[0].mark != jobs[1].mark


def test_invalid_job_is_refused_and_nothing_is_stored(
    producer: ArchiveProducer, archiver_env: Env
) -> None:
    with pytest.raises(InvalidJob, match="chat_id: 'nope' is not a green-api chat id"):
        enqueue_archive("green-api", GREEN_ID, "nope", producer=producer)
    assert archiver_env.services.jobs.counts().jobs == 0


def test_bulk_reports_refusals_by_position(producer: ArchiveProducer, archiver_env: Env) -> None:
    rows = [
        {"provider": "green-api", "account": GREEN_ID, "chat_id": "79001234567@c.us"},
        {"provider": "green-api", "account": GREEN_ID, "chat_id": "bad"},
        InvalidJob("not a JSON object"),
        {"provider": "green-api", "account": GREEN_ID, "chat_id": "79001234568@c.us"},
    ]
    result = enqueue_many(rows, producer=producer)
    assert [position for position, _ in result.enqueued] == [1, 4]
    assert [(position, why.split(":")[0]) for position, why in result.refused] == [
        (2, "chat_id"),
        (3, "not a JSON object"),
    ]
    assert [job.body.kwargs["chat_id"] for job in stored(archiver_env)] == [
        "79001234567@c.us",
        "79001234568@c.us",
    ]


def test_bulk_uses_few_round_trips(
    producer: ArchiveProducer, archiver_env: Env, round_trips: Callable[[], RoundTrips]
) -> None:
    sends = round_trips()
    rows = [
        {"provider": "green-api", "account": GREEN_ID, "chat_id": f"7900{n:07d}@c.us"}
        for n in range(2000)
    ]
    result = enqueue_many(rows, producer=producer, batch_size=500)
    count = sends.count
    assert len(result.enqueued) == 2000
    assert len(stored(archiver_env)) == 2000
    # One script per batch (claims and jobs together) and one message of sent events per batch,
    # instead of 2000+ separate round trips.
    assert count <= 30, count


def test_every_job_is_stored_whatever_its_account(
    producer: ArchiveProducer, archiver_env: Env
) -> None:
    """The producer needs no accounts file: an account no worker knows waits among the unknown
    ones until one does."""
    store = archiver_env.services.jobs
    store.publish_accounts(
        {
            ACCOUNT: dispatch_entry(
                archiver_env.accounts.get("green-api", GREEN_ID), archiver_env.services.limiter
            )
        }
    )
    enqueue_archive("green-api", GREEN_ID, "79001234567@c.us", producer=producer)
    enqueue_archive("green-api", "7100000000", "79001234567@c.us", producer=producer)
    assert store.counts().jobs == 2
    assert store.redis.zrange(store.keys.due, 0, -1) == [ACCOUNT]  # due now
    assert list(store.unknown_accounts()) == ["green-api:7100000000"]


def test_flower_hears_of_each_job_as_it_is_enqueued(
    producer: ArchiveProducer, archiver_env: Env
) -> None:
    """Celery's task-sent event, batched in one message per batch, as Flower's receiver reads
    it."""
    pubsub = archiver_env.redis.pubsub()
    pubsub.psubscribe("/0.celeryev/task.*")
    pubsub.get_message(timeout=1)  # the subscription's confirmation
    result = enqueue_many(
        [
            {"provider": "green-api", "account": GREEN_ID, "chat_id": f"7900000000{n}@c.us"}
            for n in range(3)
        ],
        producer=producer,
    )
    message = pubsub.get_message(timeout=2)
    assert message is not None
    envelope = json.loads(message["data"])
    events = json.loads(base64.b64decode(envelope["body"]))
    assert [event["type"] for event in events] == ["task-sent"] * 3
    assert [event["uuid"] for event in events] == [task_id for _, task_id in result.enqueued]
    assert events[0]["name"] == ARCHIVE_TASK and "79000000000@c.us" in events[0]["kwargs"]


def test_batches_start_small_and_grow_so_workers_start_early(
    producer: ArchiveProducer, archiver_env: Env
) -> None:
    """A large enqueue stores 25 jobs first, then twice as many each time: the first jobs can
    be handed out while the rest are still being stored (the progress marks each batch)."""
    assert list(islice(batch_sizes(500, 25), 7)) == [25, 50, 100, 200, 400, 500, 500]
    assert list(islice(batch_sizes(10, 25), 2)) == [10, 10]
    progress: list[int] = []
    rows = [
        {"provider": "green-api", "account": GREEN_ID, "chat_id": f"7900{n:07d}@c.us"}
        for n in range(200)
    ]
    result = enqueue_many(rows, producer=producer, on_progress=progress.append)
    assert len(result.enqueued) == 200
    assert progress == [25, 75, 175, 200]
