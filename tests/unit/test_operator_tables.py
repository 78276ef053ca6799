"""Every table the command prints keeps ids, chat ids, accounts and outcomes whole, on a narrow
terminal and in a pipe (worker/views/tables.py): people copy them and grep for them.

Each table is printed by the function its command uses, through the command's own console, at a
narrow width and at the width the console takes when its output is piped (pytest's capture is not
a terminal)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from rich.console import Console

from tests.unit.test_deadletters import entry
from worker.cli import common
from worker.cli.dlq import _print_entries
from worker.sandbox import demo
from worker.stores.limiter import LimiterState

# The modules, not the commands that worker.cli's package names after them.
limits = importlib.import_module("worker.cli.limits")
status = importlib.import_module("worker.cli.status")
sweep = importlib.import_module("worker.cli.sweep")

DEVICE = "wassenger:64a1f0c2b3d4e5f601234567"
GROUP = "44736205357600000000@g.us"
RUN = "20261207T030000Z-3f9a2c"
LONG_DETAIL = "HTTP 404: the provider answered with a long explanation " * 3
PIPED = common.console.width  # what the command's console uses when stdout is not a terminal


def sweep_summary() -> dict[str, Any]:
    return {
        "run": RUN,
        "provider": "wassenger",
        "account": DEVICE.split(":")[1],
        "status": "completed",
        "listed": 100_000,
        "selected": 1_234,
        "enqueued": 1_200,
        "duplicates": 30,
        "refused": 4,
        "dry_run": False,
        "skipped": {"unread": 12, "labels": 3, "unarchivable": 1},
        "calls": {"listChats": 1001, "getDevices": 1},
        "seconds": 103.4,
    }


def print_sweep() -> list[str]:
    sweep._print([sweep_summary()], dry_run=False, list_chats=False)
    return [RUN, DEVICE, "completed"]


def print_sweep_runs() -> list[str]:
    record = {
        **sweep_summary(),
        "started_at": 1_796_000_000.0,
        "archived": 1_100,
        "reason": LONG_DETAIL,
    }
    sweep.print_runs([record])
    return [RUN, DEVICE, "completed"]


def print_limits() -> list[str]:
    limits.print_limits([LimiterState(DEVICE, "archiveChatWassenger", 5.0, 4.88, 12, 3, 1, 0.25)])
    return [DEVICE, "archiveChatWassenger"]


def print_status_account() -> list[str]:
    status._print_account(
        {
            "account": DEVICE,
            "name": "support desk",
            "waiting": 20_000,
            "limiter": {"allowed_per_second": 5.0, "next_permit_in": 0.2, "rate_limited": 3},
            "circuit": {
                "state": "open",
                "reason": "account_unavailable",
                "probe_in": 120.0,
                "parked": 17,
            },
            "outcomes": {"already_archived": 4, "archived": 1_000, "dead_lettered": 2},
        }
    )
    return [DEVICE, "already_archived", "account_unavailable"]


def print_dlq_list() -> list[str]:
    dead = replace(entry("chat_not_found", account=DEVICE.split(":")[1], chat=GROUP), id="ab" * 16)
    dead = replace(dead, detail=LONG_DETAIL)
    _print_entries([dead], 0)
    return ["ab" * 16, "chat_not_found", GROUP]


class TrueSimulator:
    def chat(self, provider: str, account: str, chat_id: str) -> dict[str, Any]:
        return {"archived": True}


def print_demo() -> list[str]:
    outcomes: dict[int, dict[str, Any] | None] = {
        n: {"outcome": "already_archived", "attempts": 3} for n in range(1, len(demo.JOBS) + 1)
    }
    task_ids = {n: f"task-{n}" for n in outcomes}
    demo._report(common.console, outcomes, task_ids, TrueSimulator())  # type: ignore[arg-type]
    return ["79001000001@c.us", "120363000000000001@g.us", "already_archived", demo.WASSENGER_ID]


class OneDeadLetter:
    def iter(self) -> list[Any]:
        return [replace(entry("chat_not_found", chat=GROUP), id="cd" * 16, detail=LONG_DETAIL)]


def print_demo_dead_letters() -> list[str]:
    demo._report_dead_letters(common.console, OneDeadLetter())  # type: ignore[arg-type]
    return ["cdcdcdcd", "chat_not_found", "green-api:7105187566", GROUP]


TABLES: dict[str, Callable[[], list[str]]] = {
    "sweep": print_sweep,
    "sweep runs": print_sweep_runs,
    "limits": print_limits,
    "status --account": print_status_account,
    "dlq list": print_dlq_list,
    "demo": print_demo,
    "demo dead letters": print_demo_dead_letters,
}


@pytest.mark.parametrize("width", [60, PIPED])
@pytest.mark.parametrize("name", sorted(TABLES))
def test_tables_never_cut_ids_chats_or_outcomes(
    name: str, width: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not common.console.is_terminal
    monkeypatch.setattr(common.console, "width", width)
    whole = TABLES[name]()
    out = capsys.readouterr().out
    # Rich's ellipsis; prose may be capped, saying what it left out: "… (48 more characters)".
    assert "…" not in out.replace("… (", ""), out
    lines = out.splitlines()
    # A table fits the width; a row too wide for one is one line, which the terminal wraps.
    assert all(len(line) <= width for line in lines if "│" in line), out
    for value in whole:
        assert any(value in line for line in lines), f"{value!r} not whole in:\n{out}"


def test_a_table_that_fits_stays_a_table_and_prose_wraps(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(common.console, "width", 120)
    print_demo_dead_letters()
    out = capsys.readouterr().out
    assert "┃ id " in out  # the demo's dead letters: a table, its detail wrapped
    assert LONG_DETAIL.strip() not in out
    assert "the provider answered" in out


def test_rows_too_wide_for_a_table_are_lines_of_header_value_pairs() -> None:
    from io import StringIO

    from worker.views.tables import Col, print_table

    out = StringIO()
    narrow = Console(file=out, width=30, soft_wrap=True)
    print_table(narrow, ["run", "account", Col("why", prose=True)], [[RUN, DEVICE, "held"]])
    assert out.getvalue() == f"run: {RUN}  account: {DEVICE}  why: held\n"


def test_a_table_with_no_rows_prints_its_headers() -> None:
    from io import StringIO

    from worker.views.tables import print_table

    out = StringIO()
    print_table(Console(file=out, width=60), ["run", "account"], [])
    assert "┃ run ┃ account ┃" in out.getvalue()
