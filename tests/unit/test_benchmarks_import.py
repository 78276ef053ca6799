"""Every benchmark script still imports and parses its options (``--help``), so a change elsewhere
that breaks one shows here rather than on the day someone runs it; and importing one changes
nothing (the environment above all: a benchmark points the process at its private Redis in
``main()``, never on import). Each check runs in a process of its own; nothing is started, no
Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(
    f"benchmarks.{path.stem}"
    for path in (ROOT / "benchmarks").glob("*.py")
    if path.stem.startswith("bench_")
)
SUPPORT = ["benchmarks.harness", "benchmarks.stock_app"]

# Imports each module named on the command line and fails, naming the variables, if any import
# added, changed or dropped an environment variable.
IMPORT_CHECK = """
import importlib, os, sys
for name in sys.argv[1:]:
    before = dict(os.environ)
    importlib.import_module(name)
    changed = sorted(set(before.items()) ^ set(os.environ.items()))
    if changed:
        sys.exit(f"importing {name} changed the environment: {sorted({k for k, _ in changed})}")
print("ok")
"""


def _env() -> dict[str, str]:
    # A setting the caller's shell may hold: a benchmark must not drop or rewrite it on import.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    return {**env, "ARCHIVER_KEY_PREFIX": "left-as-it-was"}


def test_there_are_benchmarks() -> None:
    assert MODULES


def test_importing_a_benchmark_changes_no_environment_variable() -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, *SUPPORT, *MODULES],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize("module", MODULES)
def test_benchmark_help(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
