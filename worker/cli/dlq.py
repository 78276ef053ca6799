"""``chat-archiver dlq``: list, show, replay and purge dead letters.

Ids: every command takes any unique prefix of an entry's id, at least ``MIN_PREFIX`` characters;
``list`` prints the shortest prefix that is unique in the whole store (at least
``SHORT_ID``), or the full id with ``--wide``, and never cuts one short whatever the width of the
terminal. Filters are checked before anything is read: an unknown reason or an account that is
not ``provider:id`` is an error (exit 2), not an empty list.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import click
from rich.cells import cell_len
from rich.table import Column, Table

from config import PROVIDERS
from worker.cli.common import (
    VALUE_LIMIT,
    OneLineGroup,
    UsageProblem,
    cell,
    console,
    fail,
    one_line_errors,
    printable,
    say,
    when,
)
from worker.contract.outcomes import Reason
from worker.producer import enqueue_job
from worker.services import get_services
from worker.stores.deadletters import CorruptEntry, DeadLetter, DeadLetterStore

MIN_PREFIX = 6  # what a person may type
SHORT_ID = 8  # what `list` prints at least (more when that is not unique)
REASONS = tuple(reason.value for reason in Reason)


def _check_reason(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and value not in REASONS:
        raise UsageProblem(f"--reason {value!r}: not a dead-letter reason ({', '.join(REASONS)})")
    return value


def _check_account(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    provider, sep, account_id = value.partition(":")
    providers = ", ".join(sorted(PROVIDERS))
    if not sep:
        raise UsageProblem(
            f"--account {value!r}: give provider:id, e.g. green-api:7105187566 ({providers})"
        )
    spec = PROVIDERS.get(provider)
    if spec is None:
        raise UsageProblem(f"--account {value!r}: unknown provider {provider!r} ({providers})")
    try:
        # The spelling every stored entry uses (hex device ids in lower case, no whitespace),
        # as the producer and `status --account` take it.
        return f"{provider}:{spec.normalise_account_id(account_id)}"
    except ValueError as error:
        raise UsageProblem(f"--account {value!r}: {error}") from None


_reason = click.option(
    "--reason",
    callback=_check_reason,
    help="Only entries with this reason (e.g. chat_not_found).",
)
_account = click.option(
    "--account",
    callback=_check_account,
    help="Only entries of this account, as provider:id (e.g. green-api:7105187566).",
)


def resolve(store: DeadLetterStore, given: str) -> str:
    """The one entry id that starts with ``given``."""
    if len(given) < MIN_PREFIX:
        raise UsageProblem(f"ID {given!r}: give at least {MIN_PREFIX} characters of the id")
    count, ids = store.find(given, limit=2)
    if given in ids:  # a full id, even if a longer id started with it
        return given
    if count == 0:
        raise fail(f"no dead letter {given!r}")
    if count > 1:
        raise UsageProblem(f"ID {given!r} matches {count} dead letters: give more characters")
    return ids[0]


def _report_corrupt(entry: CorruptEntry) -> None:
    say(
        f"corrupt entry {entry.id} skipped ({entry.error}): `dlq show {entry.id}` prints it as "
        f"stored, `dlq purge {entry.id}` deletes it",
        err=True,
    )


@click.group(cls=OneLineGroup)
def dlq() -> None:
    """Dead letters: jobs that can never succeed as they are, kept until you act."""


@dlq.command("list")
@_reason
@_account
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@click.option("--wide", is_flag=True, help="Full ids instead of the shortest unique prefix.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@one_line_errors
def list_(
    reason: str | None, account: str | None, limit: int | None, wide: bool, as_json: bool
) -> None:
    """List dead letters, newest first."""
    store = get_services().dead_letters
    corrupt: list[CorruptEntry] = []
    entries = list(
        store.iter(reason=reason, account=account, limit=limit, on_corrupt=corrupt.append)
    )
    for entry in corrupt:
        _report_corrupt(entry)
    if as_json:
        click.echo(json.dumps([asdict(entry) for entry in entries], indent=2))
        return
    if entries:
        length = 0 if wide else store.unique_prefix_length((e.id for e in entries), SHORT_ID)
        _print_entries(entries, length)
    say(f"{len(entries)} dead letter{'s' if len(entries) != 1 else ''}")


def _print_entries(entries: list[DeadLetter], length: int) -> None:
    """A table when it fits the terminal (or the 80 columns of a pipe), else one line per
    entry: either way no value is cut, folded or ellipsized (people copy ids, accounts and
    chats, and grep a pipe line by line)."""
    rows = [
        (
            entry.id[: length or None],
            entry.reason,
            entry.account,
            entry.job.get("chat_id"),
            entry.http_status,
            entry.attempts,
            when(entry.last_attempt_at),
            entry.detail,
        )
        for entry in entries
    ]
    names = ("id", "reason", "account", "chat", "HTTP", "attempts", "last attempt", "detail")
    cells = [
        [cell(value, limit=None if n == 0 else VALUE_LIMIT) for n, value in enumerate(row)]
        for row in rows
    ]
    widths = [
        max(cell_len(name), *(line[n].cell_len for line in cells)) for n, name in enumerate(names)
    ]
    # No box (a copied row holds no border characters) and no outer padding: the 8 columns are
    # separated by 2 spaces of padding.
    if sum(widths) + 2 * (len(names) - 1) <= console.width:
        columns = [Column(n, no_wrap=True, min_width=w) for n, w in zip(names, widths, strict=True)]
        table = Table(*columns, box=None, pad_edge=False, header_style="bold")
        for line in cells:
            table.add_row(*line)
        console.print(table)
        return
    for short_id, reason, account, chat, status, attempts, last, detail in rows:
        say(
            f"{short_id}  {reason}  {account}  {printable(chat)}  HTTP {status or '-'}  "
            f"attempts {attempts}  last {last}  {printable(detail)}"
        )


@dlq.command()
@click.argument("entry_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True)
@one_line_errors
def show(entry_id: str, as_json: bool) -> None:
    """Show one dead letter in full. ID: the id or any unique prefix of it (6+ characters)."""
    store = get_services().dead_letters
    full_id = resolve(store, entry_id)
    found = store.read(full_id)
    if found is None:  # purged between the two reads
        raise fail(f"no dead letter {entry_id!r}")
    if isinstance(found, CorruptEntry):
        if as_json:
            click.echo(json.dumps({"id": found.id, "corrupt": found.error, "stored": found.stored}))
        else:
            say(f"corrupt entry {found.id}: {found.error}")
            say(f"stored: {found.stored}", limit=None)
            say(f"`dlq purge {found.id}` deletes it")
        raise SystemExit(1)
    fields = asdict(found)
    if fields["trace_id"] is None:  # recorded only while tracing is on (README: Tracing)
        del fields["trace_id"]
    if as_json:
        click.echo(json.dumps(fields, indent=2))
        return
    # One "field  value" line each, never a box: a long value wraps on the terminal and copies
    # whole.
    for key, value in {"id": found.id, **fields}.items():
        if key in ("first_attempt_at", "last_attempt_at", "created_at"):
            value = when(value)
        elif key == "job":
            value = json.dumps(value, ensure_ascii=False)
        say(f"{key:<17} {'-' if value in (None, '') else value}")


@dataclass
class Selection:
    entries: list[DeadLetter] = field(default_factory=list)
    corrupt: list[CorruptEntry] = field(default_factory=list)


def _select(
    store: DeadLetterStore,
    ids: tuple[str, ...],
    reason: str | None,
    account: str | None,
    everything: bool,
) -> Selection:
    """What the arguments name. Every id is resolved before anything is done, so a typo in the
    third id leaves the first two alone."""
    if ids and (reason or account or everything):
        raise UsageProblem("give entry ids, or --reason/--account/--all, not both")
    selection = Selection()
    if ids:
        for full_id in dict.fromkeys(resolve(store, given) for given in ids):
            found = store.read(full_id)
            if isinstance(found, DeadLetter):
                selection.entries.append(found)
            elif isinstance(found, CorruptEntry):
                selection.corrupt.append(found)
        return selection
    if not (reason or account or everything):
        raise UsageProblem("say which entries: ids, --reason, --account or --all")

    def on_corrupt(entry: CorruptEntry) -> None:
        if everything:
            selection.corrupt.append(entry)
        else:  # its reason and account cannot be read: never guess that it matches
            _report_corrupt(entry)

    selection.entries = list(store.iter(reason=reason, account=account, on_corrupt=on_corrupt))
    return selection


@dlq.command()
@click.argument("ids", nargs=-1, metavar="[ID]...")
@_reason
@_account
@click.option("--all", "everything", is_flag=True, help="Every dead letter.")
@one_line_errors
def replay(ids: tuple[str, ...], reason: str | None, account: str | None, everything: bool) -> None:
    """Enqueue the jobs of dead letters again. An entry leaves the store only once its job is
    enqueued; a job that is still invalid stays, and is reported (exit 1)."""
    store = get_services().dead_letters
    selection = _select(store, ids, reason, account, everything)
    report = store.replay(selection.entries, enqueue_job)
    for entry_id, task_id in report.enqueued:
        say(f"replayed {entry_id} as job {task_id}")
    for entry_id, why in report.refused:
        say(f"kept {entry_id}: {why}")
    for corrupt in selection.corrupt:
        say(f"kept {corrupt.id}: corrupt entry, nothing to replay ({corrupt.error})")
    kept = len(report.refused) + len(selection.corrupt)
    say(f"replayed {len(report.enqueued)}, kept {kept}")
    if kept:
        raise SystemExit(1)


@dlq.command()
@click.argument("ids", nargs=-1, metavar="[ID]...")
@_reason
@_account
@click.option("--all", "everything", is_flag=True, help="Every dead letter (corrupt ones too).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@one_line_errors
def purge(
    ids: tuple[str, ...], reason: str | None, account: str | None, everything: bool, yes: bool
) -> None:
    """Delete dead letters for good."""
    store = get_services().dead_letters
    selection = _select(store, ids, reason, account, everything)
    selected = [entry.id for entry in selection.entries] + [c.id for c in selection.corrupt]
    if not selected:
        say("nothing to purge")
        return
    if not yes:
        click.confirm(f"Delete {len(selected)} dead letter(s) for good?", abort=True)
    removed = store.remove(selected)
    say(f"purged {removed}")
