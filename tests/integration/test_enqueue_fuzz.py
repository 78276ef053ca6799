"""``chat-archiver enqueue --file`` against thousands of generated files: never a traceback, and
the summary always adds up.

Each example renders generated rows as CSV, TSV or JSONL in some encoding (UTF-8 with or without
a byte-order mark, UTF-16, UTF-32, Latin-1), with values that are valid, huge, markup, quotes,
delimiters, newlines, NULs, lone surrogates or nested JSON, then maybe corrupts the bytes (random
bytes spliced in, cut short, a stray quote). The command runs in-process (click's CliRunner: no
interpreter start per example) and publishes through the real producer to a real private Redis:
nothing of the reading, validation, publishing or summary is stood in for.

For every example:
- no exception escapes (a SystemExit is how click exits), exit code 0, 1 or 2;
- exit 2: exactly one line, ``Error: ...``, on stderr, and nothing was published;
- exit 0 or 1: every stdout line but the last is ``line N: ...``, one per row refused or already
  pending; the last is the summary, whose enqueued + already pending + refused = rows read; the
  queues grew by exactly the enqueued count; 1 exactly when a row was refused.
When the file was written cleanly, the rows read are the rows written, and a file is refused
whole (exit 2) exactly when csv's field size limit says it must be.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import GREEN_ID, WASSENGER_ID, Env
from worker.cli import main
from worker.cli.enqueue import FIELD_LIMIT

pytestmark = pytest.mark.integration

# Enough to reach every ending many times over, in well under a minute on a 2-core machine
# (ENQUEUE_FUZZ_EXAMPLES raises it for a longer hunt).
EXAMPLES = int(os.environ.get("ENQUEUE_FUZZ_EXAMPLES", "2000"))
COLUMNS = ("provider", "account", "chat_id", "request_id", "source")
SUMMARY = re.compile(r"read (\d+) rows?: enqueued (\d+), already pending (\d+), refused (\d+)")

# A few valid chats, so that later examples meet chats earlier ones left pending; "1101009999"
# is an account no accounts file names (its jobs go to the intake queue).
ACCOUNTS = [("green-api", GREEN_ID), ("wassenger", WASSENGER_ID), ("green-api", "1101009999")]
CHATS = [f"7900100{n:04d}@c.us" for n in range(40)] + ["120363043968066561@g.us"]
VALID = {
    "provider": ["green-api", "wassenger", " green-api "],
    "account": [account for _, account in ACCOUNTS],
    "chat_id": CHATS,
    "request_id": ["crm-42", "r" * 128, "r" * 129],
    "source": ["fuzz", "crm"],
}
NASTY = [
    "[/]",
    "[red]x[/red]",
    "[bold]",
    ":smile:",
    "\\",
    '"',
    "'",
    ",",
    "\t",
    ";",
    "\n",
    "\r\n",
    "\r",
    "\x00",
    "\u2028",
    "\ufeff",
    "line 9: forged",
    "\u202e",
    "\ud800",  # a lone surrogate
    "Пётр",
    "",
    " ",
]
HUGE = ["9" * (FIELD_LIMIT + 1), "x" * 5000]
MISSING = object()  # the row has no value for the column
# The values of a row that is not all valid, drawn in one go (cheap: thousands of examples must
# fit a minute): valid ones, markup, quotes, separators, newlines, NULs, surrogates, valid values
# with those around them, and none.
POOLS = {
    column: [*valid * 4, *NASTY, *(v + n for v in valid[:2] for n in NASTY), MISSING]
    for column, valid in VALID.items()
}
# Replaced, when a file is written, by a chat id never used before.
FRESH = "<a chat never asked for>"
_fresh = itertools.count(7901000000)
# Nested and non-string JSON values, as data: cheaper to draw than a recursive strategy.
JSON_VALUES = [
    None,
    True,
    0,
    -(2**70),
    1.5,
    float("nan"),
    [],
    [1, "a", None],
    {},
    {"nested": {"deeper": ["green-api"]}},
    [[[[]]]],
    "[/]",
]
# Anything at all, now and then: any characters, lone surrogates included.
any_text = st.text(st.characters(exclude_categories=()), max_size=12)


@dataclass
class Case:
    fmt: str  # csv, tsv, jsonl
    header: list[str]
    rows: list[dict[str, Any]]
    garbage_lines: list[tuple[int, str]]  # JSONL lines that are not objects, and where
    encoding: str
    bom: bool
    newline: str
    how: str  # "extension", "format" (--format), "stdin" (content sniffing)
    corruption: tuple[str, int, bytes] | None


@st.composite
def cases(draw: st.DrawFn) -> Case:
    fmt = draw(st.sampled_from(["csv", "tsv", "jsonl"]))
    required, optional = list(COLUMNS[:3]), list(COLUMNS[3:])
    header = required + draw(st.lists(st.sampled_from(optional), unique=True))
    header = draw(st.permutations(header))
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        row: dict[str, Any] = {}
        if draw(st.booleans()):  # a valid job (in the columns the header has)
            provider, account = draw(st.sampled_from(ACCOUNTS))
            # Mostly a chat never asked for (enqueued), else one of a few (already pending).
            chat = draw(st.sampled_from([FRESH, FRESH, FRESH, *CHATS[:3]]))
            valid = {"provider": provider, "account": account, "chat_id": chat}
            valid |= {"request_id": "crm-42", "source": "fuzz"}
            row = {column: valid[column] for column in header}
        else:
            for column in header:
                value = draw(st.sampled_from(POOLS[column]))
                if value is not MISSING:
                    row[column] = value
        surprise = draw(st.integers(0, 9))
        if surprise == 0:
            row[draw(st.sampled_from(header))] = draw(any_text)
        elif surprise == 1 and fmt == "jsonl":
            # unknown keys (newlines in them too) and nested or non-string values
            row[draw(st.sampled_from(NASTY))] = draw(st.sampled_from(JSON_VALUES))
        elif surprise == 2 and fmt == "jsonl":
            row[draw(st.sampled_from(header))] = draw(st.sampled_from(JSON_VALUES))
        elif surprise == 3 and draw(st.integers(0, 4)) == 0:  # rare: each costs a few ms
            row[draw(st.sampled_from(header))] = draw(st.sampled_from(HUGE))
        rows.append(row)
    garbage: list[tuple[int, str]] = []
    if fmt == "jsonl":
        for _ in range(draw(st.integers(0, 3))):
            line = draw(
                st.sampled_from(["[1, 2]", "not json", '{"a": ', "[" * 3000, "1" * 5000, "null"])
                | st.sampled_from(JSON_VALUES).map(json.dumps)
            )
            garbage.append((draw(st.integers(0, len(rows))), line))
    encoding = draw(st.sampled_from(["utf-8"] * 5 + ["utf-16", "utf-32", "latin-1"]))
    bom = encoding == "utf-8" and draw(st.booleans())
    corruption = None
    if draw(st.integers(0, 7)) == 0:
        corruption = (
            draw(st.sampled_from(["splice", "truncate", "quote"])),
            draw(st.integers(0, 10_000)),
            draw(st.binary(min_size=1, max_size=4)),
        )
    return Case(
        fmt=fmt,
        header=header,
        rows=rows,
        garbage_lines=garbage,
        encoding=encoding,
        bom=bom,
        newline=draw(st.sampled_from(["\n", "\r\n"])),
        how=draw(st.sampled_from(["extension", "format", "stdin"])),
        corruption=corruption,
    )


def render(case: Case) -> tuple[bytes, bool, int]:
    """(the file's bytes, whether it is clean, the rows written)."""
    clean = case.corruption is None
    for row in case.rows:
        if row.get("chat_id") == FRESH:
            row["chat_id"] = f"{next(_fresh)}@c.us"
    if case.fmt == "jsonl":
        lines = [json.dumps(row, ensure_ascii=True) for row in case.rows]
        for position, line in sorted(case.garbage_lines, reverse=True):
            lines.insert(position, line)
        text = "".join(line + case.newline for line in lines)
        # A JSON line holding a newline of its own (not escaped) would be two rows: json.dumps
        # escapes every control character, so the lines are exactly the rows.
        written = len(lines)
        if lines and not lines[0].startswith("{") and case.how == "stdin":
            clean = False  # sniffing reads a first line that is no object as a header
    else:
        buffer = io.StringIO()
        # csv.writer leaves a lone "\r" unquoted when lines end in "\n", and every reader (ours,
        # Excel) then ends the row there: quote every field of such a file.
        carriage = any("\r" in str(value) for row in case.rows for value in row.values())
        writer = csv.writer(
            buffer,
            delimiter="," if case.fmt == "csv" else "\t",
            lineterminator=case.newline,
            quoting=csv.QUOTE_ALL if carriage else csv.QUOTE_MINIMAL,
        )
        writer.writerow(case.header)
        for row in case.rows:
            writer.writerow([row.get(column, "") for column in case.header])
        text = buffer.getvalue()
        written = len(case.rows)
        # A row of empty cells in a one-column file would be a blank line: never here (3+).
    # A lone surrogate, or a character Latin-1 lacks, is written as "?" (one character for one:
    # the rows stay as they were). Broken bytes come from the corruptions below.
    data = text.encode(case.encoding, "replace")
    if case.bom:
        data = codecs.BOM_UTF8 + data
    if case.encoding == "latin-1" and not text.isascii():
        clean = False  # not UTF-8: refused whole, or read as something else
    if case.corruption is not None:
        kind, at, junk = case.corruption
        at = at % (len(data) + 1)
        if kind == "splice":
            data = data[:at] + junk + data[at:]
        elif kind == "truncate":
            data = data[:at]
        else:
            data = data[:at] + b'"' + data[at:]
    return data, clean, written


def queued(env: Env) -> int:
    """Jobs stored by the producer (nothing else writes the job store in this test)."""
    return env.services.jobs.counts().jobs


def check(env: Env, case: Case, tmp: Path, counter: list[int], seen: Counter[str]) -> None:
    data, clean, written = render(case)
    counter[0] += 1
    args = ["enqueue"]
    stdin = None
    if case.how == "stdin":
        args += ["--file", "-"]
        stdin = data
    else:
        suffix = {"csv": ".csv", "tsv": ".tsv", "jsonl": ".jsonl"}[case.fmt]
        path = tmp / f"case-{counter[0]}{suffix if case.how == 'extension' else '.txt'}"
        path.write_bytes(data)
        args += ["--file", str(path)]
        if case.how == "format":
            args += ["--format", case.fmt]
    before = queued(env)
    result = CliRunner().invoke(main, args, input=stdin)
    seen[f"exit {result.exit_code}"] += 1

    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__}: {result.exception}\n{result.output[-2000:]}"
    )
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1, 2), result.output[-2000:]
    if result.exit_code == 2:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[-2000:]
        assert result.stdout == ""
        assert queued(env) == before  # refused whole: nothing half-enqueued
        if clean:
            # Refused whole when clean: only for a field past csv's limit.
            assert case.fmt != "jsonl", result.stderr
            assert "longer than 131072 characters" in lines[0], result.stderr
        return
    out = result.stdout.splitlines()
    found = SUMMARY.fullmatch(out[-1])
    assert found, result.output[-2000:]
    rows, enqueued, pending, refused = (int(n) for n in found.groups())
    seen.update(rows=rows, enqueued=enqueued, pending=pending, refused=refused)
    assert enqueued + pending + refused == rows
    notes = out[:-1]
    assert len(notes) == pending + refused, result.stdout[-2000:]
    assert all(re.match(r"line \d+: ", note) for note in notes), notes
    assert sum(" already pending as job " in note for note in notes) >= pending
    assert queued(env) == before + enqueued
    assert result.exit_code == (1 if refused else 0)
    assert result.stderr == ""
    if clean:
        assert rows == written, result.stdout[-2000:]
        too_long = any(len(str(value)) > FIELD_LIMIT for row in case.rows for value in row.values())
        assert not (too_long and case.fmt != "jsonl")


def test_enqueue_file_never_tracebacks_and_always_adds_up(
    archiver_env: Env,
    producer,
    tmp_path: Path,
) -> None:
    counter = [0]
    seen: Counter[str] = Counter()
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,  # nothing written to .hypothesis/ in the repository
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=cases())
    def run(case: Case) -> None:
        check(archiver_env, case, tmp_path, counter, seen)

    run()
    elapsed = time.monotonic() - started
    print(f"\nenqueue fuzz: {counter[0]} files in {elapsed:.1f}s: {dict(sorted(seen.items()))}")
    assert counter[0] >= EXAMPLES
    # The examples reached every ending: files refused whole, rows of each kind.
    assert min(seen["exit 0"], seen["exit 1"], seen["exit 2"]) > EXAMPLES // 50, seen
    assert min(seen["enqueued"], seen["pending"], seen["refused"]) > EXAMPLES // 2, seen
