"""The account circuit breaker: one bad token must not turn a thousand jobs into a thousand
provider calls and a thousand dead letters.

When an account answers something that fails every job of the account the same way
(``unauthorized``, ``account_unavailable``, ``quota_exceeded``), its circuit opens:

- jobs of the account stop calling the provider and are *parked*: their message is acknowledged
  and the job is kept in a Redis list, durably, not in a worker's memory (so no visibility
  timeout applies to them);
- a probe task (``archive.probe``, tasks/probe.py) looks after the account while its circuit is
  open, rescheduling itself: when a probe is due it releases one parked job, and that job is
  the probe (one at a time: a probe claim that outlives the longest run of a job). If the
  provider answers anything but an account problem, the circuit closes and every parked job
  goes back to the account's queue, by itself. If it answers the account problem again, the
  circuit stays open and the cooldown doubles, up to a maximum. If the probe job never gets to
  ask (lost, or a duplicate), the task's next turn releases another;
- a job parked longer than the maximum pause, counted from the first time it was parked, is
  dead-lettered with the account's reason, so an operator can replay it once the account is
  fixed.

Keys, under the prefix, per account:
    circuit:{provider}:{id}          hash: state, reason, detail, opened_at, probe_at, trips
    circuit-probe:{provider}:{id}    the probe claim
    probe-scheduled:{provider}:{id}  the token of the probe task's chain while one runs: a job
                                     that parks and finds none starts one, so a lost chain is
                                     replaced and two chains never run side by side
    parked:{provider}:{id}           list of parked jobs (JSON), oldest first
    releasing:{provider}:{id}        the lock of whoever is releasing parked jobs

Releasing reads jobs from the head of the list, republishes them, and only then removes them,
under the releasing lock: a crash in between republishes them again later (at least once; a
repeat answers "already archived"), and two releasers never send the same jobs at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import redis
from redis.exceptions import LockError
from redis.lock import Lock

from config import Account


class Decision(StrEnum):
    CALL = "call"  # closed: call the provider
    PARK = "park"  # open: keep the job for later
    PROBE = "probe"  # open and a probe is due: this job calls the provider to see


# A Lua function, so a job's admission script (tasks/bookkeeping.py) can compose it. Redis's
# clock decides. Returns a Decision value.
CHECK_LUA = """
local function circuit_check(circuit_key, probe_key, probe_ttl_ms)
  local state = redis.call('HGET', circuit_key, 'state')
  if not state then return 'call' end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  if now < tonumber(redis.call('HGET', circuit_key, 'probe_at') or '0') then return 'park' end
  if redis.call('SET', probe_key, '1', 'NX', 'PX', probe_ttl_ms) then return 'probe' end
  return 'park'
end
"""
_CHECK = CHECK_LUA + "return circuit_check(KEYS[1], KEYS[2], ARGV[1])"

# KEYS: circuit hash, probe claim, probe chain mark. ARGV: reason, detail, cooldown, cooldown
# max, probing (1/0), chain token. Opens a closed circuit and marks a probe chain as started (the
# caller sends its first task); a failed probe keeps it open and doubles the cooldown (the chain
# that released the probe wakes up in time for the next). Jobs that were already in flight when
# it opened change nothing. Returns the seconds to the next probe and whether the caller must
# start the chain (1/0).
_TRIP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local open = redis.call('HGET', KEYS[1], 'state')
if open and ARGV[5] ~= '1' then
  local wait = tonumber(redis.call('HGET', KEYS[1], 'probe_at')) - now
  return {tostring(math.max(wait, 0)), 0}
end
local trips = redis.call('HINCRBY', KEYS[1], 'trips', 1)
local cooldown = math.min(tonumber(ARGV[3]) * 2 ^ (trips - 1), tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'state', 'open', 'reason', ARGV[1], 'detail', ARGV[2],
           'probe_at', tostring(now + cooldown))
redis.call('DEL', KEYS[2])
if open then return {tostring(cooldown), 0} end
redis.call('HSET', KEYS[1], 'opened_at', tostring(now))
redis.call('SET', KEYS[3], ARGV[6], 'PX', math.floor((cooldown + 60) * 1000))
return {tostring(cooldown), 1}
"""

# KEYS: circuit hash, probe chain mark. ARGV: chain token. A job that has just parked starts a
# chain unless one runs (a lost chain is replaced). Returns seconds to the probe when the
# caller must send the chain's first task, else -1.
_ENSURE_CHAIN = """
local probe_at = redis.call('HGET', KEYS[1], 'probe_at')
if not probe_at then return '-1' end
local t = redis.call('TIME')
local wait = math.max(tonumber(probe_at) - (tonumber(t[1]) + tonumber(t[2]) / 1000000), 0)
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', math.floor((wait + 60) * 1000)) then
  return tostring(wait)
end
return '-1'
"""

# KEYS: probe chain mark, parked list. ARGV: chain token, ms until its next turn. A turn of the
# chain goes on unless another chain has taken over, and ends when no job is parked: in one
# script, so a job parking meanwhile either is seen here or finds the mark gone and starts a
# new chain. Returns 'continue', 'ended' or 'superseded'.
_CHAIN_TURN = """
local mark = redis.call('GET', KEYS[1])
if mark and mark ~= ARGV[1] then return 'superseded' end
if redis.call('LLEN', KEYS[2]) == 0 then
  if mark then redis.call('DEL', KEYS[1]) end
  return 'ended'
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 'continue'
"""

# KEYS: parked list. ARGV: the JSON of jobs just republished. Removes each one wherever it now
# is: a job re-parked at the head meanwhile must not be trimmed off in its place.
_REMOVE = """
local removed = 0
for i = 1, #ARGV do removed = removed + redis.call('LREM', KEYS[1], 1, ARGV[i]) end
return removed
"""


class ChainTurn(StrEnum):
    CONTINUE = "continue"  # jobs are parked: look again after the next wait
    ENDED = "ended"  # nothing parked: the chain stops (a job that parks starts another)
    SUPERSEDED = "superseded"  # another chain looks after the account


@dataclass(frozen=True)
class ParkedJob:
    task_id: str
    kwargs: dict[str, Any]
    headers: dict[str, Any]  # the job's history (attempts, first attempt), as message headers
    parked_at: float  # the first time it was parked: its maximum pause counts from there

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ParkedJob:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class CircuitState:
    account: str
    state: str  # closed | open
    reason: str | None = None
    detail: str | None = None
    opened_at: float | None = None
    probe_in: float | None = None  # seconds until the next probe may run
    trips: int = 0
    parked: int = 0
    probing: bool = False  # a probe job holds the probe claim


class AccountCircuit:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        cooldown: float,
        cooldown_max: float,
        max_pause: float,
        probe_claim_ttl: float,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self.cooldown = cooldown
        self.cooldown_max = cooldown_max
        self.max_pause = max_pause
        # Longer than the longest run of a job: a probe that dies mid-way frees the claim when
        # it expires, and a live one never loses it.
        self.probe_claim_ttl = probe_claim_ttl
        self._check = client.register_script(_CHECK)
        self._trip = client.register_script(_TRIP)
        self._ensure_chain = client.register_script(_ENSURE_CHAIN)
        self._chain_turn = client.register_script(_CHAIN_TURN)
        self._remove = client.register_script(_REMOVE)

    def _key(self, kind: str, account: Account) -> str:
        return f"{self._prefix}:{kind}:{account.provider}:{account.id}"

    def check_keys(self, account: Account) -> list[str]:
        return [self._key("circuit", account), self._key("circuit-probe", account)]

    def check_args(self) -> list[int]:
        return [int(self.probe_claim_ttl * 1000)]

    def check(self, account: Account) -> Decision:
        return Decision(self._check(keys=self.check_keys(account), args=self.check_args()))

    def trip(
        self, account: Account, reason: str, detail: str, probing: bool, chain: str
    ) -> float | None:
        """Open the account's circuit (or, after a failed probe, keep it open with a doubled
        cooldown). Returns the seconds until its probe when the caller must start the probe
        chain ``chain`` (the circuit was closed)."""
        keys = [
            self._key("circuit", account),
            self._key("circuit-probe", account),
            self._key("probe-scheduled", account),
        ]
        wait, start = self._trip(
            keys=keys,
            args=[reason, detail, self.cooldown, self.cooldown_max, int(probing), chain],
        )
        return float(wait) if int(start) else None

    def chain_to_start(self, account: Account, chain: str) -> float | None:
        """Seconds until the probe when no probe chain runs and the caller must start ``chain``
        (a lost one is replaced), else None."""
        keys = [self._key("circuit", account), self._key("probe-scheduled", account)]
        wait = float(self._ensure_chain(keys=keys, args=[chain]))
        return wait if wait >= 0 else None

    def chain_turn(self, account: Account, chain: str, next_turn_in: float) -> ChainTurn:
        """Go on with the probe chain ``chain`` for one more turn, ``next_turn_in`` seconds
        away, unless nothing is parked or another chain has taken over."""
        keys = [self._key("probe-scheduled", account), self._key("parked", account)]
        ttl_ms = int((next_turn_in + 60) * 1000)  # time for its task to come back
        return ChainTurn(self._chain_turn(keys=keys, args=[chain, ttl_ms]))

    def release_probe(self, account: Account) -> None:
        """The probe could not tell (a transient failure): let the next job probe."""
        self._redis.delete(self._key("circuit-probe", account))

    def close(self, account: Account) -> bool:
        """The account answers again: close its circuit. True if it was open."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self._key("circuit", account))
        pipe.delete(self._key("circuit-probe", account), self._key("probe-scheduled", account))
        closed, _ = pipe.execute()
        return bool(closed)

    def is_open(self, account: Account) -> bool:
        return bool(self._redis.exists(self._key("circuit", account)))

    def park(self, account: Account, job: ParkedJob, again: bool = False) -> int:
        """Keep ``job`` until the account answers. A job parked ``again`` (a probe, released
        from the head, that found the account still failing) goes back to the head: the list
        stays oldest first, which is where expired jobs are looked for."""
        key = self._key("parked", account)
        push = self._redis.lpush if again else self._redis.rpush
        return int(push(key, job.to_json()))

    def parked_count(self, account: Account) -> int:
        return int(self._redis.llen(self._key("parked", account)))

    @contextmanager
    def releasing(self, account: Account) -> Iterator[Lock | None]:
        """Hold the account's releasing lock (yielded, to renew between batches) or learn that
        someone else holds it (None)."""
        lock = self._redis.lock(self._key("releasing", account), timeout=300, blocking_timeout=30)
        acquired = bool(lock.acquire())
        try:
            yield lock if acquired else None
        finally:
            if acquired:
                with suppress(LockError):  # expired under a very long release
                    lock.release()

    def head(self, account: Account, how_many: int) -> list[ParkedJob]:
        """The oldest parked jobs, left in place (with the releasing lock held)."""
        texts = self._redis.lrange(self._key("parked", account), 0, how_many - 1)
        return [ParkedJob.from_json(text) for text in texts]

    def remove(self, account: Account, jobs: list[ParkedJob]) -> None:
        """Forget jobs once they are republished (with the releasing lock held)."""
        if jobs:
            self._remove(keys=[self._key("parked", account)], args=[j.to_json() for j in jobs])

    def expired(self, account: Account, now: float | None = None) -> Iterator[ParkedJob]:
        """Remove and yield the parked jobs older than the maximum pause (they are at the head;
        with the releasing lock held)."""
        now = time.time() if now is None else now
        while (head := self.head(account, 1)) and now - head[0].parked_at >= self.max_pause:
            yield head[0]
            self.remove(account, head)

    def state(self, account: Account) -> CircuitState:
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(self._key("circuit", account))
        pipe.llen(self._key("parked", account))
        pipe.exists(self._key("circuit-probe", account))
        (seconds, micros), data, parked, probing = pipe.execute()
        if not data:
            return CircuitState(account.key, "closed", parked=parked)
        now = seconds + micros / 1_000_000
        return CircuitState(
            account=account.key,
            state=data.get("state", "open"),
            reason=data.get("reason"),
            detail=data.get("detail"),
            opened_at=float(data["opened_at"]) if "opened_at" in data else None,
            probe_in=max(0.0, float(data.get("probe_at", now)) - now),
            trips=int(data.get("trips", 0)),
            parked=parked,
            probing=bool(probing),
        )
