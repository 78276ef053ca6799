"""What an operator needs at a glance: queues, workers, the job store, dead letters, accounts, and
what is wrong. Short and fast at any number of accounts: per-account figures are summaries (the
busiest accounts, the paused ones, the unknown ones), and ``account=`` gives one account in full.

``collect_status`` returns plain data (``chat-archiver status --json`` prints it as is); each
finding that needs a person goes into ``attention``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from celery import Celery

from config import Account, AccountRegistry
from worker.dispatch.router import intake_lists
from worker.services import Services
from worker.stores.keys import KOMBU_UNACKED, ready_queue

# How many of the busiest accounts the summary lists.
TOP = 10


def collect_status(
    services: Services,
    accounts: AccountRegistry,
    app: Celery,
    max_dead_letters: int = 0,
    ping_timeout: float = 1.0,
    account: Account | None = None,
) -> dict[str, Any]:
    settings = services.settings
    attention: list[str] = []

    broker = services.broker.pipeline(transaction=False)
    for name in intake_lists(settings.queue):
        broker.llen(name)
    broker.llen(ready_queue(settings.queue))
    broker.hlen(KOMBU_UNACKED)  # kombu's: delivered to a worker, not yet acknowledged
    *intake, ready, unacked = broker.execute()
    queues = {
        "intake": sum(int(n) for n in intake),
        "ready": int(ready),
        "unacked": int(unacked),
    }

    replies = app.control.ping(timeout=ping_timeout) or []
    workers = sorted(node for reply in replies for node in reply)
    if not workers:
        attention.append("no worker answers")

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
        paused.append(asdict(state))
        attention.append(
            f"{key} paused ({state.reason}): {state.parked} jobs waiting, "
            f"next probe in {state.probe_in or 0:.0f}s"
        )

    dead = services.dead_letters.counts()
    by_reason: Counter[str] = Counter()
    by_account: Counter[str] = Counter()
    for (reason, account_key), count in dead.items():
        by_reason[reason] += count
        by_account[account_key] += count
    total_dead = sum(dead.values())
    if total_dead > max_dead_letters:
        attention.append(f"{total_dead} dead letters (chat-archiver dlq list)")

    report: dict[str, Any] = {
        "healthy": not attention,
        "attention": attention,
        "workers": workers,
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
    }
    if account is not None:
        report["account"] = account_detail(services, account)
    return report


def account_detail(services: Services, account: Account) -> dict[str, Any]:
    limiter = services.limiter.state(account, account.spec.archive_method)
    circuit = services.circuit.state(account)
    recent = Counter(
        item["outcome"] + (f":{item['reason']}" if item.get("reason") else "")
        for item in services.metrics.recent(account.provider, account.id)
    )
    return {
        "account": account.key,
        "name": account.name,
        "waiting": services.jobs.waiting([account.key])[account.key],
        "limiter": asdict(limiter),
        "circuit": asdict(circuit),
        "recent_outcomes": dict(recent),
    }
