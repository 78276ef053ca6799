"""What a run of an archive job learns before it may call, in one Redis step (lua/admit.lua):
its lease on the job, how many runs of it began and never ended, the chat's pending mark, the
account's circuit, and its permit. Each check is made only if the ones before it let the run go
on: a run that will not call takes no permit and no probe claim."""

from __future__ import annotations

from dataclasses import dataclass

from config import Account
from worker.services import Services
from worker.stores.circuit import Decision
from worker.stores.jobs import Lease
from worker.stores.limiter import MICROS, RECENT_WINDOW, Permit
from worker.stores.pending import Claim
from worker.stores.scripts import load

# How long the record of runs that never ended is kept: far longer than any job waits.
DELIVERIES_TTL = 7 * 86400


@dataclass(frozen=True)
class Admission:
    lease: Lease
    deliveries: int
    claim: Claim
    decision: Decision
    permit: Permit


def admit(
    services: Services, account: Account, method: str, chat_id: str, task_id: str, run: str
) -> Admission:
    settings, keys, limiter = services.settings, services.keys, services.limiter
    chat_key = keys.pending(account.key, chat_id)
    tat, stats, recent = limiter.acquire_keys(account, method)
    interval = limiter.interval(account.rate(method))
    status, deliveries, claimed, decision, granted, wait, slot = load("admit").run(
        services.redis,
        keys={
            "jobs": keys.jobs,
            "active": keys.active,
            "runs": keys.runs,
            "permits": keys.permits,
            "deliveries": keys.deliveries(task_id),
            "chat": chat_key,
            "circuit": keys.circuit(account.key),
            "probe": keys.circuit_probe(account.key),
            "tat": tat,
            "stats": stats,
            "recent": recent,
        },
        args={
            "now": services.jobs.clock.arg(),
            "id": task_id,
            "run": run,
            "lease_us": int(settings.lease_timeout * MICROS),
            "deliveries_ttl": DELIVERIES_TTL,
            "claim_ttl": settings.pending_ttl,
            "probe_ttl_ms": int(services.circuit.probe_claim_ttl * 1000),
            "interval_us": int(interval * MICROS),
            "max_wait_us": int(settings.limiter_max_wait * MICROS),
            "window_us": int(RECENT_WINDOW * MICROS),
            "max_deliveries": settings.max_deliveries,
        },
    )
    return Admission(
        lease=Lease(status),
        deliveries=int(deliveries),
        claim=Claim(chat_key, task_id, task_id if claimed == 1 else str(claimed)),
        decision=Decision(decision),
        # A negative wait: the reserved slot has passed by that much (the run is late).
        permit=Permit(
            granted=bool(int(granted)),
            wait=max(0.0, int(wait) / MICROS),
            late=max(0.0, -int(wait) / MICROS),
            slot=int(slot),
        ),
    )
