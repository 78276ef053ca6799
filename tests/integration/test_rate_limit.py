"""The shared limit holds a strict provider window across worker nodes: the simulator answers 429
above 10 calls in any sliding second, and a burst on a cold account, spread over three nodes,
draws none. Counts, not timings. (Utilisation, and six nodes: benchmarks/bench_window.py.)

It runs alone (make test runs the ``alone`` tests after the rest): the limit keeps 20 ms a second
of slack for what happens after a call is sent, and another test file saturating both cores can
delay the simulator's own handling by more than that, which the strict window then counts."""

from __future__ import annotations

import pytest

from tests.conftest import GREEN_ID
from tests.integration.conftest import Cluster
from worker.sandbox.local import WORKER_READY

pytestmark = [pytest.mark.integration, pytest.mark.alone]

BURST = 40


def test_a_cold_burst_over_three_nodes_draws_no_429(fresh_cluster: Cluster) -> None:
    cluster = fresh_cluster
    chats = [f"7912{n:07d}@c.us" for n in range(BURST)]
    cluster.add_chats("green-api", chats)
    nodes = [cluster.start_worker(f"w{n}", concurrency=2, wait=False) for n in (1, 2, 3)]
    for node in nodes:
        node.wait_for_log(WORKER_READY, timeout=60)
    cluster.sim.reset_counters()
    result = cluster.producer.enqueue_many(
        [{"provider": "green-api", "account": GREEN_ID, "chat_id": chat} for chat in chats]
    )
    outcomes = [cluster.result(task_id, timeout=60) for _, task_id in result.enqueued]
    assert [o["outcome"] for o in outcomes] == ["archived"] * BURST
    counter = cluster.sim.counters()["accounts"][f"green-api:{GREEN_ID}"]["archiveChat"]
    # Each refused call would carry the ages of the calls its window held (refusals_ms).
    assert counter["rate_limited"] == 0, counter.get("refusals_ms")
    assert counter["calls"] == BURST  # one call per chat: none refused, none repeated
    assert counter["peak_1s"] <= 10
    # The three nodes shared the work: the limit held across processes, not inside one.
    assert sum(1 for node in nodes if "succeeded in" in node.log()) >= 2
