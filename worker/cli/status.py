"""``chat-archiver status``: queues, workers, dead letters and accounts, and a health check.

Exit codes: 0 healthy (what needs a person is listed all the same); 1 unhealthy, one reason a line:
Redis unreachable or refusing writes, no worker alive, every account paused, or a threshold given
as an option passed; 2 a usage or configuration error. It only reads from Redis
(worker/views/status.py) and reads no provider token: it calls no provider.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import kombu.exceptions
import redis

from config import ConfigError, get_settings
from worker.cli.common import OneLineCommand, UsageProblem, cell, console, say
from worker.services import get_accounts, get_services
from worker.stores.client import safe_url
from worker.views.status import Thresholds, collect_status, refusal_report
from worker.views.tables import Col, print_table
from worker.write_refusals import megabytes


@click.command(cls=OneLineCommand)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option(
    "--max-dead-letters",
    type=click.IntRange(min=0),
    help="More dead letters than this is unhealthy (default: listed, never unhealthy).",
)
@click.option(
    "--max-paused",
    type=click.IntRange(min=0),
    help="More paused accounts than this is unhealthy (default: only every account paused).",
)
@click.option(
    "--strict", is_flag=True, help="Everything that needs a person is unhealthy (for cron)."
)
@click.option("--account", "account_key", help="One account in full, as provider:id.")
def status(
    as_json: bool,
    max_dead_letters: int | None,
    max_paused: int | None,
    strict: bool,
    account_key: str | None,
) -> None:
    """How chat-archiver is doing: exit 0 healthy, 1 unhealthy (with the reasons), 2 a usage or
    configuration error."""
    thresholds = Thresholds(max_dead_letters, max_paused, strict)
    try:
        accounts = get_accounts(secrets=False)
        account = None
        if account_key is not None:
            provider, _, account_id = account_key.partition(":")
            account = accounts.find(provider, account_id)
            if account is None:
                raise UsageProblem(
                    f"--account: no account {account_key!r} in the accounts file "
                    "(write it as provider:id)"
                )
        report = collect_status(get_services(), accounts, thresholds, account=account)
    except ConfigError as error:
        raise UsageProblem(
            *(f"cannot read the status: {line}" for line in error.problems)
        ) from None
    except (redis.RedisError, kombu.exceptions.OperationalError, OSError) as error:
        refused = refusal_report(get_settings())
        report = refused if refused is not None else _unreachable(error)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif "queues" not in report:
        if "redis" in report:
            _print_redis(report["redis"])
        _print_attention(report)
    else:
        _print(report)
    sys.exit(0 if report["healthy"] else 1)


def _unreachable(error: BaseException) -> dict[str, Any]:
    """Redis or the broker does not answer: unhealthy, and all that can be said."""
    settings = get_settings()
    state, broker = safe_url(settings.state_url), safe_url(settings.broker_url)
    if isinstance(error, kombu.exceptions.OperationalError):
        where = f"the broker at {broker}"
    elif state == broker:
        where = f"Redis at {state}"
    else:
        where = f"Redis at {state} or the broker at {broker}"
    line = f"cannot read the status from {where}: {' '.join(str(error).split())}"
    return {"healthy": False, "unhealthy": [line], "attention": [line]}


def _print(report: dict[str, Any]) -> None:
    # Values come from Redis, the broker and the accounts file (an account's name may hold "[/]"):
    # plain text and Text cells only, never rich markup.
    say(f"workers answering: {', '.join(report['workers']) or 'none'}")
    _print_redis(report["redis"])
    queues, jobs = report["queues"], report["jobs"]
    say(f"intake queue {queues['intake']}, ready queues {queues['ready']}")
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
    sweeps = report["sweeps"]
    say(
        f"sweeps: {len(sweeps['held'])} held for an operator, "
        f"{len(sweeps['refused_or_failed'])} accounts whose last sweep was refused or failed"
    )
    if "account" in report:
        _print_account(report["account"])
    _print_attention(report)


def _print_redis(redis_report: dict[str, dict[str, Any]]) -> None:
    for name, state in redis_report.items():
        where = "redis" if len(redis_report) == 1 else f"{name} redis"
        used = f"used {megabytes(state['used_memory'])}"
        if state["maxmemory"]:
            used += f" of maxmemory {megabytes(state['maxmemory'])}"
        writes = "takes writes"
        if not state["accepts_writes"]:
            writes = f"refuses writes ({state['refusal']})"
        say(f"{where}: {writes}, {used}, policy {state['maxmemory_policy']}")


def _print_attention(report: dict[str, Any]) -> None:
    """The reasons it is unhealthy, then what else needs a person (each line once)."""
    unhealthy = report["unhealthy"]
    notes = [line for line in report["attention"] if line not in unhealthy]
    for title, lines in (("unhealthy:", unhealthy), ("needs attention:", notes)):
        if lines:
            say(title)
            for line in lines:
                say(f"  - {line}")
    if not unhealthy and not notes:
        say("all well")


def _print_account(row: dict[str, Any]) -> None:
    limiter, circuit = row["limiter"], row["circuit"]
    columns: list[Col | str] = [
        "account",
        "waiting",
        "limit/s",
        "next permit",
        "429s",
        Col("circuit", prose=True),
        "parked",
        Col("outcomes", prose=True),
    ]
    state = circuit["state"]
    if state != "closed":
        state = f"open: {circuit['reason']}, probe in {circuit['probe_in'] or 0:.0f}s"
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(row["outcomes"].items())) or "-"
    cells = [
        row["account"] + (f" ({row['name']})" if row.get("name") else ""),
        str(row["waiting"]),
        f"{limiter['allowed_per_second']:g}",
        f"{limiter['next_permit_in']:.2f}s",
        str(limiter["rate_limited"]),
        state,
        str(circuit["parked"]),
        outcomes,
    ]
    print_table(console, columns, [[cell(value) for value in cells]])
