"""``chat-archiver enqueue``: one job from options, or many from a CSV, TSV or JSONL file or stdin.

A file is read twice. The first pass decodes and parses all of it and publishes nothing: what
makes the file as a whole unreadable (it cannot be opened, bytes that are not in its encoding, a
quote never closed, a field past csv's size limit, a header naming unknown columns) is one line
naming where, exit code 2, and nothing is enqueued. The second pass publishes batch by batch.
Each row then ends in exactly one of: enqueued, already pending (a job for the chat is waiting or
running: its id is printed), refused (the reason is printed with the row's line number). The
summary adds them up to the rows read; refused rows make the exit code 1.

Should Redis refuse writes (full, a read-only replica, MISCONF) or drop the connection, the rows
not enqueued are sent again, the uncertain ones under their task ids, for ``--retry-for``
seconds (worker/cli/resend.py); if Redis still refuses, the rest of the file is read and not
sent, and one ``Error:`` line after the summary says how many rows were enqueued, not published
and uncertain, and what running the command again does. Exit code 1.

Encodings: UTF-8, with or without the byte-order mark Excel's "CSV UTF-8" writes; UTF-16 and
UTF-32 with a byte-order mark. Formats: by the file's extension (.csv, .tsv/.tab,
.jsonl/.ndjson/.json), else by its content (a first line starting with ``{`` is JSONL; otherwise
the header's most frequent separator among tab, comma and semicolon); ``--format`` overrides.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import shutil
import sys
import tempfile
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Any

import click
import kombu.exceptions
import redis
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from worker.cli.common import (
    OneLineCommand,
    UsageProblem,
    err_console,
    fail,
    one_line_errors,
    printable,
    say,
)
from worker.cli.resend import RETRY_FOR, enqueue_resending, failure_line, refusal_now
from worker.contract.jobs import InvalidJob
from worker.contract.tasks import ARCHIVE_TASK
from worker.producer import (
    BATCH_SIZE,
    BulkResult,
    PublishFailed,
    default_producer,
    parse_row,
)
from worker.services import get_services

FORMATS = ("csv", "tsv", "jsonl")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
# task_id: the id to publish the row under (to send again a row whose publish was uncertain).
COLUMNS = ("provider", "account", "chat_id", "request_id", "source", "task_id")
REQUIRED = ("provider", "account", "chat_id")
_COLUMNS_HINT = "provider, account, chat_id[, request_id, source, task_id]"
# Longest before a row, or a JSON line, is given up on: a job's fields are a few dozen characters.
FIELD_LIMIT = csv.field_size_limit()
# UTF-32 first: its little-endian mark starts with UTF-16's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_ENCODING_NAMES = {
    "utf-8": "UTF-8",
    "utf-16-le": "UTF-16 (little-endian)",
    "utf-16-be": "UTF-16 (big-endian)",
    "utf-32-le": "UTF-32 (little-endian)",
    "utf-32-be": "UTF-32 (big-endian)",
}
_CHUNK = 1 << 16
MESSAGE_LIMIT = 500  # characters of a refused value shown in its line


class Unreadable(Exception):
    """The file as a whole cannot be read: one line, and nothing is enqueued."""


@dataclass(frozen=True)
class Source:
    """A seekable binary copy of the input and how to read it."""

    name: str
    raw: IO[bytes]
    encoding: str
    start: int  # bytes of byte-order mark to skip
    fmt: str
    delimiter: str


@dataclass
class Row:
    line: int  # where the row starts
    job: dict[str, Any] | InvalidJob


# --- opening and decoding ---------------------------------------------------------------------


@contextmanager
def _opened(path: str) -> Iterator[tuple[str, IO[bytes]]]:
    if path == "-":
        # Spooled to a temporary file: stdin is read twice, and memory stays flat.
        with tempfile.TemporaryFile(prefix="chat-archiver-enqueue-") as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool)
            spool.seek(0)
            yield "stdin", spool
        return
    try:
        raw = Path(path).open("rb")  # noqa: SIM115 - closed below, after both passes
    except OSError as error:
        why = "no such file" if isinstance(error, FileNotFoundError) else error.strerror
        raise UsageProblem(f"--file {path!r}: {why}") from None
    with raw:
        yield repr(path), raw


def _encoding_of(head: bytes) -> tuple[str, int]:
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding, len(bom)
    # UTF-16 without a mark: an ASCII header puts a NUL in every other byte. Decoded as UTF-8
    # it would be NULs between letters, and every row refused for a reason hard to see.
    sample = head[:64]
    for parity in (0, 1):
        half = sample[parity::2]
        if len(half) >= 4 and half.count(0) >= len(half) // 2:
            raise Unreadable(
                f"byte {sample.index(0)} is NUL: this looks like UTF-16 without a byte-order "
                "mark; save the file as UTF-8"
            )
    return "utf-8", 0


def _undecodable_at(raw: IO[bytes], encoding: str, start: int) -> tuple[int, str, bytes]:
    """(byte offset in the file, why, the bytes) of the first bytes that are not ``encoding``.
    Run only once a decode has failed: the text reader does not say where."""
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    raw.seek(start)
    fed = start
    final = False
    while not final:
        chunk = raw.read(_CHUNK)
        final = not chunk
        pending = len(decoder.getstate()[0])
        try:
            decoder.decode(chunk, final=final)
        except UnicodeDecodeError as error:
            offset = fed - pending + error.start
            return offset, error.reason, error.object[error.start : error.end]
        fed += len(chunk)
    raise AssertionError("the input decoded after all")  # pragma: no cover


def _lines(source: Source) -> Iterator[str]:
    """The decoded text, line by line, endings kept (csv wants them: newline='')."""
    source.raw.seek(source.start)
    text = io.TextIOWrapper(source.raw, encoding=source.encoding, errors="strict", newline="")
    try:
        # Not `yield from text`: closing this generator early would close the file with it.
        for line in text:  # noqa: UP028
            yield line
    except UnicodeDecodeError:
        offset, why, bad = _undecodable_at(source.raw, source.encoding, source.start)
        name = _ENCODING_NAMES[source.encoding]
        raise Unreadable(
            f"byte {offset} (0x{bad.hex()}) is not {name} ({why}); save the file as UTF-8"
        ) from None
    finally:
        # Detached, the wrapper leaves the file open for the next pass. A generator abandoned
        # when a row raised is only finalized later, maybe after the file was closed: nothing
        # left to keep open then.
        with contextlib.suppress(ValueError):
            text.detach()


# --- formats ----------------------------------------------------------------------------------


def _first_line(source: Source) -> str:
    for line in islice(_lines(source), 1000):
        if line.strip():
            return line
    return ""


def _format_of(path: str, given: str | None, first: str) -> tuple[str, str]:
    """(format, delimiter): ``--format``, else the extension, else the content."""
    fmt = given
    if fmt is None and path != "-":
        fmt = _EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        fmt = "jsonl" if first.lstrip().startswith("{") else "delimited"
    if fmt == "jsonl":
        return "jsonl", ""
    if fmt == "tsv":
        return "tsv", "\t"
    # The header's separator: Excel writes ';' where ',' is the decimal mark.
    candidates = ("\t", ",", ";") if fmt == "delimited" else (",", ";")
    delimiter = max(candidates, key=first.count) if any(d in first for d in candidates) else ","
    return ("tsv" if delimiter == "\t" else "csv"), delimiter


def _encodable(job: dict[str, Any]) -> InvalidJob | None:
    """A lone surrogate (JSON's "\\ud800") is no character: refused here, before it reaches a
    message, a log line or a terminal."""
    for key, value in job.items():
        for text in (key, value):
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    return InvalidJob(f"{key!r}: not valid Unicode (a lone surrogate)")
    return None


def _jsonl_rows(lines: Iterator[str]) -> Iterator[Row]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if len(line) > FIELD_LIMIT:
            yield Row(number, InvalidJob(f"longer than {FIELD_LIMIT} characters"))
            continue
        try:
            data = json.loads(line)
        except ValueError as error:
            yield Row(number, InvalidJob(f"not a JSON object ({getattr(error, 'msg', error)})"))
            continue
        except RecursionError:
            yield Row(number, InvalidJob("not a JSON object (nested too deeply)"))
            continue
        if not isinstance(data, dict):
            yield Row(number, InvalidJob(f"not a JSON object (a JSON {type(data).__name__})"))
            continue
        yield Row(number, _encodable(data) or data)


def _csv_error(error: csv.Error, start: int, end: int) -> Unreadable:
    message = str(error)
    if "field larger than field limit" in message:
        return Unreadable(
            f"line {start}: a field is longer than {FIELD_LIMIT} characters "
            "(a quote opened there and never closed?)"
        )
    if "unexpected end of data" in message:
        return Unreadable(f"line {start}: a quoted field opened here is never closed")
    return Unreadable(f"line {end}: not valid CSV ({message})")


def _header(names: list[str], line: int) -> list[str]:
    header = [name.strip() for name in names]
    for position, name in enumerate(header, start=1):
        if not name:
            raise Unreadable(f"line {line}: column {position} of the header has no name")
        if name not in COLUMNS:
            raise Unreadable(f"line {line}: unknown column {name!r} (columns: {_COLUMNS_HINT})")
        if header.count(name) > 1:
            raise Unreadable(f"line {line}: column {name!r} appears twice")
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise Unreadable(f"line {line}: no {missing[0]!r} column (columns: {_COLUMNS_HINT})")
    return header


def _delimited_rows(lines: Iterator[str], delimiter: str) -> Iterator[Row]:
    # strict: a quote never closed is an error at the end, not a field that swallows every row
    # after it.
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise _csv_error(error, start, reader.line_num) from None
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue  # a blank line
        if header is None:
            header = _header(cells, start)
            continue
        extra = cells[len(header) :]
        if any(cell.strip() for cell in extra):
            yield Row(start, InvalidJob("more cells than the header names"))
            continue
        job = {name: value for name, value in zip(header, cells, strict=False) if value != ""}
        yield Row(start, _encodable(job) or job)


def read_rows(source: Source) -> Iterator[Row]:
    lines = _lines(source)
    if source.fmt == "jsonl":
        return _jsonl_rows(lines)
    return _delimited_rows(lines, source.delimiter)


# --- enqueueing -------------------------------------------------------------------------------


@dataclass
class Tally:
    rows: int = 0
    lines: array[int] = field(default_factory=lambda: array("q"))  # row position -> line
    enqueued: int = 0
    pending: list[tuple[int, str]] = field(default_factory=list)  # (row position, its job id)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (row position, why)
    # Once Redis refused writes for good: rows known not sent, and those that may have been.
    not_published: int = 0
    uncertain: list[tuple[int, str]] = field(default_factory=list)  # (row position, task id)

    def add(self, offset: int, result: BulkResult) -> None:
        self.enqueued += len(result.enqueued)
        self.pending += [(offset + position, task_id) for position, task_id in result.duplicates]
        self.refused += [(offset + position, why) for position, why in result.refused]
        self.not_published += len(result.not_published)
        self.uncertain += [(offset + u.position, u.task_id or "?") for u in result.uncertain]

    def report(self) -> None:
        notes = [(p, f"already pending as job {task_id}") for p, task_id in self.pending]
        notes += [(p, printable(why, MESSAGE_LIMIT)) for p, why in self.refused]
        notes += [(p, f"uncertain: may be queued as job {t}") for p, t in self.uncertain]
        for position, note in sorted(notes):
            say(f"line {self.lines[position - 1]}: {note}")

    def summary(self) -> str:
        return (
            f"read {self.rows} row{'s' if self.rows != 1 else ''}: enqueued {self.enqueued}, "
            f"already pending {len(self.pending)}, refused {len(self.refused)}"
        )

    def place_unsent(self, rows: Iterator[Row], default_source: str) -> None:
        """The rest of the file once publishing gave up: read and checked, never sent."""
        for row in rows:
            self.lines.append(row.line)
            self.rows += 1
            try:
                if isinstance(row.job, dict):
                    row.job.setdefault("source", default_source)
                parse_row(row.job)
            except InvalidJob as error:
                self.refused.append((self.rows, str(error)))
            else:
                self.not_published += 1


def _refused_line(failed: PublishFailed, counts: tuple[int, int, int], rerun: str) -> str:
    services = get_services()
    refusal = refusal_now([services.redis, services.broker], failed.reason)
    return failure_line(failed, counts, refusal, rerun)


def _enqueue_one(job: dict[str, Any], retry_for: float, task: str) -> str:
    """The job's task id, or the id of the job already pending for its chat."""
    try:
        result = enqueue_resending(default_producer(), [job], retry_for, task=task)
    except PublishFailed as failed:
        [unsent] = failed.result.not_published or failed.result.uncertain
        rerun = "then run the same command again"
        if failed.result.uncertain and unsent.task_id is not None:
            rerun += (
                f" with --task-id {unsent.task_id} (it may have been stored: under that id it "
                "is stored once either way)"
            )
        counts = (0, len(failed.result.not_published), len(failed.result.uncertain))
        raise fail(_refused_line(failed, counts, rerun)) from None
    if result.refused:
        raise fail(result.refused[0][1])
    [(_, task_id)] = result.enqueued or result.duplicates
    return task_id


def _file_rerun(uncertain: int) -> str:
    rerun = (
        "then run the same command again: it enqueues each row whose chat has no job pending "
        "(those not published, and any whose job has ended by then) and reports the others "
        "'already pending'"
    )
    if uncertain:
        rerun += (
            f"; the {uncertain} uncertain rows, listed above with their job ids, may have been "
            "stored: sent again with those ids in a task_id column, each is stored once under "
            "its id, even if its job has ended by then (while its result is kept)"
        )
    return rerun


def _enqueue_file(
    rows: Iterator[Row], total: int, default_source: str, retry_for: float, task: str
) -> Tally:
    tally = Tally()
    producer = default_producer()
    progress = Progress(
        TextColumn("enqueueing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        # A bar is for a person watching: in a pipe or a log it is only noise.
        disable=not err_console.is_terminal,
    )
    with progress:
        bar = progress.add_task("jobs", total=total)
        try:
            while batch := list(islice(rows, BATCH_SIZE)):
                jobs: list[dict[str, Any] | InvalidJob] = []
                for row in batch:
                    tally.lines.append(row.line)
                    if isinstance(row.job, dict):
                        row.job.setdefault("source", default_source)
                    jobs.append(row.job)
                try:
                    result = enqueue_resending(producer, jobs, retry_for, task=task)
                except PublishFailed as failed:
                    progress.stop()
                    tally.add(tally.rows, failed.result)
                    tally.rows += len(batch)
                    tally.place_unsent(rows, default_source)
                    tally.report()
                    say(tally.summary())
                    counts = (tally.enqueued, tally.not_published, len(tally.uncertain))
                    rerun = _file_rerun(len(tally.uncertain))
                    raise fail(_refused_line(failed, counts, rerun)) from None
                tally.add(tally.rows, result)
                tally.rows += len(batch)
                progress.update(bar, completed=tally.rows)
        except (redis.RedisError, kombu.exceptions.OperationalError, OSError, Unreadable) as error:
            progress.stop()
            if not tally.rows:  # nothing was published: the usual one line
                if isinstance(error, Unreadable):  # the file changed since the first pass
                    raise UsageProblem(f"--file: {error}") from None
                raise
            # Earlier batches are published: say exactly what was, then what went wrong.
            tally.report()
            say(tally.summary())
            unsent = list(tally.lines[tally.rows :])  # the batch that failed, if it was read
            if unsent:
                where = f"at line {unsent[0]} ({error}): rows from there on were not enqueued"
                where += f" (some of lines {unsent[0]}-{unsent[-1]} may have been)"
            else:
                where = f"after {tally.rows} rows ({error}): the rest was not enqueued"
            raise fail(f"stopped {where}") from None
    return tally


def _check_format(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and value not in FORMATS:
        raise UsageProblem(f"--format {value!r}: not one of {', '.join(FORMATS)}")
    return value


def job_options(action: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The options ``enqueue`` and ``unarchive`` share: one job, or a file of them."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        for option in reversed(
            [
                click.option("--provider", help="green-api or wassenger."),
                click.option("--account", help="GREEN-API idInstance or Wassenger device id."),
                click.option("--chat-id", help=f"The chat to {action}, e.g. 79001234567@c.us."),
                click.option(
                    "--request-id", help="Your id for this job, kept in results and dead letters."
                ),
                click.option("--source", default="cli", show_default=True),
                click.option(
                    "--file",
                    "path",
                    help="Many jobs: a .csv or .tsv file (header provider,account,chat_id"
                    "[,request_id,source,task_id]) or a .jsonl file (one JSON object per line); "
                    "'-' reads stdin.",
                ),
                click.option(
                    "--task-id",
                    help="Store the job under this id: to send again a job whose enqueue was "
                    "uncertain.",
                ),
                click.option(
                    "--retry-for",
                    default=RETRY_FOR,
                    show_default=True,
                    type=click.FloatRange(min=0),
                    help="Seconds to keep sending again the jobs not enqueued while Redis "
                    "refuses writes.",
                ),
                click.option(
                    "--format",
                    "fmt",
                    callback=_check_format,
                    help="csv, tsv or jsonl, instead of what the extension or the content says.",
                ),
            ]
        ):
            command = option(command)
        return command

    return decorate


def run_jobs(
    task: str,
    provider: str | None,
    account: str | None,
    chat_id: str | None,
    request_id: str | None,
    source: str,
    path: str | None,
    fmt: str | None,
    task_id: str | None,
    retry_for: float,
    rows: Iterator[Row] | None = None,
    total: int = 0,
) -> None:
    """One job from the options, a file of them, or ``rows`` already read (``total`` of
    them): what ``enqueue`` and ``unarchive`` do."""
    one = provider or account or chat_id or request_id or task_id
    if rows is not None:
        if one or path:
            raise UsageProblem("give the jobs one way: options, --file or --sweep")
    elif path is None:
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
            raise UsageProblem(f"{', '.join(missing)} missing (or give --file)")
        assert provider and account and chat_id
        job = {
            "provider": provider,
            "account": account,
            "chat_id": chat_id,
            "request_id": request_id,
            "source": source,
            "task_id": task_id,
        }
        say(_enqueue_one(job, retry_for, task))
        return
    elif one:
        raise UsageProblem("give --file or --provider/--account/--chat-id, not both")
    if rows is not None:
        tally = _enqueue_file(rows, total, source, retry_for, task)
    else:
        assert path is not None
        with _opened(path) as (name, raw):
            try:
                encoding, start = _encoding_of(raw.read(4096))
                first = _first_line(Source(name, raw, encoding, start, "jsonl", ""))
                file_format, delimiter = _format_of(path, fmt, first)
                readable = Source(name, raw, encoding, start, file_format, delimiter)
                total = sum(1 for _ in read_rows(readable))  # the first pass: nothing published
            except Unreadable as error:
                raise UsageProblem(f"--file {name}: {error}") from None
            tally = _enqueue_file(read_rows(readable), total, source, retry_for, task)
    tally.report()
    say(tally.summary())
    if tally.refused:
        raise SystemExit(1)


@click.command(cls=OneLineCommand)
@job_options("archive")
@one_line_errors
def enqueue(**options: Any) -> None:
    """Enqueue archive jobs. Every row of a file is reported: enqueued, already pending (with
    the pending job's id) or refused (with its line number and why). Exits 1 when any row was
    refused or Redis refused writes for longer than --retry-for, 2 when the file cannot be read
    (then nothing is enqueued)."""
    run_jobs(ARCHIVE_TASK, **options)
