"""``chat-archiver status``: queues, workers, dead letters and accounts; exits 1 when something
needs attention (for cron or a health check), 2 when the status itself cannot be read."""

from __future__ import annotations

import json
import sys

import click
import kombu.exceptions
import redis
from rich.table import Table
from rich.text import Text

from config import ConfigError
from worker.celery_app import app
from worker.cli.common import cell, console, printable, say
from worker.services import get_accounts, get_services
from worker.status import collect_status


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option(
    "--max-dead-letters",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="More dead letters than this needs attention.",
)
def status(as_json: bool, max_dead_letters: int) -> None:
    """How chat-archiver is doing, and whether anything needs a person."""
    try:
        report = collect_status(get_services(), get_accounts(), app, max_dead_letters)
    except (ConfigError, redis.RedisError, kombu.exceptions.OperationalError, OSError) as error:
        # Not "needs attention" (1): a health check must tell "unwell" from "cannot tell".
        say(f"Error: cannot read the status: {error}", err=True, limit=1000)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print(report)
    sys.exit(0 if report["healthy"] else 1)


def _print(report: dict) -> None:
    # Values come from Redis, the broker and the accounts file (an account's name may hold "[/]"):
    # plain text and Text cells only, never rich markup.
    workers = ", ".join(report["workers"]) or "none"
    say(f"workers answering: {workers}")
    say(
        "queues: "
        + ", ".join(f"{name} {depth}" for name, depth in report["queues"].items())
        + f"; delivered, not yet acknowledged: {report['unacked']}"
    )
    dead = report["dead_letters"]
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(dead["by_reason"].items()))
    say(f"dead letters: {dead['total']}" + (f" ({reasons})" if reasons else ""))
    table = Table(
        "account", "queue", "limit/s", "recent/s", "429s", "circuit", "parked", "last outcomes"
    )
    for row in report["accounts"]:
        limiter, circuit = row["limiter"], row["circuit"]
        if circuit["state"] == "closed":
            state = cell(circuit["state"])
        else:
            state = Text.assemble(
                (printable(f"open: {circuit['reason']}"), "red"),
                f", probe in {circuit['probe_in'] or 0:.0f}s",
            )
        recent = ", ".join(f"{k} {v}" for k, v in sorted(row["recent_outcomes"].items())) or "-"
        table.add_row(
            cell(row["account"] + (f" ({row['name']})" if row.get("name") else "")),
            cell(row["queue"]),
            f"{limiter['allowed_per_second']:g}",
            f"{limiter['recent_per_second']:.1f}",
            str(limiter["rate_limited"]),
            state,
            str(circuit["parked"]),
            cell(recent),
        )
    console.print(table)
    if report["attention"]:
        console.print(Text("needs attention:", style="red"))
        for line in report["attention"]:
            say(f"  - {line}")
    else:
        say("all well")
