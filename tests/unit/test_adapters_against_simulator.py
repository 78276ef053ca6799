"""Both adapters against the strict simulator over loopback HTTP: every call they make is on a
documented route (0 undocumented calls), and each awkward state the simulator can be put in
ends in the outcome issue 19 asks for."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from config import Account, Secret, parse_rate
from tasks.providers import GreenApiAdapter, WassengerAdapter
from worker.contract.outcomes import (
    ACCOUNT_UNAVAILABLE,
    ALREADY_ARCHIVED,
    ALREADY_UNARCHIVED,
    ARCHIVED,
    CHAT_NOT_FOUND,
    MISCONFIGURED,
    UNARCHIVED,
    Reason,
)
from worker.sandbox.simulator import SimulatorClient, SimulatorHandle, start_in_thread

GID = "7105187566"
DEV = "61b37a069cba0c15d6c81c8e"
TOKEN = "CANARYsimulat0rT0ken123"
CHAT = "79001234567@c.us"
OTHER = "79001234568@c.us"


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorHandle]:
    with start_in_thread() as handle:
        yield handle


@pytest.fixture
def sim(simulator: SimulatorHandle) -> Iterator[SimulatorClient]:
    with SimulatorClient(simulator.url) as client:
        client.delete_accounts()
        chats = [{"id": CHAT}, {"id": OTHER}]
        green_limits = {"archiveChat": None, "getStateInstance": None, "getContactInfo": None}
        wassenger_limits = {"archive": None, "listDevices": None, "getChat": None}
        client.put_account("green-api", GID, token=TOKEN, chats=chats, rate_limits=green_limits)
        client.put_account("wassenger", DEV, token=TOKEN, chats=chats, rate_limits=wassenger_limits)
        client.reset_counters()
        yield client


def accounts(url: str) -> dict[str, Account]:
    return {
        "green-api": Account(
            "green-api", GID, url, Secret(TOKEN), {"archiveChat": parse_rate("10/s")}
        ),
        "wassenger": Account("wassenger", DEV, url, Secret(TOKEN), {"archive": parse_rate("5/s")}),
    }


ADAPTERS = {"green-api": GreenApiAdapter(), "wassenger": WassengerAdapter()}


@pytest.mark.parametrize("provider", ["green-api", "wassenger"])
def test_archive_unarchive_and_read_back_use_documented_routes_only(
    simulator: SimulatorHandle, sim: SimulatorClient, provider: str
) -> None:
    adapter, account = ADAPTERS[provider], accounts(simulator.url)[provider]
    account_id = account.id
    with httpx.Client(timeout=5) as client:
        assert adapter.archived_state(client, account, CHAT) is False
        assert adapter.archive(client, account, CHAT).verdict == ARCHIVED
        assert adapter.archived_state(client, account, CHAT) is True
        assert adapter.archive(client, account, CHAT).verdict == ALREADY_ARCHIVED
        assert adapter.unarchive(client, account, CHAT).verdict == UNARCHIVED
        assert adapter.unarchive(client, account, CHAT).verdict == ALREADY_UNARCHIVED
        assert adapter.archived_state(client, account, CHAT) is False
        assert adapter.archive(client, account, "79999999999@c.us").verdict == CHAT_NOT_FOUND
        assert adapter.account_state(client, account).usable is True
    assert sim.chat(provider, account_id, CHAT)["archived"] is False
    counters = sim.counters()
    assert counters["undocumented"] == {} and counters["totals"]["undocumented"] == 0
    assert len(counters["routes"]) == 4  # archive, unarchive, the flag's read, the state's read


@pytest.mark.parametrize(
    ("provider", "status", "shown"),
    [
        ("green-api", "sleep_mode", "stateInstance sleepMode"),
        ("green-api", "blocked", "stateInstance blocked"),
        ("green-api", "starting", "instance starting"),
        ("green-api", "not_authorized", "instance not authorized"),
        ("wassenger", "not_operative", "device verified, session offline"),
        ("wassenger", "device_unregistered", "device not usable"),
    ],
)
def test_an_account_outage_pauses_the_account_naming_its_state(
    simulator: SimulatorHandle, sim: SimulatorClient, provider: str, status: str, shown: str
) -> None:
    adapter, account = ADAPTERS[provider], accounts(simulator.url)[provider]
    sim.set_status(provider, account.id, status, seconds=30)
    with httpx.Client(timeout=5) as client:
        for call in (adapter.archive, adapter.unarchive):
            answer = call(client, account, CHAT)
            assert answer.verdict == ACCOUNT_UNAVAILABLE, answer
            assert shown in answer.meaning
        assert adapter.account_state(client, account).usable is False
    assert sim.undocumented_calls() == {}


@pytest.mark.parametrize("provider", ["green-api", "wassenger"])
def test_a_route_the_simulator_does_not_serve_is_misconfigured(
    simulator: SimulatorHandle, sim: SimulatorClient, provider: str
) -> None:
    """An api_url pointing at a path nobody serves: a router's 404, never chat_not_found."""
    adapter = ADAPTERS[provider]
    account = replace(accounts(simulator.url)[provider], api_url=f"{simulator.url}/nowhere")
    with httpx.Client(timeout=5) as client:
        answer = adapter.archive(client, account, CHAT)
    assert answer.verdict == MISCONFIGURED and answer.verdict.reason is Reason.MISCONFIGURED
    assert answer.status == 404 and "Not Found" in answer.meaning
    undocumented = sim.undocumented_calls()
    assert len(undocumented) == 1 and TOKEN not in next(iter(undocumented))


@pytest.mark.parametrize("provider", ["green-api", "wassenger"])
def test_a_false_already_archived_is_visible_to_the_read_back(
    simulator: SimulatorHandle, sim: SimulatorClient, provider: str
) -> None:
    adapter, account = ADAPTERS[provider], accounts(simulator.url)[provider]
    sim.false_already_archived(provider, account.id, count=1)
    with httpx.Client(timeout=5) as client:
        assert adapter.archive(client, account, CHAT).verdict == ALREADY_ARCHIVED
        assert adapter.archived_state(client, account, CHAT) is False
        assert adapter.archive(client, account, CHAT).verdict == ARCHIVED
        assert adapter.archived_state(client, account, CHAT) is True
