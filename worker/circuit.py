"""The account circuit breaker: one bad token must not turn a thousand jobs into a thousand
provider calls and a thousand dead letters.

When an account answers something that fails every job of the account the same way
(``unauthorized``, ``account_unavailable``, ``quota_exceeded``), its circuit opens:

- jobs of the account stop calling the provider and are *parked*: their message is acknowledged
  and the job is kept in a Redis list, durably, not in a worker's memory (so no visibility
  timeout applies to them);
- after a cooldown, a probe task releases one parked job; that job is the probe (only one at a
  time: a probe claim with a TTL). If the provider answers anything but an account problem, the
  circuit closes and every parked job goes back to the account's queue, by itself. If it answers
  the account problem again, the circuit stays open and the cooldown doubles, up to a maximum;
- a job parked longer than the maximum pause is dead-lettered with the account's reason, so an
  operator can replay it once the account is fixed.

Keys, under the prefix, per account:
    circuit:{provider}:{id}          hash: state, reason, detail, opened_at, probe_at, trips
    circuit-probe:{provider}:{id}    the probe claim
    probe-scheduled:{provider}:{id}  a probe task is on its way (replaced if it gets lost)
    parked:{provider}:{id}           list of parked jobs (JSON), oldest first
    releasing:{provider}:{id}        the lock of whoever is releasing parked jobs

Releasing reads jobs from the head of the list, republishes them, and only then trims them off,
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

from config import Account


class Decision(StrEnum):
    CALL = "call"  # closed: call the provider
    PARK = "park"  # open: keep the job for later
    PROBE = "probe"  # open and a probe is due: this job calls the provider to see


# A Lua function, so a job's admission script (tasks/archive.py) can compose it. Redis's clock
# decides. Returns a Decision value.
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

# KEYS: circuit hash, probe claim, probe-scheduled mark. ARGV: reason, detail, cooldown,
# cooldown max, probing (1/0). Opens a closed circuit; a failed probe keeps it open and doubles
# the cooldown. Jobs that were already in flight when it opened change nothing. Returns the
# seconds to the next probe and whether the caller must schedule it (1/0).
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
if not open then redis.call('HSET', KEYS[1], 'opened_at', tostring(now)) end
redis.call('HSET', KEYS[1], 'state', 'open', 'reason', ARGV[1], 'detail', ARGV[2],
           'probe_at', tostring(now + cooldown))
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[3], '1', 'PX', math.floor((cooldown + 60) * 1000))
return {tostring(cooldown), 1}
"""

# KEYS: circuit hash, probe-scheduled mark. Marks a probe as scheduled unless one already is:
# a parked job calls this so that a lost probe task is replaced. Returns seconds to the probe
# when the caller must schedule it, else -1.
_ENSURE_PROBE = """
local probe_at = redis.call('HGET', KEYS[1], 'probe_at')
if not probe_at then return '-1' end
local t = redis.call('TIME')
local wait = math.max(tonumber(probe_at) - (tonumber(t[1]) + tonumber(t[2]) / 1000000), 0)
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', math.floor((wait + 60) * 1000)) then
  return tostring(wait)
end
return '-1'
"""


@dataclass(frozen=True)
class ParkedJob:
    task_id: str
    kwargs: dict[str, Any]
    headers: dict[str, Any]  # the job's history (attempts, first attempt), as message headers
    parked_at: float

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


class AccountCircuit:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        cooldown: float,
        cooldown_max: float,
        max_pause: float,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self.cooldown = cooldown
        self.cooldown_max = cooldown_max
        self.max_pause = max_pause
        self._check = client.register_script(_CHECK)
        self._trip = client.register_script(_TRIP)
        self._ensure_probe = client.register_script(_ENSURE_PROBE)

    def _key(self, kind: str, account: Account) -> str:
        return f"{self._prefix}:{kind}:{account.provider}:{account.id}"

    def check_keys(self, account: Account) -> list[str]:
        return [self._key("circuit", account), self._key("circuit-probe", account)]

    def check_args(self) -> list[int]:
        # The probe claim outlives one call with its retries; a probe that dies mid-way frees
        # the claim when it expires.
        return [int(max(self.cooldown, 60) * 1000)]

    def check(self, account: Account) -> Decision:
        return Decision(self._check(keys=self.check_keys(account), args=self.check_args()))

    def trip(self, account: Account, reason: str, detail: str, probing: bool) -> float | None:
        """Open the account's circuit (or, after a failed probe, keep it open with a doubled
        cooldown). Returns the seconds until its probe when the caller must schedule it."""
        keys = [
            self._key("circuit", account),
            self._key("circuit-probe", account),
            self._key("probe-scheduled", account),
        ]
        wait, schedule = self._trip(
            keys=keys, args=[reason, detail, self.cooldown, self.cooldown_max, int(probing)]
        )
        return float(wait) if int(schedule) else None

    def probe_to_schedule(self, account: Account) -> float | None:
        """Seconds until the probe if no probe task is scheduled (a lost one is replaced)."""
        keys = [self._key("circuit", account), self._key("probe-scheduled", account)]
        wait = float(self._ensure_probe(keys=keys))
        return wait if wait >= 0 else None

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

    def park(self, account: Account, job: ParkedJob) -> int:
        return int(self._redis.rpush(self._key("parked", account), job.to_json()))

    def parked_count(self, account: Account) -> int:
        return int(self._redis.llen(self._key("parked", account)))

    @contextmanager
    def releasing(self, account: Account) -> Iterator[bool]:
        """Hold the account's releasing lock (True) or learn that someone else holds it."""
        lock = self._redis.lock(self._key("releasing", account), timeout=300, blocking_timeout=30)
        acquired = bool(lock.acquire())
        try:
            yield acquired
        finally:
            if acquired:
                with suppress(LockError):  # expired under a very long release
                    lock.release()

    def head(self, account: Account, how_many: int) -> list[ParkedJob]:
        """The oldest parked jobs, left in place (with the releasing lock held)."""
        texts = self._redis.lrange(self._key("parked", account), 0, how_many - 1)
        return [ParkedJob.from_json(text) for text in texts]

    def drop_head(self, account: Account, how_many: int) -> None:
        """Forget the oldest jobs once they are republished (with the releasing lock held)."""
        self._redis.ltrim(self._key("parked", account), how_many, -1)

    def expired(self, account: Account, now: float | None = None) -> Iterator[ParkedJob]:
        """Remove and yield the parked jobs older than the maximum pause (they are at the head;
        with the releasing lock held)."""
        now = time.time() if now is None else now
        while (head := self.head(account, 1)) and now - head[0].parked_at >= self.max_pause:
            yield head[0]
            self.drop_head(account, 1)

    def state(self, account: Account) -> CircuitState:
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(self._key("circuit", account))
        pipe.llen(self._key("parked", account))
        (seconds, micros), data, parked = pipe.execute()
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
        )
