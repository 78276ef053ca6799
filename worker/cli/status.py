"""``chat-archiver status``: queues, workers, dead letters and accounts; exits 1 when something
needs attention (for cron or a health check), 2 when the status itself cannot be read."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import kombu.exceptions
import redis
from rich.table import Table

from config import ConfigError
from worker.celery_app import app
from worker.cli.common import OneLineCommand, UsageProblem, cell, console, say
from worker.services import get_accounts, get_services
from worker.views.status import collect_status


@click.command(cls=OneLineCommand)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option(
    "--max-dead-letters",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="More dead letters than this needs attention.",
)
@click.option("--account", "account_key", help="One account in full, as provider:id.")
def status(as_json: bool, max_dead_letters: int, account_key: str | None) -> None:
    """How chat-archiver is doing, and whether anything needs a person."""
    try:
        accounts = get_accounts()
        account = None
        if account_key is not None:
            provider, _, account_id = account_key.partition(":")
            account = accounts.find(provider, account_id)
            if account is None:
                raise UsageProblem(
                    f"--account: no account {account_key!r} in the accounts file "
                    "(write it as provider:id)"
                )
        report = collect_status(get_services(), accounts, app, max_dead_letters, account=account)
    except (ConfigError, redis.RedisError, kombu.exceptions.OperationalError, OSError) as error:
        # Not "needs attention" (1): a health check must tell "unwell" from "cannot tell".
        problems = error.problems if isinstance(error, ConfigError) else (str(error),)
        for problem in problems:
            say(f"Error: cannot read the status: {problem}", err=True, limit=1000)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print(report)
    sys.exit(0 if report["healthy"] else 1)


def _print(report: dict[str, Any]) -> None:
    # Values come from Redis, the broker and the accounts file (an account's name may hold "[/]"):
    # plain text and Text cells only, never rich markup.
    say(f"workers answering: {', '.join(report['workers']) or 'none'}")
    queues, jobs = report["queues"], report["jobs"]
    say(
        f"intake queue {queues['intake']}, ready queue {queues['ready']}, "
        f"delivered and not yet acknowledged {queues['unacked']}"
    )
    say(
        f"jobs: {jobs['stored']} stored, {jobs['waiting']} waiting for their account's turn, "
        f"{jobs['delayed']} delayed, {jobs['running_or_dispatched']} running or dispatched"
    )
    summary = report["accounts"]
    say(
        f"accounts: {summary['configured']} configured, "
        f"{summary['with_jobs_waiting']} with jobs waiting, {len(summary['paused'])} paused, "
        f"{len(summary['unknown'])} unknown"
    )
    if summary["busiest"]:
        say(
            "busiest: "
            + ", ".join(f"{row['account']} {row['waiting']}" for row in summary["busiest"])
        )
    dead = report["dead_letters"]
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(dead["by_reason"].items()))
    say(f"dead letters: {dead['total']}" + (f" ({reasons})" if reasons else ""))
    if "account" in report:
        _print_account(report["account"])
    if report["attention"]:
        say("needs attention:")
        for line in report["attention"]:
            say(f"  - {line}")
    else:
        say("all well")


def _print_account(row: dict[str, Any]) -> None:
    limiter, circuit = row["limiter"], row["circuit"]
    table = Table(
        "account", "waiting", "limit/s", "recent/s", "429s", "circuit", "parked", "last outcomes"
    )
    state = circuit["state"]
    if state != "closed":
        state = f"open: {circuit['reason']}, probe in {circuit['probe_in'] or 0:.0f}s"
    recent = ", ".join(f"{k} {v}" for k, v in sorted(row["recent_outcomes"].items())) or "-"
    cells = [
        row["account"] + (f" ({row['name']})" if row.get("name") else ""),
        str(row["waiting"]),
        f"{limiter['allowed_per_second']:g}",
        f"{limiter['recent_per_second']:.1f}",
        str(limiter["rate_limited"]),
        state,
        str(circuit["parked"]),
        recent,
    ]
    table.add_row(*(cell(value) for value in cells))
    console.print(table)
