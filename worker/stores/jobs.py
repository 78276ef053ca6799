"""The job store: every job from the moment it is accepted to the moment it ends, in Redis.

Jobs enter it from producers (worker/producer.py) and from the intake queue through each node's
router (worker/dispatch/router.py), and wait in their account's wait list. Each node's dispatcher
(worker/dispatch/dispatcher.py) hands out due jobs for its free worker slots, round-robin between
accounts in the order of their next permitted time (a sorted set: O(log N) whatever the number of
accounts), each with its rate-limit permit reserved and its run's lease taken in the same step,
to the node's own Celery consumer. A job that cannot run now (a retry's countdown, a 429, a paused
account) comes back here, never into a worker's memory.

Leases are the one way lost work comes back. A handed-out job's run holds a lease, an ``active``
member "id|token" renewed by its node; when it runs out (a killed node, a message lost between
the dispatcher and a worker), the janitor puts the job back at the front of its wait list and counts
the run as lost. Every ending checks and removes the run's member in the same step
(lua/close.lua), so only the run that holds a job can end it, once. Keys: worker/stores/keys.py.
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
from worker.stores.keys import RESULT_PREFIX, Keys, result_key
from worker.stores.scripts import load
from worker.stores.writes import Writes

# Delayed jobs promoted to their wait lists per dispatch call: bounds the work of one call.
PROMOTE_PER_CALL = 500
# How long an enqueue waits for a replica to have its step (Sentinel deployments).
REPLICA_WAIT_MS = 2000
# Accounts a publish_accounts.lua call writes: a few milliseconds of Redis.
PUBLISH_PER_CALL = 1000
# How far ahead of its permit a job may be handed out: time for its message to reach a worker
# process, so the call goes out on its slot. A worker slot sleeps at most this long for it.
DISPATCH_LEAD = 0.02
# Expired leases given back per janitor turn: bounds the work of one turn.
REQUEUE_PER_TURN = 500


class Ending(StrEnum):
    FINAL = "final"
    WAIT = "wait"
    PARK = "park"


class Held(StrEnum):
    SKIP = "skip"  # a job whose chat another job holds is not stored (producers)
    KEEP = "keep"  # it is stored, and its run ends as a duplicate (raw messages)


@dataclass(frozen=True)
class JobBody:
    """What a job carries besides its routing: its keyword arguments, its history across runs
    (worker/contract/history.py), who sent it and, only while tracing is on, its trace context
    (worker/tracing: W3C traceparent and when it entered the store), written only when set so
    a job stored with tracing off is byte for byte what it was."""

    kwargs: dict[str, Any]
    history: dict[str, Any] = field(default_factory=dict)
    origin: str = ""
    trace: dict[str, Any] = field(default_factory=dict)

    def dumps(self) -> str:
        data = {"kwargs": self.kwargs, "history": self.history, "origin": self.origin}
        if self.trace:
            data["trace"] = self.trace
        return json.dumps(data)

    @classmethod
    def loads(cls, text: str) -> JobBody:
        data = json.loads(text)
        trace = data.get("trace")
        return cls(
            dict(data["kwargs"]),
            dict(data.get("history") or {}),
            data.get("origin", ""),
            dict(trace) if isinstance(trace, dict) else {},
        )


@dataclass(frozen=True)
class StoredJob:
    """A job's record (lua/lib/record.lua): "account\\ntask\\nmark\\nlost\\nbody"."""

    task_id: str
    account: str  # "provider:id", or UNPACED
    task: str
    mark: str  # its chat's pending-mark key ('' for sweeps)
    lost: int  # runs of it that began and never ended
    body: JobBody

    @classmethod
    def parse(cls, task_id: str, record: str) -> StoredJob:
        account, task, mark, lost, body = record.split("\n", 4)
        return cls(task_id, account, task, mark, int(lost), JobBody.loads(body))

    def record(self, body: JobBody | None = None) -> str:
        return "\n".join(
            [self.account, self.task, self.mark, str(self.lost), (body or self.body).dumps()]
        )


@dataclass(frozen=True)
class NewJob:
    task_id: str
    account: str
    task: str
    mark: str
    body: JobBody
    not_before: float | None = None  # unix time: wait in the delayed set until then


class Submitted(StrEnum):
    NEW = "new"  # stored: it waits for its turn
    STORED = "stored"  # a copy of a job that is stored already: nothing changed
    DONE = "done"  # a copy of a job that has ended (its result is there): nothing changed


@dataclass(frozen=True)
class DispatchedJob:
    task_id: str
    token: str  # its run's: the lease member is "task_id|token"
    slot: int  # µs on Redis's clock when its call may go; 0: no rate limit
    lost: int
    probe: bool  # the call that tells whether its paused account answers again
    holder: str  # the job that holds its chat ('' when it holds it itself)
    account: str
    task: str
    mark: str
    body: JobBody

    @property
    def member(self) -> str:
        return lease_member(self.task_id, self.token)


@dataclass(frozen=True)
class Dispatch:
    jobs: list[DispatchedJob]
    next_in: float | None  # seconds until something is next due; None: nothing, or full
    now_us: int  # Redis's clock when it was made


@dataclass(frozen=True)
class Tick:
    janitor: bool  # this node had the janitor's turn (the lists below are only filled then)
    requeued: list[str] = field(default_factory=list)
    dead_nodes: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # past their grace
    paused: list[str] = field(default_factory=list)
    # Seconds the whole fleet had been silent when this tick came, if that held the janitor back
    # for a lease (0.0: it did not).
    held_after: float = 0.0


@dataclass(frozen=True)
class StoreCounts:
    jobs: int
    delayed: int
    active: int


def lease_member(task_id: str, token: str) -> str:
    return f"{task_id}|{token}"


def _us(seconds: float) -> int:
    return int(seconds * MICROS)


class NotReplicated(redis.ConnectionError):
    """A step the master stored but no replica acknowledged in time: whether it survives a
    failover is uncertain, as after a lost connection."""


class JobStore:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        lease: float,
        claim_ttl: int,
        probe_ttl: float,
        clock: Clock | None = None,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.lease = lease
        self.claim_ttl = claim_ttl
        # Longer than the longest run of a job: a probe that dies frees its claim when it runs out.
        self.probe_ttl = probe_ttl
        self.clock: Clock = clock or RedisClock()

    # -- intake -------------------------------------------------------------------------------

    def submit(
        self,
        jobs: Sequence[NewJob],
        *,
        held: Held,
        check_results: bool = False,
        routing: str = "",
        replicas: int = 0,
    ) -> list[str]:
        """Store jobs in one atomic step (lua/submit.lua): each one's status, a ``Submitted``
        value or, when its chat is held by another job and ``held`` is SKIP, that job's id.
        ``replicas``: answer only once that many replicas have the step, else raise
        NotReplicated (its jobs may or may not survive a failover: safe to send again)."""
        items: list[Any] = []
        for job in jobs:
            not_before = _us(job.not_before) if job.not_before else 0
            items += [job.task_id, job.account, job.task, job.mark, job.body.dumps(), not_before]
        if not items and not routing:
            return []
        k = self.keys
        keys = {
            "jobs": k.jobs,
            "due": k.due,
            "delayed": k.delayed,
            "unknown": k.unknown,
            "accounts": k.accounts,
            "routing": routing,
        }
        args = {
            "now": self.clock.arg(),
            "wait_prefix": k.wait_prefix,
            "claim_ttl": self.claim_ttl,
            "wake": k.wake,
            "held": str(held),
            "check_results": "1" if check_results else "0",
            "results_prefix": RESULT_PREFIX,
        }
        if not replicas:
            statuses = load("submit").run(self.redis, keys=keys, args=args, rest=items)
        else:
            # WAIT holds the reply until the step reached a replica (on the same connection,
            # hence the pipeline): a failover promotes a replica that has it.
            pipe = self.redis.pipeline(transaction=False)
            load("submit").queue(pipe, keys=keys, args=args, rest=items)
            pipe.wait(replicas, REPLICA_WAIT_MS)
            statuses, reached = pipe.execute()
            if int(reached) < replicas:
                raise NotReplicated(
                    f"stored on the master, but on {reached} of {replicas} replicas after "
                    f"{REPLICA_WAIT_MS} ms: a failover could lose it"
                )
        return [str(status) for status in statuses]

    # -- dispatch -----------------------------------------------------------------------------

    def dispatch(self, budget: int) -> Dispatch:
        """Hand out up to ``budget`` due jobs (lua/dispatch.lua)."""
        k = self.keys
        reply = load("dispatch").run(
            self.redis,
            keys={
                "due": k.due,
                "delayed": k.delayed,
                "jobs": k.jobs,
                "active": k.active,
                "unknown": k.unknown,
                "accounts": k.accounts,
                "parked_since": k.parked_since,
                "tokens": k.tokens,
            },
            args={
                "now": self.clock.arg(),
                "budget": max(0, budget),
                "lead_us": _us(DISPATCH_LEAD),
                "lease_us": _us(self.lease),
                "promote_max": PROMOTE_PER_CALL,
                "wait_prefix": k.wait_prefix,
                "parked_prefix": k.parked(""),
                "probe_prefix": k.circuit_probe_prefix,
                "probe_ttl_ms": int(self.probe_ttl * 1000),
                "claim_ttl": self.claim_ttl,
            },
        )
        now_us, next_in, *items = reply
        jobs = [
            DispatchedJob(
                task_id=str(items[i]),
                token=str(items[i + 1]),
                slot=int(items[i + 2]),
                lost=int(items[i + 3]),
                probe=items[i + 4] == "1",
                holder=str(items[i + 5]),
                account=str(items[i + 6]),
                task=str(items[i + 7]),
                mark=str(items[i + 8]),
                body=JobBody.loads(str(items[i + 9])),
            )
            for i in range(0, len(items), 10)
        ]
        wait = int(next_in)
        return Dispatch(jobs, wait / MICROS if wait >= 0 else None, int(now_us))

    # -- endings --------------------------------------------------------------------------------

    def close(
        self,
        task_id: str,
        member: str,
        ending: Ending,
        *,
        account: str = "",
        record: str = "",
        delay: float = 0.0,
        front: bool = False,
        mark: str = "",
        waited_in: str = "",
        parked: bool = False,
        result: str = "",
        result_ttl: int = 0,
        writes: Writes | None = None,
    ) -> bool:
        """End a run (lua/close.lua). False when it changed nothing: the run no longer held the
        job (a retried call whose first try went through, a lease given to another run), or,
        with no ``member``, the job was no longer in ``waited_in``. ``parked``: the job may have
        a parked time to forget at its final ending (a probe, a parked job)."""
        k = self.keys
        parked_list = k.parked(account) if account and account != UNPACED else ""
        reply = load("close").run(
            self.redis,
            keys={
                "jobs": k.jobs,
                "active": k.active,
                "delayed": k.delayed,
                "due": k.due,
                "unknown": k.unknown,
                "accounts": k.accounts,
                "parked": parked_list,
                "parked_since": k.parked_since,
                "chat": mark,
                "from": waited_in,
                "result": result_key(task_id),
            },
            args={
                "now": self.clock.arg(),
                "id": task_id,
                "member": member,
                "ending": str(ending),
                "account": account,
                "record": record,
                "delay_us": _us(delay),
                "front": "1" if front else "0",
                "parked": "1" if parked else "0",
                "wait_prefix": k.wait_prefix,
                "result": result,
                "result_ttl": result_ttl,
                "wake": k.wake,
            },
            rest=(writes or Writes()).flat(),
        )
        return bool(reply)

    # -- housekeeping -----------------------------------------------------------------------------

    def tick(
        self,
        node: str,
        members: Iterable[str],
        *,
        janitor_ms: int,
        node_timeout: float,
        unknown_grace: float,
        silence: float | None = None,
    ) -> Tick:
        """A node's housekeeping step (lua/tick.lua): renew its runs' leases, say it is alive,
        and, if it gets the janitor's turn, give back expired leases and report the rest.
        ``silence``: seconds without any node's heartbeat after which the janitor waits a
        lease; less than the least a live node's lease has left at its last renewal (by default
        two thirds of a lease, for nodes that renew every third)."""
        k = self.keys
        janitor, requeued, dead, unknown, paused, held = load("tick").run(
            self.redis,
            keys={
                "active": k.active,
                "nodes": k.nodes,
                "janitor": k.janitor,
                "jobs": k.jobs,
                "due": k.due,
                "unknown": k.unknown,
                "accounts": k.accounts,
                "paused": k.paused,
            },
            args={
                "now": self.clock.arg(),
                "node": node,
                "lease_us": _us(self.lease),
                "silence_us": _us(self.lease * 2 / 3 if silence is None else silence),
                "janitor_ms": janitor_ms,
                "node_timeout_us": _us(node_timeout),
                "unknown_grace_us": _us(unknown_grace),
                "wait_prefix": k.wait_prefix,
                "limit": REQUEUE_PER_TURN,
                "wake": k.wake,
            },
            rest=list(members),
        )
        return Tick(
            bool(int(janitor)),
            [str(i) for i in requeued],
            [str(n) for n in dead],
            [str(a) for a in unknown],
            [str(a) for a in paused],
            int(held) / MICROS,
        )

    def forget_node(self, node: str) -> None:
        self.redis.zrem(self.keys.nodes, node)

    def forget_unknown(self, account: str) -> None:
        """An unknown account whose jobs are all gone (dead-lettered)."""
        self.redis.zrem(self.keys.unknown, account)

    def nodes(self, within: float | None = None) -> list[str]:
        """Nodes that said they were alive within ``within`` seconds (every node not yet found
        dead, when None)."""
        since: float | str = "-inf" if within is None else _us(self.clock.now(self.redis) - within)
        return [str(node) for node in self.redis.zrangebyscore(self.keys.nodes, since, "+inf")]

    # -- accounts -------------------------------------------------------------------------------

    def publish_accounts(self, entries: Mapping[str, Mapping[str, Any] | str | None]) -> None:
        """Publish each account's limits for dispatch.lua: its entry as ``dispatch_entry``
        (worker/dispatch/registry.py) gives it, a mapping or its JSON text naming the provider
        method of each limit (None withdraws the account). The hash stores each limit under its
        limiter key (Keys.limiter), which publish_accounts.lua names. Accounts with the same
        entry travel as one argument, their names joined by newlines (a name cannot hold one:
        config/accounts.py), so a hundred thousand accounts cost a few arguments, not two
        hundred thousand."""
        groups: dict[str, list[str]] = {}
        for account, conf in entries.items():
            if conf is None:
                text = ""
            else:
                text = conf if isinstance(conf, str) else json.dumps(conf, sort_keys=True)
            groups.setdefault(text, []).append(account)
        k = self.keys
        calls: list[list[str]] = [[]]
        room = PUBLISH_PER_CALL
        for text, accounts in groups.items():
            while accounts:
                if room == 0:
                    calls.append([])
                    room = PUBLISH_PER_CALL
                taken, accounts = accounts[:room], accounts[room:]
                calls[-1] += [text, "\n".join(taken)]
                room -= len(taken)
        for rest in calls:
            if rest:
                load("publish_accounts").run(
                    self.redis,
                    keys={"accounts": k.accounts, "due": k.due, "unknown": k.unknown},
                    args={
                        "now": self.clock.arg(),
                        "wait_prefix": k.wait_prefix,
                        "limiter_prefix": k.limiter_prefix,
                        "wake": k.wake,
                    },
                    rest=rest,
                )

    # -- reading ----------------------------------------------------------------------------------

    def record(self, task_id: str) -> StoredJob | None:
        text = self.redis.hget(self.keys.jobs, task_id)
        return None if text is None else StoredJob.parse(task_id, str(text))

    def wait_head(self, account: str, count: int) -> list[str]:
        return [str(i) for i in self.redis.lrange(self.keys.wait(account), 0, count - 1)]

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
        jobs, delayed, active = pipe.execute()
        return StoreCounts(int(jobs), int(delayed), int(active))

    def unknown_accounts(self) -> dict[str, float]:
        """Accounts with jobs waiting that no worker knows, with when they were first seen."""
        found = self.redis.zrange(self.keys.unknown, 0, -1, withscores=True)
        return {str(member[0]): float(member[1]) / MICROS for member in found}
