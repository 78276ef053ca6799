"""Account-level outages with real workers (issue 19): a GREEN-API instance asleep under 300
jobs, and a Wassenger account whose api_url points at a route nobody serves. Both pause the
account (the circuit) instead of spending every job's retries: no dead letter, few provider
calls while it lasts, everything archived once it is over."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GREEN_ID, WASSENGER_ID, accounts_toml
from tests.integration.conftest import Cluster
from tests.integration.test_circuit import scrape
from tests.support import eventually
from worker.sandbox.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

JOBS = 300
ASLEEP = 20.0  # seconds: the 30 minutes, shortened with the circuit's cooldowns
QUICK_CIRCUIT = {"ARCHIVER_CIRCUIT_COOLDOWN": "1", "ARCHIVER_CIRCUIT_COOLDOWN_MAX": "2"}


def paused(cluster: Cluster) -> list[dict[str, Any]]:
    status = cluster.cli("status", "--json")
    return list(json.loads(status.stdout)["accounts"]["paused"])


def test_an_instance_asleep_under_300_jobs_parks_them_and_archives_all_when_it_wakes(
    redis_url: str, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    cluster = Cluster(redis_url, simulator, tmp_path, green_rate="1000/s", env=QUICK_CIRCUIT)
    try:
        chats = [f"79{n:011d}@c.us" for n in range(JOBS)]
        cluster.sim.patch_account("green-api", GREEN_ID, rate_limits={"archiveChat": None})
        cluster.add_chats("green-api", chats)
        cluster.start_worker("w1", concurrency=4)
        # The phone is switched off: GREEN-API's getStateInstance says sleepMode, and what an
        # archive call answers meanwhile is not documented (the simulator's choice is a 400).
        cluster.sim.set_status("green-api", GREEN_ID, "sleep_mode", seconds=ASLEEP)
        wakes_at = time.monotonic() + ASLEEP
        cluster.producer.enqueue_many(
            {"provider": "green-api", "account": GREEN_ID, "chat_id": chat} for chat in chats
        )

        eventually(
            lambda: cluster.services_parked() >= JOBS - 1,
            wakes_at - time.monotonic() - 2,
            f"{JOBS} jobs parked while the instance sleeps",
            0.2,
            context=lambda: f"parked {cluster.services_parked()}\n{cluster.logs()[-3000:]}",
        )
        # An operator sees why: the account paused, the instance's state named.
        account = eventually(
            lambda: [
                entry
                for entry in paused(cluster)
                if entry["reason"] == "account_unavailable" and "sleepMode" in entry["detail"]
            ],
            wakes_at - time.monotonic() - 1,
            "the paused account naming sleepMode",
            0.5,
            context=lambda: str(paused(cluster)),
        )[0]
        assert account["account"] == f"green-api:{GREEN_ID}"
        assert cluster.sim.account("green-api", GREEN_ID)["status"] == "sleep_mode"
        asleep_calls = cluster.calls("green-api", "archiveChat")
        state_reads = cluster.calls("green-api", "getStateInstance")
        assert len(cluster.dead_letters) == 0

        eventually(
            lambda: cluster.sim.summary("green-api", GREEN_ID)["archived"] >= JOBS,
            ASLEEP + 120,
            "every chat archived after the instance woke",
            0.5,
            context=lambda: str(cluster.sim.summary("green-api", GREEN_ID)),
        )
        assert len(cluster.dead_letters) == 0
        assert cluster.calls("green-api", "archiveChat", status=200) == JOBS
        # While it slept the provider saw the calls in flight and the probes, not 300 jobs'
        # retries (each would have spent its whole retry budget, then been dead-lettered).
        refused = cluster.calls("green-api", "archiveChat", status=400)
        assert refused <= 30 and asleep_calls <= 30, (refused, asleep_calls)
        assert state_reads <= 30, state_reads
        assert cluster.sim.undocumented_calls() == {}
        eventually(lambda: not paused(cluster), 10, "the account no longer paused", 0.5)
        eventually(lambda: cluster.stored() == 0, 20, "the job store empty", 0.2)
    finally:
        cluster.close()


def test_a_wassenger_route_that_does_not_exist_pauses_the_account_as_misconfigured(
    redis_url: str, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    """The api_url points at a path the simulator does not serve: its router answers a plain
    404. That is the account's configuration, not "chat not found": no job is dead-lettered."""
    cluster = Cluster(redis_url, simulator, tmp_path, env=QUICK_CIRCUIT)
    right = accounts_toml(simulator.url)
    wrong = right.replace(
        f'id = "{WASSENGER_ID}"\napi_url = "{simulator.url}"',
        f'id = "{WASSENGER_ID}"\napi_url = "{simulator.url}/nowhere"',
    )
    assert wrong != right
    cluster.accounts_file.write_text(wrong)
    try:
        chats = [f"4473620{n:05d}@c.us" for n in range(20)]
        cluster.add_chats("wassenger", chats)
        cluster.start_worker("w1", concurrency=2)
        for chat in chats:
            cluster.producer.enqueue(
                {"provider": "wassenger", "account": WASSENGER_ID, "chat_id": chat}
            )
        eventually(
            lambda: cluster.services_parked() >= len(chats) - 1,
            30,
            "the jobs parked",
            0.2,
            context=lambda: cluster.logs()[-3000:],
        )
        [account] = eventually(
            lambda: [entry for entry in paused(cluster) if entry["reason"] == "misconfigured"],
            15,
            "the account paused as misconfigured",
            0.3,
            context=lambda: str(paused(cluster)),
        )
        assert account["account"] == f"wassenger:{WASSENGER_ID}"
        # The detail quotes what was answered, so the operator sees a router's page.
        assert "HTTP 404" in account["detail"] and "Not Found" in account["detail"]
        metrics = scrape(cluster)
        labels = f'account="{WASSENGER_ID}",provider="wassenger",reason="misconfigured"'
        assert f"chat_archiver_account_paused{{{labels}}} 1.0" in metrics
        time.sleep(3)  # a few probes more, still wrong
        assert len(cluster.dead_letters) == 0
        undocumented = cluster.sim.undocumented_calls()
        assert set(undocumented) <= {
            f"PUT /nowhere/v1/io/{WASSENGER_ID}/chats/{chat}/archive" for chat in chats
        }
        assert 1 <= sum(undocumented.values()) <= 12, undocumented
        assert cluster.calls("wassenger", "archive") == 0

        # Someone fixes the api_url: workers reload the file and the next probe goes through.
        cluster.accounts_file.write_text(right)
        eventually(
            lambda: cluster.sim.summary("wassenger", WASSENGER_ID)["archived"] >= len(chats),
            60,
            "every chat archived once the api_url is right",
            0.5,
            context=lambda: f"{paused(cluster)}\n{cluster.logs()[-3000:]}",
        )
        assert len(cluster.dead_letters) == 0
    finally:
        cluster.close()
