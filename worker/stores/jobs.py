"""The job store: every job from the moment it is accepted to the moment it ends, in Redis.

A job is accepted from the intake queue by a router (worker/dispatch/router.py) and waits in its
account's wait list. The dispatcher hands out due jobs, each behind a permit of its account's
limiter, round-robin between accounts in the order of their next permitted time (a sorted set:
O(log N) whatever the number of accounts), into the one queue workers consume, and only as many
as there are free worker slots. A job a worker cannot run now (a retry's countdown, a 429's wait,
a paused account) goes back here, never into worker memory.

Leases make it reliable. A dispatched job holds a lease in ``active`` until a run takes it over;
a running job's lease is renewed by its node's heartbeat (worker/dispatch/service.py). When a
lease runs out, the run is presumed dead (a killed node, a message lost between the queue and a
worker) and the janitor puts the job back at the front of its wait list: a killed node's jobs run
again within a lease, however long the task time limit. A second delivery of a job whose first
run is alive (a message kombu restored after a Redis restart) finds the lease held and ends
quietly; a delivery of a job that has ended finds no record. So each run is unique while it
lives, and every job ends in exactly one outcome. Keys: worker/stores/keys.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis

from worker.contract.tasks import UNPACED
from worker.stores.clock import MICROS, Clock, RedisClock
from worker.stores.keys import Keys
from worker.stores.scripts import load
from worker.stores.writes import Writes

# Delayed jobs promoted to their wait lists per dispatch call: bounds the work of one call.
PROMOTE_PER_CALL = 500
# How far ahead of its permit a job may be dispatched: time for the message to reach a worker
# process, so the call goes out on its slot. A worker slot sleeps at most this long for it.
DISPATCH_LEAD = 0.02
# The window of the limiter's "recent rate" figures (worker/stores/limiter.py).
RECENT_WINDOW = 10.0


class Lease(StrEnum):
    OK = "ok"
    STALE = "stale"  # the job has ended (or was never stored): a leftover message
    BUSY = "busy"  # another run holds a live lease


class Ending(StrEnum):
    FINAL = "final"
    WAIT = "wait"
    PARK = "park"


@dataclass(frozen=True)
class StoredJob:
    task_id: str
    account: str
    message: str  # the canonical message (worker/contract/envelope.py)


@dataclass(frozen=True)
class NewJob:
    task_id: str
    account: str
    message: str
    not_before: float | None = None  # unix time: wait in the delayed set until then


@dataclass
class AcceptReport:
    accepted: int = 0
    duplicates: list[str] = field(default_factory=list)  # ids already stored: not stored twice


@dataclass(frozen=True)
class Dispatched:
    count: int
    next_in: float | None  # seconds until something is next due; None: nothing waits
    messages: list[str]  # to push onto the ready queue (empty when the script pushed them)


@dataclass(frozen=True)
class StoreCounts:
    jobs: int
    delayed: int
    active: int
    due_accounts: int
    unknown_accounts: int


def _us(seconds: float) -> int:
    return int(seconds * MICROS)


class JobStore:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        lease: float,
        clock: Clock | None = None,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.lease = lease
        self.clock: Clock = clock or RedisClock()

    # -- intake -------------------------------------------------------------------------------

    def accept(self, jobs: Sequence[NewJob]) -> AcceptReport:
        report = AcceptReport()
        if not jobs:
            return report
        items: list[Any] = []
        for job in jobs:
            not_before = _us(job.not_before) if job.not_before else 0
            items += [job.task_id, job.account, job.message, not_before]
        k = self.keys
        accepted, duplicates = load("accept").run(
            self.redis,
            keys={
                "jobs": k.jobs,
                "due": k.due,
                "delayed": k.delayed,
                "unknown": k.unknown,
                "accounts": k.accounts,
            },
            args={"now": self.clock.arg(), "wait_prefix": k.wait_prefix},
            rest=items,
        )
        report.accepted = int(accepted)
        report.duplicates = [str(task_id) for task_id in duplicates]
        return report

    # -- dispatch -----------------------------------------------------------------------------

    def dispatch(self, budget: int, *, ready: str = "", lead: float = DISPATCH_LEAD) -> Dispatched:
        """Hand out up to ``budget`` due jobs. With ``ready`` (the broker is this Redis) they
        are pushed there and the budget is reduced by what already waits there."""
        k = self.keys
        reply = load("dispatch").run(
            self.redis,
            keys={
                "due": k.due,
                "delayed": k.delayed,
                "jobs": k.jobs,
                "active": k.active,
                "runs": k.runs,
                "permits": k.permits,
                "unknown": k.unknown,
                "accounts": k.accounts,
                "parked_since": k.parked_since,
                "ready": ready,
            },
            args={
                "now": self.clock.arg(),
                "budget": max(0, budget),
                "lead_us": _us(lead),
                "lease_us": _us(self.lease),
                "window_us": _us(RECENT_WINDOW),
                "wait_prefix": k.wait_prefix,
                "parked_prefix": k.parked(""),
                "promote_max": PROMOTE_PER_CALL,
            },
        )
        count, next_in, *messages = reply
        next_in = int(next_in)
        return Dispatched(
            int(count), next_in / MICROS if next_in >= 0 else None, [str(m) for m in messages]
        )

    # -- runs -----------------------------------------------------------------------------------

    def take_lease(self, task_id: str, run: str, deliveries_ttl: int) -> tuple[Lease, int]:
        """For runs of sweeps and probes (archive runs do it in their admission)."""
        k = self.keys
        status, deliveries = load("take_lease").run(
            self.redis,
            keys={
                "jobs": k.jobs,
                "active": k.active,
                "runs": k.runs,
                "deliveries": k.deliveries(task_id),
            },
            args={
                "now": self.clock.arg(),
                "id": task_id,
                "run": run,
                "lease_us": _us(self.lease),
                "deliveries_ttl": deliveries_ttl,
            },
        )
        return Lease(status), int(deliveries)

    def close_keys(self, task_id: str, account: str, chat_key: str = "") -> dict[str, str]:
        k = self.keys
        return {
            "jobs": k.jobs,
            "active": k.active,
            "runs": k.runs,
            "permits": k.permits,
            "deliveries": k.deliveries(task_id),
            "delayed": k.delayed,
            "due": k.due,
            "unknown": k.unknown,
            "accounts": k.accounts,
            "parked": k.parked(account) if account and account != UNPACED else "",
            "parked_since": k.parked_since,
            "chat": chat_key,
        }

    def close(
        self,
        task_id: str,
        run: str,
        ending: Ending,
        *,
        account: str = "",
        message: str = "",
        at: float | None = None,
        front: bool = False,
        chat_key: str = "",
        writes: Writes | None = None,
    ) -> bool:
        """End a run (see close.lua). False when it changed nothing: the run no longer held the
        job (a retried call whose first try went through, or a lease taken over)."""
        reply = load("close").run(
            self.redis,
            keys=self.close_keys(task_id, account, chat_key),
            args={
                "now": self.clock.arg(),
                "id": task_id,
                "run": run,
                "ending": str(ending),
                "account": account,
                "message": message,
                "at": _us(at) if at else 0,
                "front": "1" if front else "0",
                "wait_prefix": self.keys.wait_prefix,
            },
            rest=(writes or Writes()).flat(),
        )
        return bool(reply)

    def renew(self, task_ids: Iterable[str], node: str) -> None:
        """A node's heartbeat: extend the leases of the jobs it runs (only those still leased:
        XX), and say it is alive. Redis's clock would need a script; a lease is tens of seconds
        and hosts' clocks agree far better than that."""
        now = self._now()
        deadline = now + self.lease
        pipe = self.redis.pipeline(transaction=False)
        ids = list(task_ids)
        if ids:
            pipe.zadd(self.keys.active, {i: _us(deadline) for i in ids}, xx=True, gt=True)
        pipe.zadd(self.keys.nodes, {node: _us(now)})
        pipe.execute()

    def _now(self) -> float:
        return self.clock.now(self.redis)

    # -- the janitor ----------------------------------------------------------------------------

    def requeue_expired(self, limit: int = 500) -> list[str]:
        """Put jobs whose lease ran out back at the front of their wait lists."""
        k = self.keys
        ids = load("requeue").run(
            self.redis,
            keys={
                "active": k.active,
                "jobs": k.jobs,
                "runs": k.runs,
                "permits": k.permits,
                "due": k.due,
                "unknown": k.unknown,
                "accounts": k.accounts,
            },
            args={"now": self.clock.arg(), "wait_prefix": k.wait_prefix, "limit": limit},
        )
        return [str(i) for i in ids]

    def dead_nodes(self, older_than: float) -> list[str]:
        """Nodes whose last heartbeat is older than ``older_than`` seconds."""
        cutoff = self._now() - older_than
        return [str(n) for n in self.redis.zrangebyscore(self.keys.nodes, "-inf", _us(cutoff))]

    def forget_node(self, node: str) -> None:
        self.redis.zrem(self.keys.nodes, node)

    def unknown_accounts(self, older_than: float | None = None) -> dict[str, float]:
        """Accounts with jobs waiting that no worker knows, with when they were first seen;
        only those seen before ``older_than`` seconds ago when given."""
        upper: float | str = "+inf"
        if older_than is not None:
            upper = _us(self._now() - older_than)
        found = self.redis.zrangebyscore(self.keys.unknown, "-inf", upper, withscores=True)
        return {str(member[0]): float(member[1]) / MICROS for member in found}

    def forget_unknown(self, account: str) -> None:
        """An unknown account whose jobs are all gone (dead-lettered)."""
        self.redis.zrem(self.keys.unknown, account)

    # -- accounts -------------------------------------------------------------------------------

    def publish_accounts(self, entries: Mapping[str, Mapping[str, Any] | None]) -> None:
        """What dispatch.lua needs of each account (None withdraws it), in batches."""
        items: list[str] = []
        for account, conf in entries.items():
            items += [account, "" if conf is None else json.dumps(conf, sort_keys=True)]
        k = self.keys
        for start in range(0, len(items), 1000):
            load("publish_accounts").run(
                self.redis,
                keys={"accounts": k.accounts, "due": k.due, "unknown": k.unknown},
                args={"now": self.clock.arg(), "wait_prefix": k.wait_prefix},
                rest=items[start : start + 1000],
            )

    def published_accounts(self) -> dict[str, dict[str, Any]]:
        return {
            str(account): json.loads(conf)
            for account, conf in self.redis.hgetall(self.keys.accounts).items()
        }

    # -- parked jobs ----------------------------------------------------------------------------

    def release_parked(self, account: str, count: int = 0, *, afresh: bool = False) -> list[str]:
        """Parked jobs to the front of the wait list (count 0: all of them)."""
        k = self.keys
        ids = load("release_parked").run(
            self.redis,
            keys={
                "parked": k.parked(account),
                "parked_since": k.parked_since,
                "due": k.due,
                "unknown": k.unknown,
                "accounts": k.accounts,
            },
            args={
                "now": self.clock.arg(),
                "wait_prefix": k.wait_prefix,
                "account": account,
                "count": count,
                "afresh": "1" if afresh else "0",
            },
        )
        return [str(i) for i in ids]

    def parked_head(self, account: str, count: int) -> list[tuple[str, float | None]]:
        """The oldest parked jobs with when each was first parked (left in place)."""
        ids = self.redis.lrange(self.keys.parked(account), 0, count - 1)
        if not ids:
            return []
        since = self.redis.hmget(self.keys.parked_since, ids)
        return [
            (str(i), int(s) / MICROS if s is not None else None)
            for i, s in zip(ids, since, strict=True)
        ]

    def parked_count(self, account: str) -> int:
        return int(self.redis.llen(self.keys.parked(account)))

    # -- reading ----------------------------------------------------------------------------------

    def record(self, task_id: str) -> StoredJob | None:
        text = self.redis.hget(self.keys.jobs, task_id)
        if text is None:
            return None
        account, _, message = str(text).partition("\n")
        return StoredJob(task_id, account, message)

    def wait_head(self, account: str, count: int) -> list[str]:
        return [str(i) for i in self.redis.lrange(self.keys.wait(account), 0, count - 1)]

    def waiting(self, accounts: Sequence[str]) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for account in accounts:
            pipe.llen(self.keys.wait(account))
        return dict(zip(accounts, (int(n) for n in pipe.execute()), strict=True))

    def counts(self) -> StoreCounts:
        k = self.keys
        pipe = self.redis.pipeline(transaction=False)
        pipe.hlen(k.jobs)
        pipe.zcard(k.delayed)
        pipe.zcard(k.active)
        pipe.zcard(k.due)
        pipe.zcard(k.unknown)
        jobs, delayed, active, due, unknown = pipe.execute()
        return StoreCounts(int(jobs), int(delayed), int(active), int(due), int(unknown))

    def due_accounts(self, count: int) -> list[tuple[str, float]]:
        """The accounts next in line, with when each is due (unix time)."""
        found = self.redis.zrange(self.keys.due, 0, count - 1, withscores=True)
        return [(str(member[0]), float(member[1]) / MICROS) for member in found]
