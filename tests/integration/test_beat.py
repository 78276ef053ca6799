"""Celery beat for real: a beat process sends sweeps on schedule; a second beat doubles nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import WASSENGER_CANARY, WASSENGER_ID
from tests.integration.conftest import Cluster
from tests.support import eventually
from worker.sandbox.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

INACTIVE = [f"44700000{n:04d}@c.us" for n in range(3)]


@pytest.fixture
def swept(redis_url: str, simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster whose Wassenger device is swept every 2 s, with three inactive chats (all its
    chats: no share bound)."""
    cluster = Cluster(
        redis_url,
        simulator,
        tmp_path,
        wassenger_sweep='every = "2s"\ninactive_after = "30d"\nmax_share = 1.0',
    )
    cluster.sim.put_account(
        "wassenger",
        WASSENGER_ID,
        token=WASSENGER_CANARY,
        chats=[{"id": chat, "last_incoming_days_ago": 40} for chat in INACTIVE],
    )
    yield cluster
    cluster.close()


def sweeps_so_far(cluster: Cluster) -> int:
    # A sweep of this small device lists one page: one listChats call per sweep.
    return cluster.calls("wassenger", "listChats")


def test_beat_fires_sweeps_that_archive_inactive_chats(swept: Cluster) -> None:
    swept.start_worker()
    # Beat calls no provider: it runs where the tokens are not set (empty reads as unset).
    no_tokens = {"TEST_GREEN_TOKEN": "", "TEST_WASSENGER_TOKEN": ""}
    beat = swept.start_process(["beat", "-l", "INFO"], "beat", env=no_tokens)
    eventually(
        lambda: all(
            swept.sim.chat("wassenger", WASSENGER_ID, chat)["archived"] for chat in INACTIVE
        ),
        30,
        "every inactive chat archived",
        0.2,
        context=lambda: beat.log()[-2000:],
    )
    assert "Sending due task sweep wassenger:" in beat.log()


def test_a_second_beat_does_not_double_the_schedule(swept: Cluster) -> None:
    swept.start_worker()
    first = swept.start_beat("beat-1")
    first.wait_for_log("beat: Acquired lock", timeout=30)
    second = swept.start_beat("beat-2")
    time.sleep(2)  # the second beat is up and waiting for the lock
    before, started = sweeps_so_far(swept), time.monotonic()
    time.sleep(10)
    sweeps = sweeps_so_far(swept) - before
    elapsed = time.monotonic() - started
    # One schedule: a sweep every 2 s (one more at most, for where the window falls). Two
    # beats sending it would make about twice as many.
    assert 2 <= sweeps <= elapsed / 2 + 1, sweeps
    assert "Sending due task" not in second.log()
    assert "Acquired lock" not in second.log()
