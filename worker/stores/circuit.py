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

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import redis

from config import Account
from worker.stores.clock import Clock, RedisClock
from worker.stores.keys import Keys
from worker.stores.limiter import READ_BATCH
from worker.stores.scripts import load


class Decision(StrEnum):
    CALL = "call"  # closed: call the provider
    PARK = "park"  # open: keep the job for later
    PROBE = "probe"  # open and a probe is due: this job calls the provider to see


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
        clock: Clock | None = None,
    ) -> None:
        self._redis = client
        self._keys = Keys(prefix)
        self.cooldown = cooldown
        self.cooldown_max = cooldown_max
        self.max_pause = max_pause
        # Longer than the longest run of a job: a probe that dies mid-way frees the claim when
        # it expires, and a live one never loses it.
        self.probe_claim_ttl = probe_claim_ttl
        self.clock: Clock = clock or RedisClock()

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
        wait, start = load("circuit_trip").run(
            self._redis,
            keys={
                "circuit": self._key("circuit", account),
                "probe": self._key("circuit-probe", account),
                "chain": self._key("probe-scheduled", account),
                "paused": self._keys.paused,
            },
            args={
                "now": self.clock.arg(),
                "account": account.key,
                "reason": reason,
                "detail": detail,
                "cooldown": self.cooldown,
                "cooldown_max": self.cooldown_max,
                "probing": int(probing),
                "token": chain,
            },
        )
        return float(wait) if int(start) else None

    def chain_to_start(self, account: Account, chain: str) -> float | None:
        """Seconds until the probe when no probe chain runs and the caller must start ``chain``
        (a lost one is replaced), else None."""
        wait = float(
            load("circuit_chain_start").run(
                self._redis,
                keys={
                    "circuit": self._key("circuit", account),
                    "chain": self._key("probe-scheduled", account),
                },
                args={"now": self.clock.arg(), "token": chain},
            )
        )
        return wait if wait >= 0 else None

    def chain_turn(self, account: Account, chain: str, next_turn_in: float) -> ChainTurn:
        """Go on with the probe chain ``chain`` for one more turn, ``next_turn_in`` seconds
        away, unless nothing is parked or another chain has taken over."""
        ttl_ms = int((next_turn_in + 60) * 1000)  # time for its task to come back
        turn = load("circuit_chain_turn").run(
            self._redis,
            keys={
                "chain": self._key("probe-scheduled", account),
                "parked": self._key("parked", account),
            },
            args={"token": chain, "next_turn_ms": ttl_ms},
        )
        return ChainTurn(turn)

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
        return self.states([account])[0]

    def states(self, accounts: Sequence[Account]) -> list[CircuitState]:
        """Each account's circuit, in order, in a round trip per READ_BATCH accounts."""
        replies: list[object] = []
        for start in range(0, len(accounts), READ_BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for account in accounts[start : start + READ_BATCH]:
                pipe.hgetall(self._key("circuit", account))
                pipe.llen(self._key("parked", account))
                pipe.exists(self._key("circuit-probe", account))
            replies.extend(pipe.execute())
        now = self.clock.now(self._redis)
        states = []
        for n, account in enumerate(accounts):
            data, parked, probing = replies[3 * n : 3 * n + 3]
            assert isinstance(data, dict) and isinstance(parked, int)
            if not data:
                states.append(CircuitState(account.key, "closed", parked=parked))
                continue
            states.append(
                CircuitState(
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
            )
        return states
