"""The CLI prints data as text: a value holding rich markup ("[/]", "[[accounts]]", "[red]")
prints as it is and never crashes a command (status, sweep, limits; dlq and enqueue have their
own tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from config import ConfigError, load_accounts
from tests.conftest import GREEN_ID, Env, accounts_toml, use_environment
from worker.cli import main
from worker.cli.common import console
from worker.cli.sweep import _print as print_sweeps
from worker.services import reset_services


def test_status_prints_a_wrong_accounts_file_error_as_written(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[account]\nprovider = "green-api"\n')
    monkeypatch.setenv("ARCHIVER_ACCOUNTS_FILE", str(wrong))
    reset_services()
    with pytest.raises(ConfigError) as caught:
        load_accounts(wrong)
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: cannot read the status: {caught.value}"


def test_status_prints_names_holding_markup_as_written(
    archiver_env: Env, monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path
) -> None:
    accounts = tmp_path / "accounts.toml"
    text = accounts_toml("http://provider.test").replace(
        'provider = "green-api"', 'provider = "green-api"\nname = "[/] shop [red]x"', 1
    )
    accounts.write_text(text)
    use_environment(monkeypatch, redis_url, accounts)
    monkeypatch.setattr(console, "width", 300)
    result = CliRunner().invoke(main, ["status", "--account", f"green-api:{GREEN_ID}"])
    assert result.exit_code == 1, result.output  # no worker answers: needs attention
    assert "([/] shop [red]x)" in result.stdout
    assert "  - no worker answers" in result.stdout


def test_sweep_summaries_print_errors_holding_markup_as_written(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(console, "width", 400)
    summary = {
        "run": "20261207T000000Z-abcdef",
        "provider": "wassenger",
        "account": "61b37a069cba0c15d6c81c8e",
        "dry_run": False,
        "status": "failed",
        "reason": "HTTP 500: [/] [bold]oops",
        "listed": 3,
        "selected": 1,
        "enqueued": 0,
        "duplicates": 0,
        "refused": 0,
        "skipped": {"[red]": 1},
        "calls": {"chats": 1},
        "seconds": 0.5,
        "chats": ["[/]@c.us\nforged"],
    }
    print_sweeps([summary], dry_run=False, list_chats=True)
    out = capsys.readouterr().out
    assert "failed: HTTP 500: [/] [bold]oops" in out and "[red] 1" in out
    assert "wassenger:61b37a069cba0c15d6c81c8e [/]@c.us\\nforged" in out
