"""What one run of an archive job writes to Redis: one script to be admitted, one when it ends.

Each module owns its Lua as a function (worker/pending.py's claim and release, worker/circuit.py's
check, worker/limiter.py's acquire, worker/metrics.py's records); the two scripts here only
compose them, so a run costs two round trips besides the permits of its retries instead of about
eight, and no logic is written twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
from redis.commands.core import Script

from config import Account, Settings
from worker.circuit import CHECK_LUA, Decision
from worker.deadletters import DeadLetter
from worker.limiter import ACQUIRE_LUA, AccountLimiter, Permit
from worker.metrics import RECORD_LATENCY_LUA, RECORD_OUTCOME_LUA
from worker.outcomes import Reason
from worker.pending import CLAIM_LUA, RELEASE_LUA, Claim, PendingJobs
from worker.services import Services
from worker.state import queue_script

_ADMIT = "\n".join(
    [
        CLAIM_LUA,
        CHECK_LUA,
        ACQUIRE_LUA,
        """
-- KEYS: deliveries, chat mark, circuit (2), limiter (3). ARGV: deliveries ttl, claim (2),
-- circuit (1), limiter (3), delivery cap.
local deliveries = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
-- A job that will not call (past its delivery cap, a duplicate, parked) takes neither the
-- probe claim nor a permit; what it gets back in their place is never read.
if deliveries > tonumber(ARGV[8]) then return {deliveries, 1, 'call', 0, '0'} end
local claimed = claim(KEYS[2], ARGV[2], ARGV[3])
if claimed ~= 1 then return {deliveries, claimed, 'call', 0, '0'} end
local decision = circuit_check(KEYS[3], KEYS[4], ARGV[4])
if decision == 'park' then return {deliveries, claimed, decision, 0, '0'} end
local permit = acquire(KEYS[5], KEYS[6], KEYS[7], ARGV[5], ARGV[6], ARGV[7])
return {deliveries, claimed, decision, permit[1], permit[2]}
""",
    ]
)

_CLOSE = "\n".join(
    [
        RELEASE_LUA,
        RECORD_OUTCOME_LUA,
        RECORD_LATENCY_LUA,
        """
-- KEYS: deliveries, chat mark ('' for a malformed job), outcomes, recent outcomes, latency.
-- ARGV: task id, '1' when the job has ended, outcome (3), latencies n, then n x (bucket, sum,
-- seconds).
redis.call('DEL', KEYS[1])
if ARGV[2] == '1' then
  release(KEYS[2], ARGV[1])
  record_outcome(KEYS[3], KEYS[4], ARGV[3], ARGV[4], ARGV[5])
end
for i = 0, tonumber(ARGV[6]) - 1 do
  record_latency(KEYS[5], ARGV[7 + 3 * i], ARGV[8 + 3 * i], ARGV[9 + 3 * i])
end
return 1
""",
    ]
)


@dataclass(frozen=True)
class _Scripts:
    admit: Script
    close: Script


@lru_cache(maxsize=8)
def _scripts(client: redis.Redis) -> _Scripts:
    return _Scripts(client.register_script(_ADMIT), client.register_script(_CLOSE))


def deliveries_key(settings: Settings, task_id: str) -> str:
    """How many deliveries of this job began and did not end (a job that kills its worker)."""
    return f"{settings.key_prefix}:deliveries:{task_id}"


@dataclass(frozen=True)
class Admission:
    deliveries: int
    claim: Claim
    decision: Decision
    permit: Permit


def admit(
    services: Services, account: Account, method: str, chat_id: str, task_id: str, max_wait: float
) -> Admission:
    """Everything a job needs to know before it may call, in one script: how often it was
    delivered, whether another job holds its chat, the account's circuit, and a permit for its
    first attempt. Each check is made only if the ones before it let the job go on: a job
    that will not call takes no permit and no probe claim."""
    settings = services.settings
    key = services.pending.key(account.provider, account.id, chat_id)
    keys = [
        deliveries_key(settings, task_id),
        key,
        *services.circuit.check_keys(account),
        *services.limiter.acquire_keys(account, method),
    ]
    args = [
        settings.visibility_timeout * (settings.max_deliveries + 1),
        *services.pending.claim_args(task_id),
        *services.circuit.check_args(),
        *services.limiter.acquire_args(account, method, max_wait),
        settings.max_deliveries,
    ]
    deliveries, claimed, decision, *permit = _scripts(services.redis).admit(keys=keys, args=args)
    return Admission(
        deliveries=int(deliveries),
        claim=PendingJobs.claim_result(key, task_id, claimed),
        decision=Decision(decision),
        permit=AccountLimiter.permit(permit),
    )


def close(
    services: Services,
    job: Mapping[str, Any],
    task_id: str,
    latencies: Sequence[float],
    *,
    outcome: str | None = None,
    reason: str | None = None,
    entry: DeadLetter | None = None,
) -> None:
    """A run is over (finished, rescheduled or parked): forget its delivery count, record its
    provider calls, and, when the job itself has ended (``outcome``), its outcome, its dead
    letter and the release of its chat (a no-op unless this job holds the chat)."""
    parts = [job.get(name) for name in ("provider", "account", "chat_id")]
    # A malformed job may lack them: empty labels, not "None".
    provider, account, chat = (part if isinstance(part, str) else "" for part in parts)
    valid = all(isinstance(part, str) for part in parts)
    metrics = services.metrics
    keys = [
        deliveries_key(services.settings, task_id),
        services.pending.key(provider, account, chat) if valid else "",
        *metrics.outcome_keys(provider, account),
        metrics.latency_key,
    ]
    args: list[Any] = [task_id, "1" if outcome is not None else "0"]
    args += metrics.outcome_args(provider, account, str(outcome), reason, chat or None)
    args.append(len(latencies))
    for seconds in latencies:
        args += metrics.latency_args(provider, account, seconds)
    if entry is None:
        _scripts(services.redis).close(keys=keys, args=args)
        return
    # A dead letter's three keys change together with the rest: one MULTI.
    pipe = services.redis.pipeline(transaction=True)
    services.dead_letters.queue_add(pipe, entry)
    if entry.reason == Reason.NO_MESSAGES and valid:
        # Sweeps leave this chat alone for a while (worker/unarchivable.py).
        services.unarchivable.queue_add(pipe, provider, account, chat)
    queue_script(pipe, _scripts(services.redis).close, keys, args)
    pipe.execute()
