"""``chat-archiver enqueue``: one job from options, or many from a CSV/JSONL file or stdin."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from worker.cli.common import console, err_console, one_line_errors
from worker.jobs import InvalidJob
from worker.producer import enqueue_archive, enqueue_many


def read_rows(stream: IO[str], fmt: str) -> Iterator[tuple[int, dict[str, Any] | InvalidJob]]:
    """(line number, job or the reason it cannot be read). Blank lines are skipped."""
    if fmt == "csv":
        reader = csv.DictReader(stream)
        for row in reader:
            # Missing trailing cells are None, extra ones land under the None key.
            if None in row:
                yield reader.line_num, InvalidJob("more cells than the header names")
                continue
            yield (
                reader.line_num,
                {key: value for key, value in row.items() if value not in (None, "")},
            )
        return
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as error:
            yield number, InvalidJob(f"not a JSON object ({error.msg})")
            continue
        yield number, data if isinstance(data, dict) else InvalidJob("not a JSON object")


def _format_of(path: str, given: str | None) -> str:
    if given:
        return given
    return "csv" if path.lower().endswith(".csv") else "jsonl"


@click.command()
@click.option("--provider", type=click.Choice(["green-api", "wassenger"]))
@click.option("--account", help="GREEN-API idInstance or Wassenger device id.")
@click.option("--chat-id", help="The chat to archive, e.g. 79001234567@c.us.")
@click.option("--request-id", help="Your id for this job, kept in results and dead letters.")
@click.option("--source", default="cli", show_default=True)
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Many jobs: a .csv (header provider,account,chat_id[,request_id,source]) or a .jsonl "
    "file; '-' reads stdin.",
)
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), help="Override the format.")
@one_line_errors
def enqueue(
    provider: str | None,
    account: str | None,
    chat_id: str | None,
    request_id: str | None,
    source: str,
    path: str | None,
    fmt: str | None,
) -> None:
    """Enqueue archive jobs. Invalid jobs are refused with their line number; nothing is dropped
    silently. Exits 1 when any job was refused."""
    if path is None:
        missing = [
            name
            for name, value in (
                ("--provider", provider),
                ("--account", account),
                ("--chat-id", chat_id),
            )
            if not value
        ]
        if missing:
            raise click.UsageError(f"{', '.join(missing)} missing (or give --file)")
        assert provider and account and chat_id
        task_id = enqueue_archive(provider, account, chat_id, request_id=request_id, source=source)
        console.print(task_id)
        return
    if provider or account or chat_id:
        raise click.UsageError("give --file or --provider/--account/--chat-id, not both")
    fmt = _format_of(path, fmt)
    if path == "-":
        stream: IO[str] = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")
        total = None
    else:
        file = Path(path)
        with file.open(encoding="utf-8") as counting:
            total = sum(1 for line in counting if line.strip()) - (1 if fmt == "csv" else 0)
        stream = file.open(encoding="utf-8", newline="")
    lines: list[int] = []

    def rows() -> Iterator[dict[str, Any] | InvalidJob]:
        for number, row in read_rows(stream, fmt):
            lines.append(number)
            if isinstance(row, dict):
                row.setdefault("source", source)
            yield row

    progress = Progress(
        TextColumn("enqueueing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    with stream, progress:
        bar = progress.add_task("jobs", total=total)
        result = enqueue_many(rows(), on_progress=lambda done: progress.update(bar, completed=done))
    for position, why in result.refused:
        console.print(f"line {lines[position - 1]}: {why}")
    console.print(f"enqueued {len(result.enqueued)}, refused {len(result.refused)}")
    if result.refused:
        raise SystemExit(1)
