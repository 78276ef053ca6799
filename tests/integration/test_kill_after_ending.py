"""A job's result is never lost once its ending is recorded: the ending and the result are one
atomic Redis step (worker/stores/lua/close.lua). A fault hook (a sitecustomize this test puts
on the node's PYTHONPATH) SIGKILLs the whole node, main process and pool, right after the first
ending returns: that job's result is already final in the backend, and every other job ends on
the node started after it."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GREEN_ID
from tests.integration.conftest import Cluster
from tests.support import eventually
from worker.sandbox.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

HOOK = """
import os
import signal

marker = os.environ.get("ARCHIVER_TEST_KILL_AFTER_ENDING")
if marker:
    import worker.stores.endings as endings

    original = endings.Endings.final

    def final(self, *args, **kwargs):
        done = original(self, *args, **kwargs)
        if done and not os.path.exists(marker):
            with open(marker, "w") as written:
                written.write(args[0].task_id)
            os.killpg(os.getpgid(0), signal.SIGKILL)  # the node, between two steps
        return done

    endings.Endings.final = final
"""


@pytest.fixture
def cluster(redis_url: str, simulator: SimulatorHandle, tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(redis_url, simulator, tmp_path)
    yield made
    made.close()


def test_a_node_killed_right_after_an_ending_loses_no_result(
    cluster: Cluster, tmp_path: Path
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(HOOK)
    marker = tmp_path / "killed"
    chats = [f"7916{n:07d}@c.us" for n in range(20)]
    cluster.add_chats("green-api", chats)
    doomed = cluster.start_worker(
        "doomed",
        concurrency=1,
        env={"PYTHONPATH": str(hooks), "ARCHIVER_TEST_KILL_AFTER_ENDING": str(marker)},
    )
    result = cluster.producer.enqueue_many(
        [{"provider": "green-api", "account": GREEN_ID, "chat_id": chat} for chat in chats]
    )
    task_ids = [task_id for _, task_id in result.enqueued]
    eventually(marker.exists, 30, "the fault hook's kill")
    assert doomed.process is not None
    doomed.process.wait(10)
    assert doomed.process.returncode == -signal.SIGKILL
    killed = marker.read_text()
    # The job ended just before the kill: its result is there, final, with nothing else run.
    outcome = cluster.outcome(killed)
    assert outcome is not None and outcome["outcome"] == "archived", outcome
    cluster.start_worker("after", concurrency=2)
    outcomes = cluster.wait_outcomes(task_ids, timeout=60)
    assert all(outcome is not None for outcome in outcomes.values()), outcomes
    assert {o["outcome"] for o in outcomes.values() if o} <= {"archived", "already_archived"}
    assert cluster.calls("green-api", "archiveChat", 200) >= len(chats)
    assert cluster.redis.hlen("chat-archiver:jobs") == 0
