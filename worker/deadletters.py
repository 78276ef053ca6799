"""The dead-letter store: every job that can never succeed as it is, kept until an operator acts.

Redis has no dead-letter exchange (a rejected message is simply deleted) and Celery's result
backend expires, so the store is ours. Three keys under the prefix:

    {prefix}:dlq:entries   hash  entry id -> entry as JSON
    {prefix}:dlq:index     zset  entry id, scored by the time it was dead-lettered
    {prefix}:dlq:counts    hash  "reason|provider:account" -> entries (for status and metrics,
                                 which must not read every entry)

They change together, in one MULTI. Entries hold the job, never a secret: excerpts are
redacted before they get here. An entry leaves the store only when an operator purges it or when
its job has been enqueued again (replay), never on its own.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from redis.client import Pipeline

from config import redact

_PAGE = 500


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    job: dict[str, Any]  # provider, account, chat_id, request_id, source: as the job gave them
    detail: str  # one line: what happened
    http_status: int | None = None
    excerpt: str = ""  # a short, redacted excerpt of the provider's answer
    attempts: int = 0  # provider calls made for this job, all retries included
    first_attempt_at: float | None = None
    last_attempt_at: float | None = None
    worker: str = ""
    task_id: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)

    @property
    def account(self) -> str:
        return f"{self.job.get('provider', '?')}:{self.job.get('account', '?')}"

    def to_json(self) -> str:
        # Redact once more on the way in: whatever a caller forgot, the store never holds.
        return redact(json.dumps(asdict(self), sort_keys=True, default=str))

    @classmethod
    def from_json(cls, text: str) -> DeadLetter:
        data = json.loads(text)
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in data.items() if key in known})


def _count_field(entry: DeadLetter) -> str:
    """The entry's field in the counts hash (``counts()`` splits it back)."""
    return f"{entry.reason}|{entry.account}"


@dataclass
class ReplayReport:
    enqueued: list[tuple[str, str]] = field(default_factory=list)  # (entry id, new task id)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (entry id, why)


class DeadLetterStore:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self._entries = f"{prefix}:dlq:entries"
        self._index = f"{prefix}:dlq:index"
        self._counts = f"{prefix}:dlq:counts"

    def queue_add(self, pipe: Pipeline, entry: DeadLetter) -> str:
        """Add the entry's writes to a pipeline (a MULTI one keeps the three keys together)."""
        pipe.hset(self._entries, entry.id, entry.to_json())
        pipe.zadd(self._index, {entry.id: entry.created_at})
        pipe.hincrby(self._counts, _count_field(entry), 1)
        return entry.id

    def add(self, entry: DeadLetter) -> str:
        pipe = self._redis.pipeline(transaction=True)
        self.queue_add(pipe, entry)
        pipe.execute()
        return entry.id

    def get(self, entry_id: str) -> DeadLetter | None:
        text = self._redis.hget(self._entries, entry_id)
        return DeadLetter.from_json(text) if text else None

    def __len__(self) -> int:
        return int(self._redis.zcard(self._index))

    def iter(
        self,
        reason: str | None = None,
        account: str | None = None,
        limit: int | None = None,
    ) -> Iterator[DeadLetter]:
        """Newest first, filtered by reason and ``provider:id`` account, read page by page so a
        large store never sits in memory whole."""
        produced = 0
        start = 0
        while limit is None or produced < limit:
            ids = self._redis.zrevrange(self._index, start, start + _PAGE - 1)
            if not ids:
                return
            start += len(ids)
            for text in self._redis.hmget(self._entries, ids):
                if text is None:  # removed between the two reads
                    continue
                entry = DeadLetter.from_json(text)
                if reason is not None and entry.reason != reason:
                    continue
                if account is not None and entry.account != account:
                    continue
                yield entry
                produced += 1
                if limit is not None and produced >= limit:
                    return

    def counts(self) -> Counter[tuple[str, str]]:
        """Entries per (reason, account)."""
        found: Counter[tuple[str, str]] = Counter()
        for key, value in self._redis.hgetall(self._counts).items():
            reason, account = key.split("|", 1)
            if int(value) > 0:
                found[(reason, account)] = int(value)
        return found

    def remove(self, entry_ids: Iterable[str]) -> int:
        ids = list(entry_ids)
        if not ids:
            return 0
        # WATCH the entries: counts must fall by exactly what is removed, even if two operators
        # purge and replay the same entries at once.
        with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self._entries)
                    texts = pipe.hmget(self._entries, ids)
                    present = [
                        (i, DeadLetter.from_json(t))
                        for i, t in zip(ids, texts, strict=True)
                        if t is not None
                    ]
                    if not present:
                        return 0
                    pipe.multi()
                    pipe.hdel(self._entries, *(i for i, _ in present))
                    pipe.zrem(self._index, *(i for i, _ in present))
                    for _, entry in present:
                        pipe.hincrby(self._counts, _count_field(entry), -1)
                    return int(pipe.execute()[0])
                except redis.WatchError:
                    continue

    def replay(
        self,
        entries: Iterable[DeadLetter],
        enqueue: Callable[[dict[str, Any]], str],
    ) -> ReplayReport:
        """Enqueue each entry's job again; remove the entry only once that worked.

        ``enqueue`` returns the new task id or raises ValueError (the job is still invalid: the
        entry stays, with the reason in the report). A crash between enqueue and removal leaves
        the entry behind and the job enqueued: archiving twice is harmless (already archived),
        losing a job is not.
        """
        report = ReplayReport()
        for entry in list(entries):
            try:
                task_id = enqueue(entry.job)
            except ValueError as error:
                report.refused.append((entry.id, str(error)))
                continue
            self.remove([entry.id])
            report.enqueued.append((entry.id, task_id))
        return report
