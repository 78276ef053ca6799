"""What an operator needs at a glance: queues, workers, the job store, dead letters, accounts, and
what is wrong. Short and fast at any number of accounts: per-account figures are summaries (the
busiest accounts, the paused ones, the unknown ones), and ``account=`` gives one account in full.

``collect_status`` returns plain data (``chat-archiver status --json`` prints it as is); each
finding that needs a person goes into ``attention``, and those that mean the deployment cannot do
its job into ``unhealthy`` too (``Thresholds``): a health check acts on those, a person reads all.

It only reads: it answers while Redis refuses writes (full, a read-only replica, MISCONF), and
says so. So workers are those whose node heartbeat (worker/dispatch/service.py) is recent, not
those answering a Celery ping: a ping declares a reply queue and runs kombu's restore of
unacknowledged messages, writes a full Redis refuses, and the replies are writes too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import redis

from config import Account, AccountRegistry, Settings
from worker.dispatch.router import intake_lists
from worker.services import Services
from worker.stores.keys import ready_queue
from worker.stores.sweep_runs import SweepRuns
from worker.write_refusals import memory, read_refusal

# How many of the busiest accounts the summary lists.
TOP = 10


@dataclass(frozen=True)
class Thresholds:
    """What makes the deployment unhealthy besides what always does: Redis unreachable or
    refusing writes, no worker alive, every configured account paused. A dead letter, a held
    sweep or one paused account among many needs a person, but the service still works."""

    max_dead_letters: int | None = None  # more is unhealthy; None: never
    max_paused: int | None = None  # more paused accounts is unhealthy; None: only all of them
    strict: bool = False  # everything that needs a person is unhealthy (a cron job's mail)


def collect_status(
    services: Services,
    accounts: AccountRegistry,
    thresholds: Thresholds = Thresholds(),
    account: Account | None = None,
) -> dict[str, Any]:
    settings = services.settings
    attention: list[str] = []
    unhealthy: list[str] = []

    redis_report = redis_writes(services)
    refusing = _refusal_attention(redis_report)
    attention += refusing
    unhealthy += refusing

    queues = queue_depths(services)

    workers = live_workers(services)
    if not workers:
        line = (
            "no worker answers"
            if not refusing
            else "no worker heartbeat (a heartbeat is a write: Redis refuses them)"
        )
        attention.append(line)
        unhealthy.append(line)

    store = services.jobs
    counts = store.counts()
    keys = [a.key for a in accounts]
    waiting = store.waiting(keys)
    busiest = sorted((n, key) for key, n in waiting.items() if n)[-TOP:][::-1]
    unknown = store.unknown_accounts()
    unknown_waiting = store.waiting(list(unknown))
    for key in sorted(unknown):
        if unknown_waiting.get(key):
            attention.append(
                f"{unknown_waiting[key]} jobs wait for {key}, which no worker's accounts file "
                "names (added to the file? workers reload it within "
                f"{settings.accounts_reload_interval:g}s)"
            )

    paused = []
    for key in services.circuit.paused_accounts():
        provider, _, account_id = key.partition(":")
        found = accounts.find(provider, account_id)
        if found is None:
            continue
        state = services.circuit.state(found)
        if state.state != "open":
            continue
        # Parked, and arrived since it paused: those wait in its list until the next probe
        # turn parks them. Both wait for the account.
        behind = waiting.get(key, 0)
        paused.append({**asdict(state), "waiting": behind})
        attention.append(
            f"{key} paused ({state.reason}): {state.parked + behind} jobs waiting, "
            f"next probe in {state.probe_in or 0:.0f}s"
        )
    limit = thresholds.max_paused
    if limit is not None and len(paused) > limit:
        line = f"{len(paused)} accounts paused, more than --max-paused {limit}"
    elif len(accounts) and len(paused) == len(accounts):
        line = f"every account is paused ({len(paused)}): nothing can be archived"
    else:
        line = ""
    if line:
        attention.append(line)
        unhealthy.append(line)

    dead = services.dead_letters.counts()
    by_reason: Counter[str] = Counter()
    by_account: Counter[str] = Counter()
    for (reason, account_key), count in dead.items():
        by_reason[reason] += count
        by_account[account_key] += count
    total_dead = sum(dead.values())
    limit = thresholds.max_dead_letters
    if total_dead:
        over = limit is not None and total_dead > limit
        more = f", more than --max-dead-letters {limit}" if over else ""
        attention.append(f"{total_dead} dead letters{more} (chat-archiver dlq list)")
        if over:
            unhealthy.append(attention[-1])

    sweeps = sweep_findings(services, attention)
    if thresholds.strict:
        unhealthy = list(attention)

    report: dict[str, Any] = {
        "healthy": not unhealthy,
        "unhealthy": unhealthy,
        "attention": attention,
        "workers": workers,
        "redis": redis_report,
        "queues": queues,
        "jobs": {
            "stored": counts.jobs,
            "waiting": sum(waiting.values()) + sum(unknown_waiting.values()),
            "delayed": counts.delayed,
            "running_or_dispatched": counts.active,
        },
        "accounts": {
            "configured": len(accounts),
            "with_jobs_waiting": sum(1 for n in waiting.values() if n),
            "busiest": [{"account": key, "waiting": n} for n, key in busiest],
            "paused": paused,
            "unknown": {key: unknown_waiting.get(key, 0) for key in sorted(unknown)},
        },
        "dead_letters": {
            "total": total_dead,
            "by_reason": dict(by_reason),
            "by_account": dict(by_account.most_common(TOP)),
        },
        "sweeps": sweeps,
    }
    if account is not None:
        report["account"] = account_detail(services, account)
    return report


def queue_depths(services: Services) -> dict[str, int]:
    """Messages in the intake queue (raw producers' jobs not yet stored) and in the nodes'
    ready queues (only messages pushed there by hand: dispatched jobs reach a node's consumer in
    memory)."""
    settings = services.settings
    nodes = services.jobs.nodes()
    broker = services.broker.pipeline(transaction=False)
    for name in intake_lists(settings.queue):
        broker.llen(name)
    for node in nodes:
        broker.llen(ready_queue(settings.queue, node))
    depths = [int(n) for n in broker.execute()]
    lists = len(intake_lists(settings.queue))
    return {"intake": sum(depths[:lists]), "ready": sum(depths[lists:])}


def sweep_findings(services: Services, attention: list[str]) -> dict[str, Any]:
    """Held sweep runs (waiting for an operator) and accounts whose last sweep was refused or
    failed, each an attention line (the first TOP of each, then a count)."""
    runs = SweepRuns(services.redis, services.keys, services.settings.sweep_run_retention)
    held = []
    for account, run_id in sorted(runs.held().items()):
        record = runs.record(run_id)
        if record is None:  # expired with its retention: nothing left to confirm
            continue
        held.append(
            {
                "account": account,
                "run": run_id,
                "chats": record.get("held", 0),
                "reason": record.get("reason"),
                "at": record.get("started_at"),
            }
        )
    problems = [{"account": account, **mark} for account, mark in sorted(runs.problems().items())]
    lines = [
        f"sweep run {row['run']} of {row['account']} is held: {row['chats']} chats wait for an "
        f"operator ({row['reason']}): chat-archiver sweep --confirm {row['run']}"
        for row in held
    ] + [
        f"sweep of {row['account']} {row['status']} (run {row['run']}): {row['reason']}"
        for row in problems
    ]
    attention.extend(lines[: 2 * TOP])
    if len(lines) > 2 * TOP:
        more = len(lines) - 2 * TOP
        attention.append(f"{more} more sweep findings (chat-archiver status --json)")
    return {"held": held, "refused_or_failed": problems}


def redis_writes(services: Services) -> dict[str, dict[str, Any]]:
    """Whether the state Redis and the broker's take writes, with their memory, read from INFO
    (one entry, "state", when they are one Redis)."""
    clients = {"state": services.redis}
    if services.broker is not services.redis:
        clients["broker"] = services.broker
    return redis_writes_of(clients)


def redis_writes_of(clients: dict[str, redis.Redis]) -> dict[str, dict[str, Any]]:
    report: dict[str, dict[str, Any]] = {}
    for name, client in clients.items():
        refusal = read_refusal(client)
        report[name] = {
            "accepts_writes": refusal is None,
            "refusal": None if refusal is None else refusal.reason,
            "line": None if refusal is None else refusal.line(),
            "remedy": None if refusal is None else refusal.remedy,
            **memory(client),
        }
    return report


def refusal_report(settings: Settings) -> dict[str, Any] | None:
    """What can still be read when the status cannot, because Redis refuses writes and with
    them the PING our clients' health checks send (MISCONF refuses PING too): whether each
    Redis takes writes, read by plain clients that send no PING. None when both do (then the
    status failed for another reason)."""
    urls = {"state": settings.state_url}
    if settings.broker_url != settings.state_url:
        urls["broker"] = settings.broker_url
    clients = {
        name: redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
        for name, url in urls.items()
    }
    try:
        report = redis_writes_of(clients)
    except redis.RedisError:
        return None
    finally:
        for client in clients.values():
            client.close()
    attention = _refusal_attention(report)
    if not attention:
        return None
    attention.append("the rest of the status cannot be read while Redis refuses writes")
    return {"healthy": False, "unhealthy": attention, "attention": attention, "redis": report}


def _refusal_attention(report: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, entry in report.items():
        if entry["accepts_writes"]:
            continue
        where = "" if len(report) == 1 else f"{name} "
        lines.append(
            f"{where}{entry['line']}: workers take no new job and enqueues fail until then; "
            f"{entry['remedy']}"
        )
    return lines


def live_workers(services: Services) -> list[str]:
    """Worker nodes whose heartbeat is younger than a lease (they renew three times a lease),
    by name: a node's id is its Celery hostname and a suffix of its own."""
    nodes = services.jobs.nodes(within=services.settings.lease_timeout)
    return sorted({node.partition("#")[0] for node in nodes})


def account_detail(services: Services, account: Account) -> dict[str, Any]:
    limiter = services.limiter.state(account, account.spec.archive_method)
    circuit = services.circuit.state(account)
    outcomes = Counter(
        {
            outcome + (f":{reason}" if reason else ""): count
            for (
                provider,
                account_id,
                outcome,
                reason,
            ), count in services.metrics.outcomes().items()
            if (provider, account_id) == (account.provider, account.id)
        }
    )
    return {
        "account": account.key,
        "name": account.name,
        "waiting": services.jobs.waiting([account.key])[account.key],
        "limiter": asdict(limiter),
        "circuit": asdict(circuit),
        "outcomes": dict(outcomes),
        "sweep_runs": [
            {key: run.get(key) for key in ("run", "started_at", "status", "enqueued", "reason")}
            for run in SweepRuns(
                services.redis, services.keys, services.settings.sweep_run_retention
            ).runs(account.key, limit=5)
        ],
    }
