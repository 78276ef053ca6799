"""A program outside Python that a test needs and the machine lacks: the test fails with one line
naming the Debian package, or is skipped saying why when the developer opted out, never under CI
(tests/host_tools.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests import host_tools
from tests.host_tools import CHROMEDRIVER, CHROMIUM, WITHOUT, require
from tests.unit.test_compose import ROOT

REAL_WHICH = shutil.which


def outcome(name: str) -> BaseException:
    """What require() raised, caught here whichever it is: a skip raised inside pytest.raises(
    Failed) would skip this test, not fail it."""
    try:
        require(name)
    except (pytest.fail.Exception, pytest.skip.Exception) as raised:
        return raised
    raise AssertionError(f"require({name!r}) let the test run")


@pytest.fixture
def without_chromium(monkeypatch: pytest.MonkeyPatch) -> None:
    def which(program: str) -> str | None:
        return None if program in (CHROMIUM, CHROMEDRIVER) else REAL_WHICH(program)

    monkeypatch.setattr(host_tools.shutil, "which", which)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(WITHOUT, raising=False)


@pytest.mark.usefixtures("without_chromium")
def test_a_missing_tool_fails_the_test_with_one_line_saying_what_to_install() -> None:
    failed = outcome("chromium")
    assert isinstance(failed, pytest.fail.Exception)
    message = str(failed)
    assert "\n" not in message
    assert "apt-get install chromium chromium-driver" in message
    assert "tests/integration/test_flower_browser.py" in message
    assert f"{WITHOUT}=chromium" in message


@pytest.mark.usefixtures("without_chromium")
def test_opting_out_skips_the_test_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WITHOUT, "faketime, chromium")
    skipped = outcome("chromium")
    assert isinstance(skipped, pytest.skip.Exception)
    assert str(skipped).startswith(f"{WITHOUT}=chromium: ")


@pytest.mark.usefixtures("without_chromium")
def test_ci_never_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WITHOUT, "chromium")
    monkeypatch.setenv("CI", "true")
    assert isinstance(outcome("chromium"), pytest.fail.Exception)


def test_redis_server_cannot_be_opted_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_tools.shutil, "which", lambda program: None)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv(WITHOUT, "redis-server")
    failed = outcome("redis-server")
    assert isinstance(failed, pytest.fail.Exception)
    assert WITHOUT not in str(failed)


def test_faketime_needs_the_library_as_well_as_the_program(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(host_tools.shutil, "which", lambda program: f"/usr/bin/{program}")
    monkeypatch.setattr(host_tools, "libfaketime", lambda: None)
    assert host_tools.TOOLS["faketime"].missing() == ["libfaketimeMT.so.1"]


def test_a_present_tool_passes() -> None:
    # CI's machine has them all (.ci/run installs them).
    for name in host_tools.TOOLS:
        require(name)


@pytest.mark.usefixtures("without_chromium")
def test_the_preflight_names_each_missing_tool_and_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert host_tools.main() == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{CHROMIUM}, {CHROMEDRIVER} not found")
    monkeypatch.setenv(WITHOUT, "chromium")
    assert host_tools.main() == 0
    assert "skipping what needs chromium" in capsys.readouterr().err


def test_the_preflight_runs_as_make_test_runs_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.host_tools"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
