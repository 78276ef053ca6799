"""What an operator needs at a glance: queues, workers, dead letters, accounts, and what is wrong.

``collect_status`` returns plain data (``chat-archiver status --json`` prints it as is); each
finding that needs a person goes into ``attention``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from celery import Celery

from config import AccountRegistry
from worker.routing import account_queue, account_queues
from worker.services import Services


def collect_status(
    services: Services,
    accounts: AccountRegistry,
    app: Celery,
    max_dead_letters: int = 0,
    ping_timeout: float = 1.0,
) -> dict[str, Any]:
    settings = services.settings
    broker = services.broker  # the queues live there, not in the state Redis
    attention: list[str] = []

    known = {settings.queue, *account_queues(settings.queue, accounts)}
    # Every account queue in Redis, known or not: jobs for an account no worker consumes wait
    # forever (the producer's accounts file knows an account the workers' file does not).
    present = {key for key in broker.scan_iter(f"{settings.queue}.*", _type="list")}
    queues = {name: int(broker.llen(name)) for name in sorted(known | present)}
    for name in sorted(present - known):
        if queues[name]:
            attention.append(
                f"queue {name} holds {queues[name]} jobs but no configured account "
                "owns it (is the account missing from the workers' accounts file?)"
            )

    replies = app.control.ping(timeout=ping_timeout) or []
    workers = sorted(node for reply in replies for node in reply)
    if not workers:
        attention.append("no worker answers")

    dead = services.dead_letters.counts()
    by_reason: Counter[str] = Counter()
    by_account: Counter[str] = Counter()
    for (reason, account), count in dead.items():
        by_reason[reason] += count
        by_account[account] += count
    total_dead = sum(dead.values())
    if total_dead > max_dead_letters:
        attention.append(f"{total_dead} dead letters (chat-archiver dlq list)")

    account_rows = []
    for account in accounts:
        limiter = services.limiter.state(account, account.spec.archive_method)
        circuit = services.circuit.state(account)
        recent = Counter(
            item["outcome"] + (f":{item['reason']}" if item.get("reason") else "")
            for item in services.metrics.recent(account.provider, account.id)
        )
        if circuit.state == "open":
            attention.append(
                f"{account.key} paused ({circuit.reason}): {circuit.parked} jobs "
                f"waiting, next probe in {circuit.probe_in or 0:.0f}s"
            )
        account_rows.append(
            {
                "account": account.key,
                "name": account.name,
                "queue": queues.get(account_queue(settings.queue, account.provider, account.id), 0),
                "limiter": asdict(limiter),
                "circuit": asdict(circuit),
                "recent_outcomes": dict(recent),
            }
        )

    return {
        "healthy": not attention,
        "attention": attention,
        "workers": workers,
        "queues": queues,
        "unacked": int(broker.hlen("unacked")),
        "dead_letters": {
            "total": total_dead,
            "by_reason": dict(by_reason),
            "by_account": dict(by_account),
        },
        "accounts": account_rows,
    }
