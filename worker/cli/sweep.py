"""``chat-archiver sweep``: sweep one account or all of them now, show what a sweep would do,
confirm a held run (``--confirm RUN_ID``), or list recent runs (``sweep runs``)."""

from __future__ import annotations

import json
from typing import Any

import click

from config import UserError
from worker.beat import SWEEP_TASK
from worker.celery_app import app
from worker.cli.common import (
    OneLineCommand,
    OneLineGroup,
    UsageProblem,
    cell,
    console,
    fail,
    one_line_errors,
    say,
    when,
)
from worker.services import get_accounts, get_services
from worker.stores.sweep_runs import SweepRuns
from worker.views.tables import Col, print_table


def run_sweep(**kwargs: Any) -> dict[str, Any]:
    """Run the sweep task here, in this process (Celery's eager ``apply``), by its name."""
    app.loader.import_default_modules()
    task = app.tasks[SWEEP_TASK]
    try:
        return task.apply(kwargs=kwargs, throw=True).get()
    except UserError as error:  # unknown account, no sweep policy: not a bug of ours
        raise fail(str(error)) from None  # one printable line (exit 1)


def sweep_runs() -> SweepRuns:
    services = get_services()
    return SweepRuns(services.redis, services.keys, services.settings.sweep_run_retention)


@click.group(cls=OneLineGroup, invoke_without_command=True)
@click.option("--provider", type=click.Choice(["green-api", "wassenger"]))
@click.option(
    "--account",
    help="The account's id; with --provider. Omit both for every account whose sweep is enabled.",
)
@click.option("--dry-run", is_flag=True, help="Find the chats, enqueue nothing.")
@click.option("--list", "list_chats", is_flag=True, help="Print the selected chats too.")
@click.option(
    "--confirm",
    "confirm",
    metavar="RUN_ID",
    help="Enqueue a held run's chats (those still inactive): an operator lifts its bound.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@one_line_errors
def sweep(
    ctx: click.Context,
    provider: str | None,
    account: str | None,
    dry_run: bool,
    list_chats: bool,
    confirm: str | None,
    as_json: bool,
) -> None:
    """Sweep inactive chats now, or confirm a held run (--confirm RUN_ID); `sweep runs` lists
    recent runs. Exits 1 when a sweep failed, was skipped or is held."""
    if ctx.invoked_subcommand is not None:
        return
    if confirm is not None:
        if provider or account or dry_run or list_chats:
            raise UsageProblem("--confirm: give it alone (the run names its account)")
        summaries = [run_sweep(confirm=confirm)]
    else:
        if (provider is None) != (account is None):
            raise UsageProblem("--provider, --account: give them together, or neither")
        if provider and account:
            targets = [(provider, account)]
        else:
            targets = [(a.provider, a.id) for a in get_accounts() if a.sweep and a.sweep.enabled]
            if not targets:
                raise click.ClickException("no account in the accounts file has a sweep enabled")
        summaries = [
            run_sweep(provider=p, account=a, dry_run=dry_run, list_chats=list_chats)
            for p, a in targets
        ]
    if as_json:
        click.echo(json.dumps(summaries, indent=2))
    else:
        _print(summaries, dry_run, list_chats)
    if any(summary["status"] not in ("completed", "dry_run") for summary in summaries):
        raise SystemExit(1)


def _print(summaries: list[dict[str, Any]], dry_run: bool, list_chats: bool) -> None:
    title = "sweep (dry run: nothing enqueued)" if dry_run else "sweep"
    columns: list[Col | str] = [
        "run",
        "account",
        "status",
        "listed",
        "selected",
        "enqueued",
        "already pending",
        "refused",
        Col("left alone", prose=True),
        Col("listing calls", prose=True),
        "seconds",
    ]
    # Values come from the provider and the accounts file (a reason may hold "[/]"): Text
    # cells and plain lines, never rich markup.
    rows = []
    for s in summaries:
        skipped = ", ".join(f"{why} {n}" for why, n in sorted(s["skipped"].items())) or "-"
        calls = ", ".join(f"{method} {n}" for method, n in sorted(s["calls"].items())) or "-"
        rows.append(
            [
                cell(s["run"]),
                cell(f"{s['provider']}:{s['account']}"),
                cell(s["status"]),
                str(s["listed"]),
                str(s["selected"]),
                "-" if s["dry_run"] else str(s["enqueued"]),
                "-" if s["dry_run"] else str(s["duplicates"]),
                "-" if s["dry_run"] else str(s["refused"]),
                cell(skipped),
                cell(calls),
                f"{s['seconds']:.1f}",
            ]
        )
    print_table(console, columns, rows, title=title)
    for s in summaries:
        line = _why(s)
        if line:
            say(f"{s['provider']}:{s['account']} {line}")
    if list_chats:
        for s in summaries:
            for chat in s.get("chats") or ():
                say(f"{s['provider']}:{s['account']} {chat}")


def _why(s: dict[str, Any]) -> str | None:
    """One line saying why a run archived nothing, or what a confirmation did."""
    if s["status"] == "held":
        return (
            f"held: {s['reason']}; nothing enqueued. Look at the chats "
            f"(--dry-run --list), then: chat-archiver sweep --confirm {s['run']}"
        )
    if s["status"] in ("skipped", "failed"):
        return f"{s['status']}: {s['reason']}"
    if s["status"] == "dry_run" and s.get("would_be"):
        return f"a real sweep would be {s['would_be']}, archiving nothing: {s['reason']}"
    if s.get("confirmed_at"):
        return (
            f"run {s['run']} confirmed: {s['enqueued']} enqueued, {s['dropped']} held chats no "
            "longer inactive (left alone)"
        )
    return None


@sweep.command("runs", cls=OneLineCommand)
@click.option("--provider", type=click.Choice(["green-api", "wassenger"]))
@click.option("--account", help="The account's id; with --provider.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def runs(provider: str | None, account: str | None, limit: int, as_json: bool) -> None:
    """Recent sweep runs, newest first (kept ARCHIVER_SWEEP_RUN_RETENTION, 30 days)."""
    if (provider is None) != (account is None):
        raise UsageProblem("--provider, --account: give them together, or neither")
    key = None
    if provider and account:
        found = get_accounts(secrets=False).find(provider, account)
        key = found.key if found is not None else f"{provider}:{account}"
    store = sweep_runs()
    records = store.runs(key, limit)
    for record in records:
        record["archived"] = store.count(record["run"], "archived")
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    print_runs(records)


def print_runs(records: list[dict[str, Any]]) -> None:
    columns: list[Col | str] = [
        "run",
        "account",
        "started",
        "status",
        "listed",
        "selected",
        "enqueued",
        "archived",
        "held",
        Col("why", prose=True),
    ]
    rows = [
        [
            cell(r["run"]),
            cell(f"{r['provider']}:{r['account']}"),
            when(r.get("started_at")),
            cell(r["status"] + (" (dry run)" if r.get("dry_run") and r.get("would_be") else "")),
            str(r.get("listed", 0)),
            str(r.get("selected", 0)),
            "-" if r.get("dry_run") else str(r.get("enqueued", 0)),
            "-" if r.get("dry_run") else str(r["archived"]),
            str(r.get("held", 0)) if r["status"] == "held" else "-",
            cell(r.get("reason"), limit=120),
        ]
        for r in records
    ]
    print_table(console, columns, rows)
