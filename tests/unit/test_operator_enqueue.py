"""``chat-archiver enqueue --file`` on the inputs people really have: Excel's CSV, UTF-16,
broken bytes, quotes never closed, TSV on stdin, markup and newlines in values. In-process
(click's CliRunner), publishing to the test Redis through the real producer."""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from tests.conftest import GREEN_ID, Env
from worker.cli import main
from worker.producer import ArchiveProducer, default_producer

QUEUE = "archive"  # the intake, where every job is published
HEADER = "provider,account,chat_id,request_id\n"


def row(n: int, request_id: str = "") -> str:
    return f"green-api,{GREEN_ID},7900100{n:04d}@c.us,{request_id or f'r{n}'}\n"


def enqueue(*args: str, input: bytes | str | None = None) -> Result:
    return CliRunner().invoke(main, ["enqueue", *args], input=input)


def queued(env: Env) -> int:
    """Jobs the producer stored (the job store holds nothing else in these tests)."""
    return env.services.jobs.counts().jobs


def summary(result: Result) -> tuple[int, int, int, int]:
    last = result.stdout.strip().splitlines()[-1]
    found = re.fullmatch(
        r"read (\d+) rows?: enqueued (\d+), already pending (\d+), refused (\d+)", last
    )
    assert found, result.output
    return tuple(int(n) for n in found.groups())  # type: ignore[return-value]


def one_error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return lines[0]


@pytest.fixture
def env(archiver_env: Env, producer: ArchiveProducer) -> Env:
    return archiver_env


def test_a_missing_file_is_one_line(env: Env, tmp_path: Path) -> None:
    missing = enqueue("--file", str(tmp_path / "nope.csv"))
    assert missing.exit_code == 2
    assert one_error_line(missing) == f"Error: --file '{tmp_path / 'nope.csv'}': no such file"
    directory = enqueue("--file", str(tmp_path))
    assert directory.exit_code == 2 and "Is a directory" in one_error_line(directory)


@pytest.mark.parametrize(
    ("encoding", "bom"),
    [
        ("utf-8", codecs.BOM_UTF8),  # Excel's "CSV UTF-8"
        ("utf-16-le", codecs.BOM_UTF16_LE),  # Excel's "Unicode text", Windows tools
        ("utf-16-be", codecs.BOM_UTF16_BE),
        ("utf-32-le", codecs.BOM_UTF32_LE),
    ],
)
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_byte_order_marks_are_read(
    env: Env, tmp_path: Path, encoding: str, bom: bytes, suffix: str
) -> None:
    if suffix == ".csv":
        text = HEADER + row(1) + row(2) + "green-api,7105187566,Пётр@c.us,r3\n"
    else:
        job = {"provider": "green-api", "account": GREEN_ID, "chat_id": "79001000001@c.us"}
        text = json.dumps(job) + "\n"
        text += '{"provider": "green-api", "account": "7105187566", "chat_id": "Пётр@c.us"}\n'
    path = tmp_path / f"jobs{suffix}"
    path.write_bytes(bom + text.encode(encoding))
    result = enqueue("--file", str(path))
    rows = 3 if suffix == ".csv" else 2
    assert summary(result) == (rows, rows - 1, 0, 1), result.output
    # Decoded, not mojibake (and shown escaped: ids are ASCII, the value is not).
    assert "'\\u041f\\u0451\\u0442\\u0440@c.us' is not a green-api chat id" in result.stdout
    assert queued(env) == rows - 1


def test_utf16_without_a_byte_order_mark_is_refused_whole(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_bytes((HEADER + row(1)).encode("utf-16-le"))
    result = enqueue("--file", str(path))
    assert result.exit_code == 2
    assert one_error_line(result) == (
        f"Error: --file '{path}': byte 1 is NUL: this looks like UTF-16 without a byte-order "
        "mark; save the file as UTF-8"
    )


def test_undecodable_bytes_name_their_offset_and_nothing_is_enqueued(
    env: Env, tmp_path: Path
) -> None:
    good = (HEADER + "".join(row(n) for n in range(2000))).encode()  # past the 64 KB chunks
    path = tmp_path / "jobs.csv"
    path.write_bytes(good + b"green-api,7105187566,7900\xe2\x28\xa1@c.us,x\n")
    result = enqueue("--file", str(path))
    assert result.exit_code == 2
    offset = len(good) + len("green-api,7105187566,7900")
    assert one_error_line(result) == (
        f"Error: --file '{path}': byte {offset} (0xe2) is not UTF-8 (invalid continuation "
        "byte); save the file as UTF-8"
    )
    assert queued(env) == 0  # the 2,000 good rows before it too: nothing half-enqueued

    stdin = enqueue("--file", "-", input=b'{"a": 1}\n\xff\n')
    assert stdin.exit_code == 2
    assert "byte 9 (0xff) is not UTF-8 (invalid start byte)" in one_error_line(stdin)


def test_a_truncated_utf16_file_names_its_last_byte(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_bytes(codecs.BOM_UTF16_LE + (HEADER + row(1)).encode("utf-16-le") + b"x")
    result = enqueue("--file", str(path))
    assert result.exit_code == 2
    size = path.stat().st_size
    assert f"byte {size - 1} (0x78) is not UTF-16 (little-endian) (truncated data)" in (
        one_error_line(result)
    )


def test_an_oversize_field_is_refused_whole_not_half_enqueued(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(HEADER + row(1) + f'green-api,{GREEN_ID},"{"9" * 200_000}",x\n' + row(2))
    result = enqueue("--file", str(path))
    assert result.exit_code == 2
    assert one_error_line(result) == (
        f"Error: --file '{path}': line 3: a field is longer than 131072 characters "
        "(a quote opened there and never closed?)"
    )
    assert queued(env) == 0


def test_an_unterminated_quote_never_merges_rows(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(HEADER + row(1) + f'green-api,"{GREEN_ID},79001000002@c.us,x\n' + row(3))
    result = enqueue("--file", str(path))
    assert result.exit_code == 2
    assert one_error_line(result) == (
        f"Error: --file '{path}': line 3: a quoted field opened here is never closed"
    )
    assert queued(env) == 0


def test_a_quote_inside_a_field_must_be_doubled(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(HEADER + row(1) + f'green-api,"{GREEN_ID}"x,79001000002@c.us,x\n')
    result = enqueue("--file", str(path))
    assert result.exit_code == 2
    assert "line 3: not valid CSV (',' expected after '\"')" in one_error_line(result)


def test_field_names_with_newlines_cannot_forge_output(env: Env, tmp_path: Path) -> None:
    forged = "line 9: chat_id: forged\nprovider"
    path = tmp_path / "jobs.csv"
    path.write_text(f'"{forged}",account,chat_id\n' + f"green-api,{GREEN_ID},79001000001@c.us\n")
    result = enqueue("--file", str(path))
    assert result.exit_code == 2
    assert one_error_line(result).endswith(
        "line 1: unknown column 'line 9: chat_id: forged\\nprovider' (columns: provider, "
        "account, chat_id[, request_id, source, task_id])"
    )
    jsonl = enqueue(
        "--file",
        "-",
        input=json.dumps(
            {"provider": "green-api", "account": GREEN_ID, "chat_id": "7@c.us", forged: "x"}
        )
        + "\n",
    )
    assert summary(jsonl) == (1, 0, 0, 1)
    lines = jsonl.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("line 1: 'line 9: chat_id: forged\\nprovider': unexpected field")


def test_markup_in_values_prints_as_text(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(HEADER + f"green-api,{GREEN_ID},[/]@c.us,a\ngreen-api,[red]x[/red],7@c.us,b\n")
    result = enqueue("--file", str(path))
    assert (result.exit_code == 1 and result.exception is None) or isinstance(
        result.exception, SystemExit
    )
    assert "line 2: chat_id: '[/]@c.us' is not a green-api chat id" in result.stdout
    assert "line 3: account: '[red]x[/red]' is not a green-api idInstance" in result.stdout
    assert summary(result) == (2, 0, 0, 2)


def test_nested_and_odd_json_values_are_refused_rows(env: Env) -> None:
    lines = [
        {"provider": {"nested": ["green-api"]}, "account": GREEN_ID, "chat_id": "7@c.us"},
        {"provider": "green-api", "account": GREEN_ID, "chat_id": "79001000001@c.us"},
        [1, 2],
        {
            "provider": "green-api",
            "account": GREEN_ID,
            "chat_id": "79001000002@c.us",
            "request_id": 5,
        },
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    text += "[" * 100_000 + "\n"  # deeper than the parser recurses
    text += '{"provider": "green-api", "account": "7105187566", "chat_id": "\\ud800@c.us"}\n'
    text += "1" * 5000 + "\n"  # an integer longer than Python converts
    result = enqueue("--file", "-", input=text)
    assert result.exit_code == 1, result.output
    assert summary(result) == (7, 1, 0, 6)
    out = result.stdout
    assert "line 1: provider: must be a string, got dict" in out
    assert "line 3: not a JSON object (a JSON list)" in out
    assert "line 4: request_id: must be a string, got int" in out
    assert "line 5: not a JSON object (nested too deeply)" in out
    assert "line 6: 'chat_id': not valid Unicode (a lone surrogate)" in out
    assert "line 7: not a JSON object (" in out


def test_tsv_on_stdin_is_read_as_tsv(env: Env, tmp_path: Path) -> None:
    tsv = "provider\taccount\tchat_id\n" + f"green-api\t{GREEN_ID}\t79001000001@c.us\n"
    assert summary(enqueue("--file", "-", input=tsv)) == (1, 1, 0, 0)
    path = tmp_path / "export.txt"
    path.write_text(tsv.replace("79001000001", "79001000002"))
    assert summary(enqueue("--file", str(path))) == (1, 1, 0, 0)
    semicolons = tmp_path / "excel-de.csv"
    semicolons.write_text(f"provider;account;chat_id\ngreen-api;{GREEN_ID};79001000003@c.us\n")
    assert summary(enqueue("--file", str(semicolons))) == (1, 1, 0, 0)
    assert queued(env) == 3


def test_format_overrides_what_the_name_says(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(json.dumps({"provider": "green-api", "account": GREEN_ID, "chat_id": "7@c.us"}))
    assert summary(enqueue("--file", str(path), "--format", "jsonl"))[0] == 1
    wrong = enqueue("--file", str(path), "--format", "xlsx")
    assert wrong.exit_code == 2
    assert one_error_line(wrong) == "Error: --format 'xlsx': not one of csv, tsv, jsonl"


def test_the_summary_counts_every_row_with_pending_ids(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(HEADER + row(1) + "\n" + row(2) + f"green-api,{GREEN_ID},bad,x\n" + row(3))
    first = enqueue("--file", str(path))
    assert summary(first) == (4, 3, 0, 1)
    assert first.exit_code == 1
    second = enqueue("--file", str(path))
    assert summary(second) == (4, 0, 3, 1)
    pending = re.findall(
        r"^line (\d+): already pending as job ([0-9a-f-]{36})$", second.stdout, re.M
    )
    assert [int(line) for line, _ in pending] == [2, 4, 6]
    stored = set(env.redis.hkeys(env.services.keys.jobs))
    assert {task_id for _, task_id in pending} == stored
    assert queued(env) == 3


def test_a_broker_failure_part_way_says_what_was_enqueued(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second batch fails as a dropped connection would: the only stand-in in this file, at
    # the producer's boundary, because a real Redis cannot be made to fail between two batches.
    publisher = default_producer()
    real = publisher.enqueue_many
    calls = []

    def second_batch_fails(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise redis.ConnectionError("Connection closed by server.")
        return real(*args, **kwargs)

    monkeypatch.setattr(publisher, "enqueue_many", second_batch_fails)
    path = tmp_path / "jobs.csv"
    path.write_text(HEADER + "".join(row(n) for n in range(700)))
    result = enqueue("--file", str(path))
    assert result.exit_code == 1
    assert summary(result) == (500, 500, 0, 0)
    assert one_error_line(result) == (
        "Error: stopped at line 502 (Connection closed by server.): rows from there on were not "
        "enqueued (some of lines 502-701 may have been)"
    )
    assert queued(env) == 500


def test_one_job_from_options_is_one_line_whatever_is_wrong(env: Env) -> None:
    unknown = enqueue("--provider", "telegram", "--account", "1", "--chat-id", "x")
    assert unknown.exit_code == 1
    assert (
        one_error_line(unknown) == "Error: provider: 'telegram' is not one of green-api, wassenger"
    )
    missing = enqueue("--provider", "green-api")
    assert missing.exit_code == 2
    assert one_error_line(missing) == "Error: --account, --chat-id missing (or give --file)"
    both = enqueue("--file", "-", "--chat-id", "7@c.us")
    assert both.exit_code == 2
    assert one_error_line(both) == (
        "Error: give --file or --provider/--account/--chat-id, not both"
    )
