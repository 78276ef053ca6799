"""``chat-archiver sweep``: sweep one account or all of them now, or show what a sweep would do."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from config import UserError
from worker.beat import SWEEP_TASK
from worker.celery_app import app
from worker.cli.common import cell, console, fail, one_line_errors, say
from worker.services import get_accounts


def run_sweep(provider: str, account: str, dry_run: bool, list_chats: bool) -> dict[str, Any]:
    """Run the sweep task here, in this process (Celery's eager ``apply``), by its name."""
    app.loader.import_default_modules()
    task = app.tasks[SWEEP_TASK]
    kwargs = {
        "provider": provider,
        "account": account,
        "dry_run": dry_run,
        "list_chats": list_chats,
    }
    try:
        return task.apply(kwargs=kwargs, throw=True).get()
    except UserError as error:  # unknown account, no sweep policy: not a bug of ours
        raise fail(str(error)) from None  # one printable line (exit 1)


@click.command()
@click.option("--provider", type=click.Choice(["green-api", "wassenger"]))
@click.option(
    "--account",
    help="The account's id; with --provider. Omit both for every account whose sweep is enabled.",
)
@click.option("--dry-run", is_flag=True, help="Find the chats, enqueue nothing.")
@click.option("--list", "list_chats", is_flag=True, help="Print the selected chats too.")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def sweep(
    provider: str | None, account: str | None, dry_run: bool, list_chats: bool, as_json: bool
) -> None:
    """Sweep inactive chats now. Exits 1 when a sweep failed or was skipped."""
    if (provider is None) != (account is None):
        raise click.UsageError("give --provider and --account together, or neither")
    if provider and account:
        targets = [(provider, account)]
    else:
        targets = [(a.provider, a.id) for a in get_accounts() if a.sweep and a.sweep.enabled]
        if not targets:
            raise click.ClickException("no account in the accounts file has a sweep enabled")
    summaries = [run_sweep(p, a, dry_run, list_chats) for p, a in targets]
    if as_json:
        click.echo(json.dumps(summaries, indent=2))
    else:
        _print(summaries, dry_run, list_chats)
    if any(summary["status"] != "done" for summary in summaries):
        raise SystemExit(1)


def _print(summaries: list[dict[str, Any]], dry_run: bool, list_chats: bool) -> None:
    title = "sweep (dry run: nothing enqueued)" if dry_run else "sweep"
    table = Table(
        "account",
        "status",
        "listed",
        "selected",
        "enqueued",
        "already pending",
        "refused",
        "left alone",
        "listing calls",
        "seconds",
        title=title,
    )
    # Values come from the provider and the accounts file (an error text may hold "[/]"): Text
    # cells and plain lines, never rich markup.
    for s in summaries:
        skipped = ", ".join(f"{why} {n}" for why, n in sorted(s["skipped"].items())) or "-"
        calls = ", ".join(f"{method} {n}" for method, n in sorted(s["calls"].items())) or "-"
        status = s["status"] + (f": {s['error']}" if s.get("error") else "")
        table.add_row(
            cell(s["account"]),
            cell(status),
            str(s["listed"]),
            str(s["selected"]),
            "-" if dry_run else str(s["enqueued"]),
            "-" if dry_run else str(s["duplicates"]),
            "-" if dry_run else str(s["refused"]),
            cell(skipped),
            cell(calls),
            f"{s['seconds']:.1f}",
        )
    console.print(table)
    if list_chats:
        for s in summaries:
            for chat in s.get("chats") or ():
                say(f"{s['account']} {chat}")
