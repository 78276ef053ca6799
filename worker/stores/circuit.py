"""The account circuit breaker: one bad token must not turn a thousand jobs into a thousand
provider calls and a thousand dead letters.

When an account answers something that fails every job of the account the same way (an account
reason: ``unauthorized``, ``account_unavailable``, ``quota_exceeded``, ``misconfigured``), its
circuit opens:

- its jobs stop calling the provider and are *parked*: they wait in the job store, in the
  account's parked list, not in a worker's memory. The dispatcher parks the account's waiting
  jobs too, without running them, and spends none of their retries;
- the next probe's time goes into the account's entry of the accounts hash, where the
  dispatcher reads it with the account's limits (lua/circuit_trip.lua). When it is due, the
  dispatcher hands out the oldest parked job as the probe (one at a time: a probe claim that
  outlives the longest run of a job). If the provider answers it with anything but an account
  problem, the circuit closes and every parked job goes back to the account's wait list
  (lua/resume.lua); if it answers the account problem again, the cooldown doubles, up to a
  maximum;
- a job parked longer than the maximum pause, counted from the first time it was parked, is
  dead-lettered with the account's reason by the janitor, to be replayed once the account is
  fixed.

Keys, under the prefix, per account:

    circuit:{provider}:{id}          hash: state, reason, detail, opened_at, probe_at, trips
    circuit-probe:{provider}:{id}    the probe claim (the probe job's id)
    parked:{provider}:{id}           list of parked job ids, oldest first (the job store's)
    paused                           zset of accounts whose circuit is open, for the janitor
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from config import Account
from worker.stores.clock import Clock, RedisClock
from worker.stores.keys import Keys
from worker.stores.limiter import READ_BATCH
from worker.stores.scripts import load


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
        clock: Clock | None = None,
    ) -> None:
        self._redis = client
        self._keys = Keys(prefix)
        self.cooldown = cooldown
        self.cooldown_max = cooldown_max
        self.max_pause = max_pause
        self.clock: Clock = clock or RedisClock()

    def trip(self, account: Account, reason: str, detail: str, probing: bool) -> float:
        """Open the account's circuit (or, after a failed probe, keep it open with a doubled
        cooldown). Returns the seconds until its next probe."""
        k = self._keys
        wait = load("circuit_trip").run(
            self._redis,
            keys={
                "circuit": k.circuit(account.key),
                "probe": k.circuit_probe(account.key),
                "paused": k.paused,
                "accounts": k.accounts,
                "due": k.due,
            },
            args={
                "now": self.clock.arg(),
                "account": account.key,
                "reason": reason,
                "detail": detail,
                "cooldown": self.cooldown,
                "cooldown_max": self.cooldown_max,
                "probing": int(probing),
            },
        )
        return float(wait)

    def resume(self, account: Account) -> int:
        """The account answers again: close its circuit and put every parked job back at the
        front of its wait list. Returns how many were released."""
        k = self._keys
        released = load("resume").run(
            self._redis,
            keys={
                "circuit": k.circuit(account.key),
                "probe": k.circuit_probe(account.key),
                "paused": k.paused,
                "accounts": k.accounts,
                "due": k.due,
                "unknown": k.unknown,
                "parked": k.parked(account.key),
                "parked_since": k.parked_since,
            },
            args={
                "now": self.clock.arg(),
                "account": account.key,
                "wait_prefix": k.wait_prefix,
                "wake": k.wake,
            },
        )
        return int(released)

    def release_probe(self, account: str) -> None:
        """The probe could not tell (a transient failure, or its run made no call: a duplicate,
        a job that cannot run): the next parked job probes, now. ``account``: "provider:id"."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(self._keys.circuit_probe(account))
        pipe.zadd(self._keys.due, {account: 0}, lt=True)
        pipe.execute()

    def paused_accounts(self) -> list[str]:
        """Accounts whose circuit is open."""
        return [str(key) for key in self._redis.zrange(self._keys.paused, 0, -1)]

    def state(self, account: Account) -> CircuitState:
        return self.states([account])[0]

    def states(self, accounts: Sequence[Account]) -> list[CircuitState]:
        """Each account's circuit, in order, in a round trip per READ_BATCH accounts."""
        replies: list[object] = []
        k = self._keys
        for start in range(0, len(accounts), READ_BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for account in accounts[start : start + READ_BATCH]:
                pipe.hgetall(k.circuit(account.key))
                pipe.llen(k.parked(account.key))
                pipe.exists(k.circuit_probe(account.key))
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
