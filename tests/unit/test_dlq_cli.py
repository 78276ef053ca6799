"""``chat-archiver dlq`` in-process (click's CliRunner) against the test Redis: ids that can be
copied at any width, prefixes, filters checked, corrupt entries reported, data printed as text."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
from click.testing import CliRunner, Result

from tests.conftest import CANARY, Env
from tests.unit.test_deadletters import AWKWARD_EXCERPTS, entry, store_like_the_old_version
from worker.cli import main
from worker.cli.common import console
from worker.producer import ArchiveProducer
from worker.stores.deadletters import DeadLetter, DeadLetterStore


@pytest.fixture
def store(archiver_env: Env, producer: ArchiveProducer) -> DeadLetterStore:
    return archiver_env.services.dead_letters


def dlq(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["dlq", *args], input=input)


def one_error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines
    return lines[0]


@pytest.mark.parametrize("width", [30, 40, 80, 120, 250])
def test_list_prints_whole_unique_short_ids_at_any_width(
    store: DeadLetterStore, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    # Two ids that share their first 9 characters: 10 are needed to tell them apart.
    ids = ["0123456789abcdef0123456789abcdef", "012345678fffffff0123456789abcdef"]
    for n, entry_id in enumerate(ids):
        store.add(replace(entry("chat_not_found", created=float(n)), id=entry_id))
    store.add(entry("no_messages", created=5.0))
    monkeypatch.setattr(console, "width", width)

    result = dlq("list")
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    shown = set(re.findall(r"\b[0-9a-f]{8,32}\b", result.stdout))
    assert {"0123456789", "012345678f"} <= shown  # unique, whole, at every width
    assert not any(len(token) == 32 for token in shown)
    for entry_id in ids:  # what list printed is what show takes
        assert dlq("show", entry_id[:10]).exit_code == 0

    wide = dlq("list", "--wide")
    assert set(ids) <= set(re.findall(r"\b[0-9a-f]{32}\b", wide.stdout))
    assert result.stdout.strip().endswith("3 dead letters")


def test_short_ids_are_eight_characters_when_that_is_unique(store: DeadLetterStore) -> None:
    entry_id = store.add(entry("chat_not_found"))
    result = dlq("list")
    assert re.search(rf"\b{entry_id[:8]}\b", result.stdout)
    assert entry_id[:9] not in result.stdout


def test_show_replay_and_purge_take_a_unique_prefix(store: DeadLetterStore) -> None:
    ids = [
        store.add(replace(entry("chat_not_found", chat=f"7900100000{n}@c.us"), id=entry_id))
        for n, entry_id in enumerate(
            ["aaaaaa11" + "0" * 24, "aaaaaa22" + "0" * 24, "bbbbbb11" + "0" * 24]
        )
    ]
    shown = dlq("show", "bbbbbb")
    assert shown.exit_code == 0 and "79001000002@c.us" in shown.stdout

    ambiguous = dlq("show", "aaaaaa")
    assert ambiguous.exit_code == 2
    assert one_error_line(ambiguous) == (
        "Error: ID 'aaaaaa' matches 2 dead letters: give more characters"
    )
    short = dlq("purge", "bbbbb", "--yes")
    assert short.exit_code == 2
    assert one_error_line(short) == "Error: ID 'bbbbb': give at least 6 characters of the id"
    unknown = dlq("replay", "aaaaaa11", "cccccc")
    assert unknown.exit_code == 1
    assert one_error_line(unknown) == "Error: no dead letter 'cccccc'"
    assert len(store) == 3  # nothing replayed: every id is resolved before anything is done

    replayed = dlq("replay", "aaaaaa2")
    assert replayed.exit_code == 0, replayed.output
    assert f"replayed {ids[1]} as job" in replayed.stdout
    purged = dlq("purge", "aaaaaa1", ids[2], "--yes")
    assert purged.exit_code == 0 and "purged 2" in purged.stdout
    assert len(store) == 0


@pytest.mark.parametrize("width", [80, 100, 160, 400])
def test_a_long_detail_is_never_folded_onto_a_line_of_its_own(
    store: DeadLetterStore, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    detail = "HTTP 400: chat not found (the provider said so at length) " * 2
    stored = store.add(replace(entry("chat_not_found"), detail=detail.strip()))
    monkeypatch.setattr(console, "width", width)
    for args in ([], ["--wide"]):
        result = dlq("list", *args)
        assert result.exit_code == 0, result.output
        # grep for the id finds the whole entry: its detail is on the same line, whole.
        (line,) = [line for line in result.stdout.splitlines() if stored[:8] in line]
        assert detail.strip() in line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--reason", "chat_not_foud"],
            "Error: --reason 'chat_not_foud': not a dead-letter reason (chat_not_found, ",
        ),
        (
            ["--account", "7105187566"],
            "Error: --account '7105187566': give provider:id, e.g. green-api:7105187566 "
            "(green-api, wassenger)",
        ),
        (
            ["--account", "greenapi:7105187566"],
            "Error: --account 'greenapi:7105187566': unknown provider 'greenapi'",
        ),
        (
            ["--account", "wassenger:7105187566"],
            "Error: --account 'wassenger:7105187566': '7105187566' is not a wassenger device id",
        ),
    ],
)
@pytest.mark.parametrize("command", ["list", "replay", "purge"])
def test_filters_are_checked_not_silently_empty(
    store: DeadLetterStore, command: str, args: list[str], says: str
) -> None:
    store.add(entry("chat_not_found"))
    result = dlq(command, *args)
    assert result.exit_code == 2
    assert one_error_line(result).startswith(says)
    assert len(store) == 1


def test_filters_that_are_right_select(store: DeadLetterStore) -> None:
    store.add(entry("chat_not_found"))
    store.add(entry("no_messages", account="7105000000"))
    listed = dlq("list", "--reason", "no_messages", "--account", "green-api:7105000000", "--json")
    assert [e["reason"] for e in json.loads(listed.stdout)] == ["no_messages"]
    assert dlq("list", "--account", "green-api:1234567").stdout.strip() == "0 dead letters"


def test_the_account_level_reasons_are_filters_too(store: DeadLetterStore) -> None:
    """Jobs parked behind a paused account longer than the maximum pause are dead-lettered
    with the account's reason, misconfigured (issue 19) included."""
    store.add(entry("misconfigured"))
    store.add(entry("account_unavailable"))
    listed = dlq("list", "--reason", "misconfigured", "--json")
    assert listed.exit_code == 0, listed.output
    assert [e["reason"] for e in json.loads(listed.stdout)] == ["misconfigured"]


@pytest.mark.parametrize("command", ["list", "replay", "purge"])
def test_an_account_filter_takes_any_spelling_of_the_id_the_producer_takes(
    store: DeadLetterStore, command: str
) -> None:
    device = "64a1f0c2b3d4e5f601234599"
    wassenger = replace(
        entry("chat_not_found"),
        job={"provider": "wassenger", "account": device, "chat_id": "447700900123@c.us"},
    )
    store.add(wassenger)
    store.add(entry("chat_not_found"))
    # A device id in capitals, or with a space pasted after the colon, is the same account.
    for spelling in (f"wassenger:{device.upper()}", f"wassenger: {device}"):
        listed = dlq("list", "--account", spelling, "--json")
        assert listed.exit_code == 0, listed.output
        assert [e["job"]["account"] for e in json.loads(listed.stdout)] == [device]
    extra = ["--yes"] if command == "purge" else []
    result = dlq(command, "--account", f"wassenger:{device.upper()}", *extra)
    assert result.exit_code in (0, 1), result.output  # replay: the chat is still not found
    if command == "purge":
        assert [e.account for e in store.iter()] == ["green-api:7105187566"]


def test_a_corrupt_entry_is_one_line_and_never_a_traceback(
    archiver_env: Env, store: DeadLetterStore
) -> None:
    broken = DeadLetter(
        reason="unexpected_response",
        job={"provider": "green-api", "account": "1101000001", "chat_id": "79001000001@c.us"},
        detail="HTTP 400",
        excerpt='POST /waInstance1101000001/archiveChat/abcdefgh" HTTP/1.1',
    )
    corrupt_id = store_like_the_old_version(archiver_env, broken)
    good = store.add(entry("chat_not_found", created=1.0))

    listed = dlq("list")
    assert listed.exit_code == 0 and listed.exception is None
    [line] = listed.stderr.splitlines()
    assert line.startswith(f"corrupt entry {corrupt_id} skipped (JSONDecodeError: ")
    assert good[:8] in listed.stdout and "1 dead letter" in listed.stdout
    assert dlq("list", "--json").exit_code == 0

    shown = dlq("show", corrupt_id[:8])
    assert (shown.exit_code == 1 and shown.exception is None) or isinstance(
        shown.exception, SystemExit
    )
    assert shown.stdout.startswith(f"corrupt entry {corrupt_id}: JSONDecodeError")
    assert "/waInstance1101000001/archiveChat/***" in shown.stdout

    replayed = dlq("replay", "--all")
    assert replayed.exit_code == 1
    assert f"kept {corrupt_id}: corrupt entry, nothing to replay" in replayed.stdout
    assert "replayed 1, kept 1" in replayed.stdout

    purged_by_reason = dlq("purge", "--reason", "unexpected_response", "--yes")
    assert "nothing to purge" in purged_by_reason.stdout  # its reason cannot be read: not guessed
    assert dlq("purge", "--all", "--yes").stdout.strip() == "purged 1"
    assert len(store) == 0 and store.counts() == {}


def test_data_prints_as_text_never_as_markup(
    store: DeadLetterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry_id = store.add(
        DeadLetter(
            reason="invalid_request",
            job={"provider": "green-api", "account": "[/]", "chat_id": "[red]x[/red]\nline 2: x"},
            detail="[bold]not bold[/bold] [/] :smile:",
            excerpt="[link=http://x]y[/link]",
        )
    )
    monkeypatch.setattr(console, "width", 400)  # no column folds
    listed = dlq("list")
    assert listed.exit_code == 0, listed.output
    assert "[red]x[/red]\\nline 2: x" in listed.stdout and "green-api:[/]" in listed.stdout
    assert "[bold]not bold[/bold] [/] :smile:" in listed.stdout
    assert not any(line.startswith("line 2") for line in listed.stdout.splitlines())
    shown = dlq("show", entry_id)
    assert shown.exit_code == 0 and "[link=http://x]y[/link]" in shown.stdout


@pytest.mark.parametrize("excerpt", AWKWARD_EXCERPTS)
def test_awkward_excerpts_read_back_through_the_cli(store: DeadLetterStore, excerpt: str) -> None:
    entry_id = store.add(replace(entry("unexpected_response"), excerpt=excerpt))
    shown = dlq("show", entry_id[:8], "--json")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["id"] == entry_id and CANARY not in shown.stdout
    assert dlq("show", entry_id[:8]).exit_code == 0
    assert dlq("list").exit_code == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["dlq", "show"], "Error: Missing argument 'ID'."),
        (["dlq", "list", "--limit", "0"], "Error: Invalid value for '--limit': 0 is not in"),
        (["dlq", "lsit"], "Error: No such command 'lsit'. Did you mean 'list'?"),
        (["dlq", "list", "--wdie"], "Error: No such option '--wdie'. Did you mean '--wide'?"),
        (["enqueue", "--file"], "Error: Option '--file' requires an argument."),
        (["limits", "--jsno"], "Error: No such option '--jsno'"),
    ],
)
def test_usage_errors_are_one_line_too(args: list[str], says: str) -> None:
    # click alone would print the usage text and a hint before its error line
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert one_error_line(result).startswith(says)


def test_surrogates_and_huge_values_read_back_through_the_cli(store: DeadLetterStore) -> None:
    entry_id = store.add(
        DeadLetter(
            reason="invalid_request",
            job={"provider": "green-api", "account": "1101000001", "chat_id": "\ud800" * 1_000_000},
            detail="d" * 1_000_000,
            excerpt=f'"/waInstance1101000001/archiveChat/{CANARY}\\" \udfff',
            worker="w\ud800",
        )
    )
    readers = (["list"], ["list", "--json"], ["show", entry_id[:8]], ["show", entry_id, "--json"])
    for args in readers:
        result = dlq(*args)
        assert result.exit_code == 0, (args, result.output[-500:])
        assert max(len(line) for line in result.stdout.splitlines()) < 2_000, args
        assert CANARY not in result.stdout
    shown = json.loads(dlq("show", entry_id, "--json").stdout)
    assert shown["worker"] == "w\\ud800" and shown["job"]["chat_id"].startswith("\\ud800\\ud800")
