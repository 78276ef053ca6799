"""The sandbox's process wrapper waits for what a log really says (tests and benchmarks wait on
it before they act: a wait that returns early makes them act on a node that is not there yet)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.sandbox.local import WORKER_READY, CeleryProcess


def _process(tmp_path: Path, text: str) -> CeleryProcess:
    log = tmp_path / "node.log"
    log.write_text(text)
    return CeleryProcess([], {}, log)


def test_a_wait_returns_once_the_text_is_in_the_log(tmp_path: Path) -> None:
    _process(tmp_path, "[...] beat: Acquired lock\n").wait_for_log("beat: Acquired lock", 1)


@pytest.mark.parametrize("text", ["", "beat: Starting...\n"])
def test_a_wait_for_text_the_log_does_not_hold_times_out(tmp_path: Path, text: str) -> None:
    with pytest.raises(TimeoutError):
        _process(tmp_path, text).wait_for_log("beat: Acquired lock", 0.3)


@pytest.mark.parametrize(
    ("log", "ready"),
    [
        (" .> archive.ready.w1@host exchange=archive(direct)\n", False),  # the banner's queue
        ("[2026-12-07 17:00:00,000: INFO/MainProcess] w1@host ready.\n", True),
        ('{"level": "INFO", "message": "w1@host ready."}\n', True),  # --log-format json
    ],
)
def test_ready_is_celerys_own_line_in_text_or_json(log: str, ready: bool) -> None:
    assert bool(WORKER_READY.search(log)) is ready
