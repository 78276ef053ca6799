"""``chat-archiver dlq``: list, show, replay and purge dead letters."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict

import click
from rich.table import Table

from worker.cli.common import console, one_line_errors, when
from worker.deadletters import DeadLetter, DeadLetterStore
from worker.producer import enqueue_job
from worker.services import get_services

_reason = click.option("--reason", help="Only entries with this reason (e.g. chat_not_found).")
_account = click.option("--account", help="Only entries of this account, as provider:id.")


@click.group()
def dlq() -> None:
    """Dead letters: jobs that can never succeed as they are, kept until you act."""


@dlq.command("list")
@_reason
@_account
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@one_line_errors
def list_(reason: str | None, account: str | None, limit: int | None, as_json: bool) -> None:
    """List dead letters, newest first."""
    entries = get_services().dead_letters.iter(reason=reason, account=account, limit=limit)
    if as_json:
        click.echo(json.dumps([asdict(entry) for entry in entries], indent=2))
        return
    table = Table("id", "reason", "account", "chat", "HTTP", "attempts", "last attempt", "detail")
    count = 0
    for entry in entries:
        count += 1
        table.add_row(
            entry.id,
            entry.reason,
            entry.account,
            str(entry.job.get("chat_id", "-")),
            str(entry.http_status or "-"),
            str(entry.attempts),
            when(entry.last_attempt_at),
            entry.detail,
        )
    if count:
        console.print(table)
    console.print(f"{count} dead letter{'s' if count != 1 else ''}")


@dlq.command()
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def show(entry_id: str, as_json: bool) -> None:
    """Show one dead letter in full."""
    entry = get_services().dead_letters.get(entry_id)
    if entry is None:
        raise click.ClickException(f"no dead letter {entry_id!r}")
    if as_json:
        click.echo(json.dumps(asdict(entry), indent=2))
        return
    table = Table(show_header=False)
    for key, value in asdict(entry).items():
        if key in ("first_attempt_at", "last_attempt_at", "created_at"):
            value = when(value)
        elif key == "job":
            value = json.dumps(value)
        table.add_row(key, "-" if value in (None, "") else str(value))
    console.print(table)


def _select(
    store: DeadLetterStore,
    ids: tuple[str, ...],
    reason: str | None,
    account: str | None,
    everything: bool,
) -> Iterable[DeadLetter]:
    if ids and (reason or account or everything):
        raise click.UsageError("give entry ids, or --reason/--account/--all, not both")
    if ids:
        entries = []
        for entry_id in ids:
            entry = store.get(entry_id)
            if entry is None:
                raise click.ClickException(f"no dead letter {entry_id!r}")
            entries.append(entry)
        return entries
    if not (reason or account or everything):
        raise click.UsageError("say which entries: ids, --reason, --account or --all")
    return store.iter(reason=reason, account=account)


@dlq.command()
@click.argument("ids", nargs=-1)
@_reason
@_account
@click.option("--all", "everything", is_flag=True, help="Every dead letter.")
@one_line_errors
def replay(ids: tuple[str, ...], reason: str | None, account: str | None, everything: bool) -> None:
    """Enqueue the jobs of dead letters again. An entry leaves the store only once its job is
    enqueued; a job that is still invalid stays, and is reported."""
    store = get_services().dead_letters
    report = store.replay(_select(store, ids, reason, account, everything), enqueue_job)
    for entry_id, task_id in report.enqueued:
        console.print(f"replayed {entry_id} as job {task_id}")
    for entry_id, why in report.refused:
        console.print(f"[red]kept {entry_id}[/red]: {why}")
    console.print(f"replayed {len(report.enqueued)}, kept {len(report.refused)}")
    if report.refused:
        raise SystemExit(1)


@dlq.command()
@click.argument("ids", nargs=-1)
@_reason
@_account
@click.option("--all", "everything", is_flag=True, help="Every dead letter.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@one_line_errors
def purge(
    ids: tuple[str, ...], reason: str | None, account: str | None, everything: bool, yes: bool
) -> None:
    """Delete dead letters for good."""
    store = get_services().dead_letters
    selected = [entry.id for entry in _select(store, ids, reason, account, everything)]
    if not selected:
        console.print("nothing to purge")
        return
    if not yes:
        click.confirm(f"Delete {len(selected)} dead letter(s) for good?", abort=True)
    removed = store.remove(selected)
    console.print(f"purged {removed}")
