"""The producer: refuse invalid jobs at enqueue, publish valid ones as the task expects them,
and publish many in few Redis round trips."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from itertools import islice

import pytest

from tests.conftest import GREEN_ID, Env, RoundTrips
from worker.contract.jobs import InvalidJob
from worker.producer import ArchiveProducer, batch_sizes, enqueue_archive, enqueue_many

INTAKE = "archive"


def queued(env: Env, queue: str = INTAKE) -> list[dict]:
    messages = []
    for raw in env.redis.lrange(queue, 0, -1):
        data = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(data["body"]))
        messages.append({"headers": data["headers"], "kwargs": kwargs, "args": args})
    return messages[::-1]  # LPUSH: the newest first in the list


def test_one_job_is_published_with_its_kwargs(producer: ArchiveProducer, archiver_env: Env) -> None:
    task_id = enqueue_archive(
        "green-api", GREEN_ID, "79001234567@c.us", request_id="r-9", producer=producer
    )
    [message] = queued(archiver_env)
    assert message["headers"]["task"] == "archive.chat"
    assert message["headers"]["id"] == task_id
    assert message["args"] == []
    assert message["kwargs"] == {
        "provider": "green-api",
        "account": GREEN_ID,
        "chat_id": "79001234567@c.us",
        "request_id": "r-9",
        "source": "api",
    }


def test_invalid_job_is_refused_and_nothing_is_published(
    producer: ArchiveProducer, archiver_env: Env
) -> None:
    with pytest.raises(InvalidJob, match="chat_id: 'nope' is not a green-api chat id"):
        enqueue_archive("green-api", GREEN_ID, "nope", producer=producer)
    assert queued(archiver_env) == []


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
    assert [m["kwargs"]["chat_id"] for m in queued(archiver_env)] == [
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
    assert len(result.enqueued) == 2000
    assert archiver_env.redis.llen(INTAKE) == 2000
    # One pipeline per 500 messages (plus their sent events) and a few setup commands,
    # instead of 2000+ separate round trips.
    assert sends.count <= 40, sends.count


def test_every_job_goes_to_the_intake_whatever_its_account(
    producer: ArchiveProducer, archiver_env: Env
) -> None:
    """The producer needs no accounts file: workers' routers decide what waits for what."""
    enqueue_archive("green-api", GREEN_ID, "79001234567@c.us", producer=producer)
    enqueue_archive("green-api", "7100000000", "79001234567@c.us", producer=producer)
    assert [m["kwargs"]["account"] for m in queued(archiver_env)] == [GREEN_ID, "7100000000"]


def test_batches_start_small_and_grow_so_workers_start_early(
    producer: ArchiveProducer, archiver_env: Env
) -> None:
    """A large enqueue publishes 25 jobs first, then twice as many each time: the first jobs
    reach the intake while the rest are still being claimed (the progress marks each batch)."""
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
