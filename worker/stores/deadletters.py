"""The dead-letter store: every job that can never succeed as it is, kept until an operator acts.

Redis has no dead-letter exchange (a rejected message is simply deleted) and Celery's result
backend expires, so the store is ours. Four keys under the prefix:

    {prefix}:dlq:entries   hash  entry id -> entry as JSON
    {prefix}:dlq:index     zset  entry id, scored by the time it was dead-lettered
    {prefix}:dlq:ids       zset  entry id, every score 0: sorted by id, so ZRANGEBYLEX finds the
                                 ids that start with a prefix in O(log N) (``find``)
    {prefix}:dlq:counts    hash  "reason|provider:account" -> entries (for status and metrics,
                                 which must not read every entry)

They change together, in one MULTI. An entry leaves the store only when an operator purges it or
when its job has been enqueued again (replay), never on its own. A store written before the ids
key existed gets it rebuilt from the index (one ZUNIONSTORE) the first time an id prefix is looked
up.

An entry is always valid JSON, whatever it was given. Every string field, and every string inside
``job`` at any depth, is made encodable (a lone surrogate becomes the text ``\\ud800``), redacted
(config.redact) and then capped; the entry is serialized only after that. Redacting the
serialized JSON instead would let a secret shape swallow the backslash of an escaped quote and
break the entry. Caps, in characters (a 1 MB chat id must not become a 1 MB entry):

    reason 64, detail 500 (made one line), excerpt 200 (config.EXCERPT_LENGTH), worker 255,
    task_id 255; in ``job``: each string 256, each key 64, 16 items per object or list, 4 levels,
    and 4,096 characters of strings in all. ``trace_id`` is 32 hex digits or absent.

An entry is therefore at most about 7 KB of JSON. Values cut short end with ``…``.

Reading is tolerant: an entry that does not parse (written by an older version, or by hand) is a
``CorruptEntry``. ``iter`` reports it (a callback, or one log line) and goes on; ``read`` returns
it; ``remove`` removes it like any other.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from typing import Any

import redis
from redis.client import Pipeline

from config import redact
from config.secrets import EXCERPT_LENGTH
from worker.stores.keys import Keys
from worker.stores.writes import Writes

logger = logging.getLogger("chat_archiver.deadletters")

_PAGE = 500

REASON_LIMIT = 64
DETAIL_LIMIT = 500
EXCERPT_LIMIT = EXCERPT_LENGTH
WORKER_LIMIT = 255
TASK_ID_LIMIT = 255
JOB_STRING_LIMIT = 256
JOB_KEY_LIMIT = 64
JOB_ITEMS_LIMIT = 16
JOB_DEPTH_LIMIT = 4
JOB_TEXT_BUDGET = 4096
# A secret is far shorter than this: redacting this much past a cap can never leave half of one
# at the cut, and a 1 MB value costs the redaction regexes no more than a short one.
_REDACT_MARGIN = 1024
CUT = "…"
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def encodable(text: str) -> str:
    """The text with every lone surrogate (which no UTF-8 writer accepts: Redis, a terminal, a
    log file) written out as its escape, e.g. ``\\ud800``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - len(CUT), 0)] + CUT


def clean(text: object, limit: int, one_line: bool = False) -> str:
    """Any value as a string fit to store or log: encodable, redacted, then capped."""
    value = text if isinstance(text, str) else str(text)
    value = encodable(value[: limit + _REDACT_MARGIN])
    if one_line:
        value = " ".join(value.split())
    return cap(redact(value), limit)


def _bounded(value: Any, budget: list[int], depth: int = 0) -> Any:
    """``value`` (a job, or part of one) with every string cleaned, within the job's caps.
    ``budget`` holds the characters of strings still allowed in the whole job."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # Python ints have no size limit; a 100,000-digit one is text, and is capped as text.
        return value if abs(value) < 2**63 else _bounded(str(value), budget, depth)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # NaN is not JSON
    if isinstance(value, str):
        text = clean(value, min(JOB_STRING_LIMIT, max(budget[0], 1)))
        budget[0] -= len(text)
        return text
    if depth >= JOB_DEPTH_LIMIT or budget[0] <= 0:
        return CUT
    if isinstance(value, Mapping):
        bounded: dict[str, Any] = {}
        for count, (key, item) in enumerate(value.items()):
            if count >= JOB_ITEMS_LIMIT or budget[0] <= 0:
                bounded[CUT] = f"{len(value) - count} more"
                break
            name = clean(key, JOB_KEY_LIMIT)
            budget[0] -= len(name)
            bounded[name] = _bounded(item, budget, depth + 1)
        return bounded
    if isinstance(value, list | tuple):
        items: list[Any] = []
        for count, item in enumerate(value):
            if count >= JOB_ITEMS_LIMIT or budget[0] <= 0:
                items.append(f"{CUT} {len(value) - count} more")
                break
            items.append(_bounded(item, budget, depth + 1))
        return items
    return _bounded(repr(value), budget, depth)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


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
    # The job's trace (worker/tracing), while tracing is on: 32 hex digits, else None.
    trace_id: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.time)

    @property
    def account(self) -> str:
        return f"{self.job.get('provider', '?')}:{self.job.get('account', '?')}"

    def sanitized(self) -> DeadLetter:
        """This entry as the store keeps it: every field encodable, redacted and capped (see the
        module docstring), and of the type its annotation says."""
        job = self.job if isinstance(self.job, Mapping) else {"raw": self.job}
        created = _float_or_none(self.created_at)
        return replace(
            self,
            reason=clean(self.reason, REASON_LIMIT, one_line=True),
            job=_bounded(job, [JOB_TEXT_BUDGET]),
            detail=clean(self.detail, DETAIL_LIMIT, one_line=True),
            http_status=_int_or_none(self.http_status),
            excerpt=clean(self.excerpt, EXCERPT_LIMIT, one_line=True),
            attempts=_int_or_none(self.attempts) or 0,
            first_attempt_at=_float_or_none(self.first_attempt_at),
            last_attempt_at=_float_or_none(self.last_attempt_at),
            worker=clean(self.worker, WORKER_LIMIT, one_line=True),
            task_id=None if self.task_id is None else clean(self.task_id, TASK_ID_LIMIT),
            trace_id=self.trace_id if _is_trace_id(self.trace_id) else None,
            id=clean(self.id, TASK_ID_LIMIT),
            created_at=time.time() if created is None else created,
        )

    def to_json(self) -> str:
        """The stored form: fields cleaned first, then serialized (never the other way round)."""
        return _dump(self.sanitized())

    @classmethod
    def from_json(cls, text: str) -> DeadLetter:
        """Parse a stored entry; ValueError when it is not one (see ``parse_entry``)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        known = {name for name in cls.__dataclass_fields__}
        try:
            entry = cls(**{key: value for key, value in data.items() if key in known})
        except TypeError as error:  # a required field missing
            raise ValueError(str(error).removeprefix(f"{cls.__name__}.__init__() ")) from None
        if not isinstance(entry.job, dict):
            raise ValueError(f"job is a JSON {type(entry.job).__name__}, not an object")
        return entry


def _is_trace_id(value: object) -> bool:
    return isinstance(value, str) and _TRACE_ID.fullmatch(value) is not None


def _dump(entry: DeadLetter) -> str:
    # ASCII only: whatever slipped past cleaning, the stored text is plain 7-bit JSON. An entry
    # made with tracing off has no trace_id at all, as before tracing existed.
    data = asdict(entry)
    if data["trace_id"] is None:
        del data["trace_id"]
    return json.dumps(data, sort_keys=True, ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True)
class CorruptEntry:
    """A stored entry that is not a dead letter: it cannot be shown field by field or replayed,
    only shown as stored and purged."""

    id: str
    error: str  # one line: why it does not parse
    stored: str  # the stored text, capped and cleaned, to show

    def summary(self) -> str:
        return f"{self.id}: corrupt entry ({self.error})"


def parse_entry(entry_id: str, text: str) -> DeadLetter | CorruptEntry:
    try:
        return DeadLetter.from_json(text)
    except (ValueError, RecursionError) as error:
        return CorruptEntry(
            id=clean(entry_id, TASK_ID_LIMIT),
            error=clean(f"{type(error).__name__}: {error}", 200, one_line=True),
            stored=clean(text, 2000),
        )


def _count_field(entry: DeadLetter) -> str:
    """The entry's field in the counts hash (``counts()`` splits it back)."""
    return f"{entry.reason}|{entry.account}"


# What a corrupt entry's counts field most likely was, read from its text: its sorted keys put
# these at the top level (reason) and in the job. Checked against the counts hash before use.
_SALVAGE = {
    name: re.compile(rf'"{name}":\s*"([^"\\]{{1,{JOB_STRING_LIMIT}}})"')
    for name in ("reason", "provider", "account")
}


def _salvaged_count_field(text: str) -> str | None:
    found = {name: pattern.search(text) for name, pattern in _SALVAGE.items()}
    if found["reason"] is None:
        return None
    values = {name: m.group(1) if m else "?" for name, m in found.items()}
    return f"{values['reason']}|{values['provider']}:{values['account']}"


@dataclass
class ReplayReport:
    enqueued: list[tuple[str, str]] = field(default_factory=list)  # (entry id, new task id)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (entry id, why)


OnCorrupt = Callable[[CorruptEntry], None]


def _log_corrupt(entry: CorruptEntry) -> None:
    logger.warning("dead letter %s; skipped", entry.summary())


class DeadLetterStore:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        keys = Keys(prefix)
        self._entries = keys.dlq_entries
        self._index = keys.dlq_index
        self._ids = keys.dlq_ids
        self._counts = keys.dlq_counts

    def queue_add(self, pipe: Pipeline | Writes, entry: DeadLetter) -> str:
        """Add the entry's writes to a pipeline (a MULTI one keeps the keys together)."""
        stored = entry.sanitized()
        pipe.hset(self._entries, stored.id, _dump(stored))
        pipe.zadd(self._index, {stored.id: stored.created_at})
        pipe.zadd(self._ids, {stored.id: 0})
        pipe.hincrby(self._counts, _count_field(stored), 1)
        return stored.id

    def add(self, entry: DeadLetter) -> str:
        pipe = self._redis.pipeline(transaction=True)
        entry_id = self.queue_add(pipe, entry)
        pipe.execute()
        return entry_id

    def read(self, entry_id: str) -> DeadLetter | CorruptEntry | None:
        text = self._redis.hget(self._entries, entry_id)
        return parse_entry(entry_id, str(text)) if text is not None else None

    def __len__(self) -> int:
        return int(self._redis.zcard(self._index))

    def iter(
        self,
        reason: str | None = None,
        account: str | None = None,
        limit: int | None = None,
        on_corrupt: OnCorrupt | None = None,
    ) -> Iterator[DeadLetter]:
        """Newest first, filtered by reason and ``provider:id`` account, read page by page so a
        large store never sits in memory whole. A corrupt entry goes to ``on_corrupt`` (default:
        one log line) and is skipped: its reason and account cannot be known."""
        matching = (
            entry
            for entry in self._newest_first(on_corrupt or _log_corrupt)
            if (reason is None or entry.reason == reason)
            and (account is None or entry.account == account)
        )
        return islice(matching, limit)  # reads no further than the last entry it gives

    def _newest_first(self, report: OnCorrupt) -> Iterator[DeadLetter]:
        start = 0
        while ids := [str(i) for i in self._redis.zrevrange(self._index, start, start + _PAGE - 1)]:
            start += len(ids)
            for entry_id, text in zip(ids, self._redis.hmget(self._entries, ids), strict=True):
                if text is None:  # removed between the two reads
                    continue
                entry = parse_entry(entry_id, str(text))
                if isinstance(entry, CorruptEntry):
                    report(entry)
                else:
                    yield entry

    def counts(self) -> Counter[tuple[str, str]]:
        """Entries per (reason, account)."""
        found: Counter[tuple[str, str]] = Counter()
        for key, value in self._redis.hgetall(self._counts).items():
            reason, _, account = str(key).partition("|")
            try:
                count = int(value)
            except ValueError:
                continue
            if count > 0:
                found[(reason, account)] = count
        return found

    # --- ids by prefix ---------------------------------------------------------------------

    def _ensure_id_set(self) -> None:
        """Rebuild the ids zset from the index when they differ (a store written before it
        existed, or by an older worker): one server-side ZUNIONSTORE, scores weighted to 0."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zcard(self._index)
        pipe.zcard(self._ids)
        indexed, listed = pipe.execute()
        if indexed != listed:
            self._redis.zunionstore(self._ids, {self._index: 0})

    def find(self, prefix: str, limit: int = 10) -> tuple[int, list[str]]:
        """(how many ids start with ``prefix``, the first ``limit`` of them in id order).
        O(log N + limit) on the server, one round trip: a lexicographic range of the ids zset,
        never a scan."""
        low, high = f"[{prefix}", f"[{prefix}\xff"  # \xff sorts after every id character
        for _ in range(2):
            pipe = self._redis.pipeline(transaction=False)
            pipe.zcard(self._index)
            pipe.zcard(self._ids)
            pipe.zlexcount(self._ids, low, high)
            pipe.zrangebylex(self._ids, low, high, start=0, num=limit)
            indexed, listed, count, ids = pipe.execute()
            if indexed == listed:
                break
            self._ensure_id_set()  # then ask again
        return int(count), list(ids)

    def unique_prefix_length(self, entry_ids: Iterable[str], minimum: int = 8) -> int:
        """The shortest prefix length (at least ``minimum``) at which each of these ids differs
        from every other id in the store: its two neighbours in id order, read in one round
        trip per 500 ids."""
        ids = list(entry_ids)
        if not ids:
            return minimum
        self._ensure_id_set()
        needed = minimum
        for start in range(0, len(ids), _PAGE):
            page = ids[start : start + _PAGE]
            pipe = self._redis.pipeline(transaction=False)
            for entry_id in page:
                pipe.zrangebylex(self._ids, f"({entry_id}", "+", start=0, num=1)
                pipe.zrevrangebylex(self._ids, f"({entry_id}", "-", start=0, num=1)
            replies = pipe.execute()
            for position, entry_id in enumerate(page):
                for neighbour in (*replies[2 * position], *replies[2 * position + 1]):
                    # Characters, not path components: ids are strings.
                    common = len(os.path.commonprefix([entry_id, neighbour]))  # noqa: RUF071
                    needed = max(needed, min(common + 1, len(entry_id)))
        return needed

    # --- removal and replay ----------------------------------------------------------------

    def remove(self, entry_ids: Iterable[str]) -> int:
        ids = list(entry_ids)
        if not ids:
            return 0
        # WATCH the entries: counts must fall by exactly what is removed, even if two operators
        # purge and replay the same entries at once.
        with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self._entries, self._counts)
                    texts = pipe.hmget(self._entries, ids)
                    present = [
                        (i, str(t)) for i, t in zip(ids, texts, strict=True) if t is not None
                    ]
                    if not present:
                        return 0
                    fields = [self._counts_field_of(pipe, i, t) for i, t in present]
                    pipe.multi()
                    pipe.hdel(self._entries, *(i for i, _ in present))
                    pipe.zrem(self._index, *(i for i, _ in present))
                    pipe.zrem(self._ids, *(i for i, _ in present))
                    for count_field in fields:
                        if count_field is not None:
                            pipe.hincrby(self._counts, count_field, -1)
                    return int(pipe.execute()[0])
                except redis.WatchError:
                    continue

    def _counts_field_of(self, pipe: Pipeline, entry_id: str, text: str) -> str | None:
        """The counts field an entry added to, or None when that cannot be known. A corrupt
        entry's is read from its text and used only if the counts hash holds it."""
        entry = parse_entry(entry_id, text)
        if isinstance(entry, DeadLetter):
            return _count_field(entry)
        salvaged = _salvaged_count_field(text)
        if salvaged is not None and int(pipe.hget(self._counts, salvaged) or 0) > 0:
            return salvaged
        logger.warning(
            "dead letter %s: removed; its count in %s could not be found", entry.id, self._counts
        )
        return None

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
