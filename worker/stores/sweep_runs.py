"""Sweep runs: every sweep gets an id and a record, kept ``ARCHIVER_SWEEP_RUN_RETENTION`` (30 days)
so a bad sweep can be found and undone (``chat-archiver unarchive --sweep RUN_ID`` reads
``SweepRuns.iter_chats``).

    {p}:sweep-runs                  zset    run id -> when it started: the index ``runs`` reads
    {p}:sweep-run:{id}              string  JSON: the run's record (account, times, status, why,
                                            counts)
    {p}:sweep-run:{id}:selected     set     the chats a real run selected (a held run's chats
                                            wait here for ``--confirm``)
    {p}:sweep-run:{id}:enqueued     set     the chats it enqueued: their jobs carry
                                            ``sweep_run`` = id
    {p}:sweep-run:{id}:archived     set     the chats its jobs archived (or found archived),
                                            added by the job's final ending (stores/endings.py)
    {p}:sweeps-held                 hash    account -> its held run, waiting for an operator (a
                                            newer held or completed run replaces it)
    {p}:sweep-problems              hash    account -> JSON {run, status, reason, at}: its last
                                            run refused or failed; a completed or held run
                                            clears it
    {p}:metrics:sweeps              hash    "provider|account|result" -> runs that ended so

Results (the record's ``status``): completed, dry_run, skipped, held, failed. A held run that an
operator confirms ends a second time, as completed, and is counted so.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import redis

from worker.stores.keys import Keys
from worker.stores.writes import Writes

RESULTS = ("completed", "dry_run", "skipped", "held", "failed")
CHAT_SETS = ("selected", "enqueued", "archived")
_BATCH = 1000


def new_run_id(now: float | None = None) -> str:
    """Sortable by time, short enough to type: ``20261207T145423Z-3f9a2c``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(3)}"


def queue_archived(pipe: Writes, keys: Keys, run_id: str, chat_id: str, retention: int) -> None:
    """A sweep's job archived its chat: add it to the run's archived set (in the job's ending)."""
    key = keys.sweep_run_chats(run_id, "archived")
    pipe.sadd(key, chat_id)
    pipe.expire(key, retention)


class SweepRuns:
    def __init__(self, client: redis.Redis, keys: Keys, retention: int) -> None:
        self._redis = client
        self._keys = keys
        self.retention = retention

    # -- writing ---------------------------------------------------------------------------------

    def add_chats(self, run_id: str, which: str, chats: Iterable[str]) -> None:
        """Add chats to one of the run's sets, a batch per round trip."""
        key = self._keys.sweep_run_chats(run_id, which)
        rest = iter(chats)
        while batch := list(islice(rest, _BATCH)):
            pipe = self._redis.pipeline(transaction=False)
            pipe.sadd(key, *batch)
            pipe.expire(key, self.retention)
            pipe.execute()

    def end(
        self,
        record: Mapping[str, Any],
        *,
        problem: bool = False,
        counted: bool = True,
        release_held: bool = False,
    ) -> None:
        """Write a run's record as it ends, with its metric and the account's held/problem marks,
        in one transaction. ``record`` has at least ``run``, ``provider``, ``account``,
        ``status``, ``started_at``. ``problem``: the run was refused or failed (status shows it).
        ``release_held``: the account's held run, when it is this one, is no longer held."""
        run_id, status = str(record["run"]), str(record["status"])
        if status not in RESULTS:
            raise ValueError(f"status {status!r} is not one of {', '.join(RESULTS)}")
        account = f"{record['provider']}:{record['account']}"
        keys = self._keys
        now = time.time()
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.sweep_run(run_id), json.dumps(dict(record)), ex=self.retention)
            pipe.zadd(keys.sweep_runs, {run_id: float(record["started_at"])})
            pipe.zremrangebyscore(keys.sweep_runs, "-inf", f"({now - self.retention}")
            if counted:
                field = f"{record['provider']}|{record['account']}|{status}"
                pipe.hincrby(keys.metrics_sweeps, field, 1)
            if problem:
                mark = {"run": run_id, "status": status, "reason": record.get("reason"), "at": now}
                pipe.hset(keys.sweep_problems, account, json.dumps(mark))
            elif status in ("completed", "held"):
                pipe.hdel(keys.sweep_problems, account)
            if status == "held" and not release_held:
                pipe.hset(keys.sweeps_held, account, run_id)
            elif status == "completed" and not release_held:
                # A run that archived within its bounds re-judged the held run's chats.
                pipe.hdel(keys.sweeps_held, account)
            pipe.execute()
        if release_held:
            self.release_held(account, run_id)

    def release_held(self, account: str, run_id: str) -> None:
        """The account's held run is no longer held, if it still is this one."""
        with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self._keys.sweeps_held)
                    if pipe.hget(self._keys.sweeps_held, account) != run_id:
                        pipe.unwatch()
                        return
                    pipe.multi()
                    pipe.hdel(self._keys.sweeps_held, account)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    # -- reading ---------------------------------------------------------------------------------

    def record(self, run_id: str) -> dict[str, Any] | None:
        raw = self._redis.get(self._keys.sweep_run(run_id))
        return None if raw is None else json.loads(raw)

    def runs(self, account: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent runs, newest first, of one account ("provider:id") or of all."""
        keys = self._keys
        found: list[dict[str, Any]] = []
        start = 0
        page = max(limit, 100)
        while len(found) < limit:
            ids = self._redis.zrevrange(keys.sweep_runs, start, start + page - 1)
            if not ids:
                break
            start += page
            raws = self._redis.mget([keys.sweep_run(str(run_id)) for run_id in ids])
            for raw in raws:
                if raw is None:
                    continue  # expired: the index is trimmed as runs end
                record = json.loads(raw)
                if account is None or f"{record['provider']}:{record['account']}" == account:
                    found.append(record)
                    if len(found) >= limit:
                        break
        return found

    def iter_chats(self, run_id: str, which: str = "archived") -> Iterator[str]:
        """The chats the run archived (or ``which`` of the run's sets: selected, enqueued), a
        batch at a time, for runs too large to hold at once."""
        if which not in CHAT_SETS:
            raise ValueError(f"which: one of {', '.join(CHAT_SETS)}")
        for chat in self._redis.sscan_iter(self._keys.sweep_run_chats(run_id, which), count=_BATCH):
            yield str(chat)

    def count(self, run_id: str, which: str) -> int:
        return int(self._redis.scard(self._keys.sweep_run_chats(run_id, which)))

    def contains(self, run_id: str, which: str, chats: list[str]) -> list[bool]:
        """Whether each chat is in one of the run's sets."""
        key = self._keys.sweep_run_chats(run_id, which)
        pipe = self._redis.pipeline(transaction=False)
        for chat in chats:
            pipe.sismember(key, chat)
        return [bool(found) for found in pipe.execute()]

    def held(self) -> dict[str, str]:
        """account -> its held run."""
        return {
            str(account): str(run_id)
            for account, run_id in self._redis.hgetall(self._keys.sweeps_held).items()
        }

    def problems(self) -> dict[str, dict[str, Any]]:
        """account -> its last run's refusal or failure, while no later run completed."""
        raw = self._redis.hgetall(self._keys.sweep_problems)
        return {str(account): json.loads(value) for account, value in raw.items()}
