"""``chat-archiver enqueue`` while Redis refuses writes: send the rows not enqueued again, under
their ids, for a short while, then say in one line what happened and what a rerun does.

Sending again is safe (worker/producer.py): a row known not published has no job, and one
whose step is uncertain goes again under the same task id, which the job store holds once (a
job stored already, or ended with its result kept, is not stored again).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
from tenacity import Retrying, retry_if_exception, stop_before_delay, wait_exponential_jitter

from worker.contract.jobs import InvalidJob
from worker.contract.tasks import ARCHIVE_TASK
from worker.producer import (
    CONNECTION_LOST,
    NOT_REPLICATED,
    ArchiveProducer,
    BulkResult,
    PublishFailed,
    Unsent,
)
from worker.write_refusals import (
    MAXMEMORY,
    REMEDIES,
    WriteRefusal,
    full,
    memory,
    read_refusal,
)

# What to do about each reason a call failed, the refusals' included.
_REMEDIES = {
    **REMEDIES,
    CONNECTION_LOST: "check that Redis can be reached",
    NOT_REPLICATED: "check the master's replicas (ARCHIVER_ENQUEUE_REPLICAS=0 if it has none)",
}

RETRY_FOR = 10.0  # seconds, by default, of sending again while Redis refuses writes


def _worth_retrying(error: BaseException) -> bool:
    """Redis refusing writes, a lost connection or a replica behind may pass; another error
    reply will not."""
    return isinstance(error, PublishFailed) and (
        error.refused_writes or error.reason in (CONNECTION_LOST, NOT_REPLICATED)
    )


def _placed(into: BulkResult, result: BulkResult, positions: Sequence[int]) -> None:
    """Add ``result`` (of rows numbered from 1) to ``into`` (numbered by ``positions``). The
    rows still unsent replace those ``into`` had."""

    def moved(unsent: list[Unsent]) -> list[Unsent]:
        return [Unsent(positions[u.position - 1], u.row, u.why) for u in unsent]

    into.enqueued += [(positions[p - 1], task_id) for p, task_id in result.enqueued]
    into.duplicates += [(positions[p - 1], task_id) for p, task_id in result.duplicates]
    into.refused += [(positions[p - 1], why) for p, why in result.refused]
    into.not_published = moved(result.not_published)
    into.uncertain = moved(result.uncertain)


def enqueue_resending(
    producer: ArchiveProducer,
    rows: Sequence[Mapping[str, Any] | InvalidJob],
    retry_for: float = RETRY_FOR,
    sleep: Callable[[float], None] = time.sleep,
    task: str = ARCHIVE_TASK,
) -> BulkResult:
    """``enqueue_many(rows)``; while Redis refuses writes, the rows not enqueued are sent again
    (the uncertain ones under their task ids) with backoff, for at most ``retry_for`` seconds.
    Raises the last PublishFailed, its result placing every row of ``rows``, when that runs
    out."""
    placed = BulkResult()
    todo: list[tuple[int, Mapping[str, Any] | InvalidJob]] = list(enumerate(rows, start=1))
    for attempt in Retrying(
        stop=stop_before_delay(retry_for),
        wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
        retry=retry_if_exception(_worth_retrying),
        sleep=sleep,
        reraise=True,
    ):
        with attempt:
            positions = [position for position, _ in todo]
            try:
                result = producer.enqueue_many([row for _, row in todo], task=task)
            except PublishFailed as failed:
                _placed(placed, failed.result, positions)
                unsent = sorted(
                    [*placed.not_published, *placed.uncertain], key=lambda u: u.position
                )
                todo = [(u.position, u.row) for u in unsent]
                raise PublishFailed(failed.reason, failed.detail, placed) from failed
            _placed(placed, result, positions)
    return placed


def refusal_now(clients: Sequence[redis.Redis], reason: str) -> WriteRefusal | None:
    """The refusal ``reason`` as one of ``clients``' Redis reports it now, with its figures;
    for maxmemory, the figures of a Redis with a limit even if it is just under it now (the
    memory a refused step's arguments held is freed once it is answered). None when there is nothing
    to show (Redis cannot be read either)."""
    for client in clients:
        try:
            refusal = read_refusal(client)
        except redis.RedisError:
            continue
        if refusal is not None and refusal.reason == reason:
            return refusal
    for client in clients if reason == MAXMEMORY else ():
        try:
            figures = memory(client)
        except redis.RedisError:
            continue
        if figures["maxmemory"]:
            return full(figures["used_memory"], figures["maxmemory"], figures["maxmemory_policy"])
    return None


def failure_line(
    failed: PublishFailed,
    counts: tuple[int, int, int],
    refusal: WriteRefusal | None,
    rerun: str,
) -> str:
    """``Redis refused writes (<why>): N enqueued, M not published, K uncertain; <what to
    do>, then <rerun>``: one line for the whole command."""
    enqueued, not_published, uncertain = counts
    what = failed.headline(refusal.line() if refusal else None)
    remedy = _REMEDIES.get(failed.reason, "put right what Redis answered")
    return (
        f"{what}: {enqueued} enqueued, {not_published} not published, {uncertain} uncertain; "
        f"{remedy}, {rerun}"
    )
