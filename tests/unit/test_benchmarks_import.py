"""Every benchmark script still imports and parses its options (``--help``), so a change elsewhere
that breaks one shows here rather than on the day someone runs it. Each runs in its own process:
the benchmarks point the project at a private Redis as they are imported (tests/benchmarks/
harness.py), which must not happen inside this test session. Nothing is started; no Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "tests" / "benchmarks").glob("bench_*.py"))


def test_there_are_benchmarks() -> None:
    assert SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_benchmark_help(script: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
