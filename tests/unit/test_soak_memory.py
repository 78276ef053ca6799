"""The memory soak's arithmetic and options (benchmarks/soak_memory.py): what it reports as growth
and as PASS/MISS. Nothing is started here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.soak_memory import Series, figures, slope_per_minute

ROOT = Path(__file__).resolve().parents[2]


def test_the_slope_is_megabytes_per_minute() -> None:
    assert slope_per_minute([(0, 10.0), (60, 12.0), (120, 14.0)]) == pytest.approx(2.0)
    assert slope_per_minute([(0, 10.0), (30, 10.0)]) == pytest.approx(0.0)
    assert slope_per_minute([(0, 10.0)]) is None


def _series(role: str, minutes: float, mb_per_minute: float) -> Series:
    series = Series(pid=1, role=role)
    for second in range(0, int(minutes * 60) + 1, 15):
        series.samples.append((second, 80 + mb_per_minute * second / 60, 20.0))
        series.cpu.append(second / 10)
    return series


def test_a_full_soak_is_judged_on_its_growth_after_the_warm_up() -> None:
    # 15 minutes, first minute left out: 14 minutes at 0.3 MB/min = 4.2 MB, under 5.
    row = figures(_series("pool", 15, 0.3), warmup=60, end=900)
    assert row is not None
    assert row["rss_growth"] == pytest.approx(4.2)
    assert not row["projected"] and row["pass"] is True
    assert row["rss_first"] == pytest.approx(80.3)
    assert not row["left_early"]


def test_a_short_soak_is_judged_on_its_slope_over_fifteen_minutes() -> None:
    # 4.2 MB/min for 4 minutes is 12.6 MB measured but 63 MB over the target's 15 minutes.
    row = figures(_series("pool", 4, 4.2), warmup=60, end=240)
    assert row is not None
    assert row["projected"] and row["judged_growth"] == pytest.approx(63.0)
    assert row["pass"] is False


def test_the_main_process_is_reported_but_not_judged_and_a_replaced_one_is_marked() -> None:
    row = figures(_series("main", 5, 1.0), warmup=60, end=300)
    assert row is not None and row["pass"] is None
    gone = figures(_series("pool", 3, 0.0), warmup=60, end=300)
    assert gone is not None and gone["left_early"]
    assert figures(_series("pool", 1, 0.0), warmup=60, end=300) is None  # one sample after it


def test_the_soak_parses_its_options() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCHIVER_")}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak_memory", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--minutes" in done.stdout and "--tracemalloc" in done.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak_memory", "--minutes", "1", "--warmup", "60"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert "--minutes must leave at least two samples after --warmup" in refused.stderr
