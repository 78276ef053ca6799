"""The account circuit breaker: one bad token must not turn a thousand jobs into a thousand
provider calls and a thousand dead letters.

When an account answers something that fails every job of the account the same way
(``unauthorized``, ``account_unavailable``, ``quota_exceeded``), its circuit opens:

- jobs of the account stop calling the provider and are *parked*: they wait in the job store
  (worker/stores/jobs.py), in the account's parked list, not in a worker's memory. The
  dispatcher parks the account's waiting jobs too, without running them;
- a probe task (``archive.probe``, tasks/probe.py) looks after the account while its circuit is
  open, rescheduling itself: when a probe is due it releases one parked job, and that job is
  the probe (one at a time: a probe claim that outlives the longest run of a job). If the
  provider answers anything but an account problem, the circuit closes and every parked job
  goes back to the account's wait list, by itself. If it answers the account problem again, the
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
    parked:{provider}:{id}           list of parked job ids, oldest first (the job store's)
    paused                           zset of accounts whose circuit is open, for the janitor

Releasing moves parked ids back to the front of the account's wait list in one script
(worker/stores/lua/release_parked.lua): nothing is republished, nothing can be lost half-way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import redis

from config import Account
from worker.stores.keys import Keys


class Decision(StrEnum):
    CALL = "call"  # closed: call the provider
    PARK = "park"  # open: keep the job for later
    PROBE = "probe"  # open and a probe is due: this job calls the provider to see


# KEYS: circuit hash, probe claim, probe chain mark, paused set. ARGV: account, reason, detail,
# cooldown, cooldown max, probing (1/0), chain token. Opens a closed circuit and marks a probe
# chain as started (the caller sends its first task); a failed probe keeps it open and doubles
# the cooldown (the chain that released the probe wakes up in time for the next). Jobs that were
# already in flight when it opened change nothing. Returns the seconds to the next probe and
# whether the caller must start the chain (1/0).
_TRIP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local open = redis.call('HGET', KEYS[1], 'state')
if open and ARGV[6] ~= '1' then
  local wait = tonumber(redis.call('HGET', KEYS[1], 'probe_at')) - now
  return {tostring(math.max(wait, 0)), 0}
end
local trips = redis.call('HINCRBY', KEYS[1], 'trips', 1)
local cooldown = math.min(tonumber(ARGV[4]) * 2 ^ (trips - 1), tonumber(ARGV[5]))
redis.call('HSET', KEYS[1], 'state', 'open', 'reason', ARGV[2], 'detail', ARGV[3],
           'probe_at', tostring(now + cooldown))
redis.call('DEL', KEYS[2])
if open then return {tostring(cooldown), 0} end
redis.call('HSET', KEYS[1], 'opened_at', tostring(now))
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('SET', KEYS[3], ARGV[7], 'PX', math.floor((cooldown + 60) * 1000))
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


class ChainTurn(StrEnum):
    CONTINUE = "continue"  # jobs are parked: look again after the next wait
    ENDED = "ended"  # nothing parked: the chain stops (a job that parks starts another)
    SUPERSEDED = "superseded"  # another chain looks after the account


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
        self._keys = Keys(prefix)
        self.cooldown = cooldown
        self.cooldown_max = cooldown_max
        self.max_pause = max_pause
        # Longer than the longest run of a job: a probe that dies mid-way frees the claim when
        # it expires, and a live one never loses it.
        self.probe_claim_ttl = probe_claim_ttl
        self._trip = client.register_script(_TRIP)
        self._ensure_chain = client.register_script(_ENSURE_CHAIN)
        self._chain_turn = client.register_script(_CHAIN_TURN)

    def _key(self, kind: str, account: Account) -> str:
        names = {
            "circuit": self._keys.circuit,
            "circuit-probe": self._keys.circuit_probe,
            "probe-scheduled": self._keys.probe_chain,
            "parked": self._keys.parked,
        }
        return names[kind](account.key)

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
            self._keys.paused,
        ]
        wait, start = self._trip(
            keys=keys,
            args=[
                account.key,
                reason,
                detail,
                self.cooldown,
                self.cooldown_max,
                int(probing),
                chain,
            ],
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
        pipe.zrem(self._keys.paused, account.key)
        closed, _, _ = pipe.execute()
        return bool(closed)

    def paused_accounts(self) -> list[str]:
        """Accounts whose circuit is open (the janitor makes sure each has a probe chain)."""
        return [str(key) for key in self._redis.zrange(self._keys.paused, 0, -1)]

    def is_open(self, account: Account) -> bool:
        return bool(self._redis.exists(self._key("circuit", account)))

    def parked_count(self, account: Account) -> int:
        return int(self._redis.llen(self._key("parked", account)))

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
