"""The simulator's GREEN-API settings and journals over loopback HTTP: getSettings answers the
documented object, and lastIncomingMessages / lastOutgoingMessages hold messages only while their
setting is on and only since it was turned on (worker/sandbox/simulator/journals.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from worker.sandbox.simulator import (
    SimulatorClient,
    SimulatorError,
    SimulatorHandle,
    start_in_thread,
)

GID = "7105187566"
TOKEN = "green-secret-token-1234567890"
DAY = 86400.0
RECENT = "79000000001@c.us"  # a message each way an hour ago
WEEK = "79000000002@c.us"  # incoming 7 days ago, outgoing 6 days ago
OLD = "79000000003@c.us"  # 40 days ago

# Every field of GREEN-API's documented getSettings answer
# (https://green-api.com/en/docs/api/account/GetSettings).
DOCUMENTED_FIELDS = {
    "wid",
    "countryInstance",
    "typeAccount",
    "webhookUrl",
    "webhookUrlToken",
    "delaySendMessagesMilliseconds",
    "markIncomingMessagesReaded",
    "markIncomingMessagesReadedOnReply",
    "sharedSession",
    "outgoingWebhook",
    "outgoingMessageWebhook",
    "outgoingAPIMessageWebhook",
    "incomingWebhook",
    "deviceWebhook",
    "statusInstanceWebhook",
    "stateWebhook",
    "enableMessagesHistory",
    "keepOnlineStatus",
    "pollMessageWebhook",
    "incomingBlockWebhook",
    "incomingCallWebhook",
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    with start_in_thread() as handle:
        yield handle


@pytest.fixture
def admin(sim: SimulatorHandle) -> Iterator[SimulatorClient]:
    with SimulatorClient(sim.url) as client:
        client.delete_accounts()
        client.put_account(
            "green-api",
            GID,
            token=TOKEN,
            rate_limits={"lastIncomingMessages": None, "lastOutgoingMessages": None},
            chats=[
                {"id": RECENT, "last_incoming_days_ago": 0.04, "last_outgoing_days_ago": 0.04},
                {"id": WEEK, "last_incoming_days_ago": 7, "last_outgoing_days_ago": 6},
                {"id": OLD, "last_incoming_days_ago": 40, "last_outgoing_days_ago": 40},
            ],
        )
        yield client


@pytest.fixture
def http(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=10) as client:
        yield client


def journal(http: httpx.Client, direction: str, days: float = 60) -> list[str]:
    method = "lastIncomingMessages" if direction == "incoming" else "lastOutgoingMessages"
    answer = http.get(f"/waInstance{GID}/{method}/{TOKEN}", params={"minutes": int(days * 1440)})
    assert answer.status_code == 200, answer.text
    return [message["chatId"] for message in answer.json()]


def test_get_settings_answers_every_documented_field(admin, http):
    settings = http.get(f"/waInstance{GID}/getSettings/{TOKEN}").json()
    assert set(settings) == DOCUMENTED_FIELDS
    assert settings["wid"] == f"{GID}@c.us"
    assert settings["incomingWebhook"] == settings["outgoingMessageWebhook"] == "yes"


def test_a_setting_given_as_null_is_left_out_and_its_journal_is_off(admin, http):
    admin.patch_account("green-api", GID, settings={"incomingWebhook": None})
    assert "incomingWebhook" not in http.get(f"/waInstance{GID}/getSettings/{TOKEN}").json()
    admin.add_chats("green-api", GID, [{"id": OLD, "last_incoming": time.time()}])
    assert journal(http, "incoming") == [RECENT, WEEK]


def test_journals_are_complete_by_default(admin, http):
    assert journal(http, "incoming") == [RECENT, WEEK, OLD]
    assert journal(http, "outgoing") == [RECENT, WEEK, OLD]


def test_a_setting_turned_off_ends_its_journal_and_on_again_starts_it_anew(admin, http):
    admin.patch_account("green-api", GID, settings={"incomingWebhook": "no"})
    assert http.get(f"/waInstance{GID}/getSettings/{TOKEN}").json()["incomingWebhook"] == "no"
    # What was recorded while it was on stays; the outgoing journal is untouched.
    assert journal(http, "incoming") == [RECENT, WEEK, OLD]
    assert journal(http, "outgoing") == [RECENT, WEEK, OLD]
    # A message arrives while the setting is off: never recorded, so the chat drops out (the
    # simulator knows each chat's newest message only).
    admin.add_chats(
        "green-api", GID, [{"id": WEEK, "last_incoming": time.time(), "last_outgoing_days_ago": 6}]
    )
    assert journal(http, "incoming") == [RECENT, OLD]
    # On again: only what arrives from now on.
    admin.patch_account("green-api", GID, settings={"incomingWebhook": "yes"})
    assert journal(http, "incoming") == []
    admin.add_chats("green-api", GID, [{"id": OLD, "last_incoming": time.time() + 1}])
    assert journal(http, "incoming") == [OLD]


def test_outgoing_journal_follows_messages_sent_from_phone(admin, http):
    admin.patch_account("green-api", GID, settings={"outgoingMessageWebhook": "no"})
    admin.patch_account("green-api", GID, settings={"outgoingMessageWebhook": "yes"})
    assert journal(http, "outgoing") == []
    assert journal(http, "incoming") == [RECENT, WEEK, OLD]


def test_an_instance_created_with_a_setting_off_has_an_empty_journal(admin, http):
    admin.put_account(
        "green-api",
        GID,
        token=TOKEN,
        settings={"incomingWebhook": "no"},
        chats=[{"id": RECENT, "last_incoming_days_ago": 0.04, "last_outgoing_days_ago": 0.04}],
    )
    assert journal(http, "incoming") == []
    assert journal(http, "outgoing") == [RECENT]


def test_journals_that_began_n_days_ago(admin, http):
    admin.patch_account("green-api", GID, journals={"since_days_ago": 10})
    assert journal(http, "incoming") == [RECENT, WEEK]
    assert journal(http, "outgoing") == [RECENT, WEEK]
    admin.patch_account("green-api", GID, journals={"outgoing_since_days_ago": 1})
    assert journal(http, "outgoing") == [RECENT]
    assert journal(http, "incoming") == [RECENT, WEEK]
    admin.patch_account("green-api", GID, journals={"since_days_ago": None})
    assert journal(http, "incoming") == journal(http, "outgoing") == [RECENT, WEEK, OLD]
    info = admin.account("green-api", GID)["journals"]
    assert info["incoming"] == {"since": None, "until": None}


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"journals": {"since_days_ago": -1}}, "journals.incoming_since_days_ago must be"),
        ({"journals": {"since": 3}}, "unknown journals fields: since"),
        ({"journals": [1]}, "journals is a JSON object"),
        (
            {"settings": {"incomingWebhook": True}},
            "settings.incomingWebhook must be 'yes', 'no' or null",
        ),
    ],
)
def test_bad_journal_switches_are_refused_and_change_nothing(admin, changes, error):
    with pytest.raises(SimulatorError, match=error) as raised:
        admin.patch_account("green-api", GID, **changes)
    assert raised.value.status == 400
    assert admin.account("green-api", GID)["journals"]["incoming"]["since"] is None
