"""The provider simulator over real loopback HTTP: every documented answer of both APIs, the
sliding-window limiter and its counters, fault injection, listings and the admin API."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from worker.sandbox.simulator import (
    SimulatorClient,
    SimulatorError,
    SimulatorHandle,
    SimulatorState,
    generate_chats,
    load_scenario,
    mask_path,
    start_in_thread,
)

GID = "7105187566"
GTOKEN = "green-secret-token-1234567890"
DEV = "0123456789abcdef01234567"
WTOKEN = "wassenger-secret-key-abcdef"
USER = "79001234567@c.us"
GROUP = "120363043968066561@g.us"
CHANNEL = "120363999999999999@newsletter"
NO_MSG = "79005550000@c.us"
UNLIMITED_GREEN = {
    m: None
    for m in (
        "archiveChat",
        "unarchiveChat",
        "getChats",
        "lastIncomingMessages",
        "lastOutgoingMessages",
        "getChatHistory",
        "getStateInstance",
        "getSettings",
        "getContactInfo",
    )
}
UNLIMITED_WASSENGER = {
    m: None for m in ("archive", "unarchive", "getChat", "listChats", "listDevices")
}


def base_chats(now: float) -> list[dict[str, Any]]:
    return [
        {"id": USER, "last_incoming": now - 60, "last_outgoing": now - 120, "unread": 2},
        {"id": GROUP, "last_incoming": now - 3600, "name": "Team"},
        {"id": CHANNEL, "last_incoming": now - 10},
        {"id": NO_MSG, "has_incoming": False, "last_outgoing": now - 7200},
        {"id": "79000000000@c.us", "archived": True, "last_incoming": now - 50 * 86400},
    ]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    with start_in_thread() as handle:
        yield handle


@pytest.fixture
def admin(sim: SimulatorHandle) -> Iterator[SimulatorClient]:
    with SimulatorClient(sim.url) as client:
        client.delete_accounts()
        client.reset_counters()
        now = time.time()
        client.put_account(
            "green-api", GID, token=GTOKEN, rate_limits=UNLIMITED_GREEN, chats=base_chats(now)
        )
        client.put_account(
            "wassenger", DEV, token=WTOKEN, rate_limits=UNLIMITED_WASSENGER, chats=base_chats(now)
        )
        yield client


@pytest.fixture
def http(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=10.0) as client:
        yield client


def green(http: httpx.Client, method: str, body: Any = None, token: str = GTOKEN, **kw: Any):
    path = f"/waInstance{GID}/{method}/{token}"
    if body is None and method not in ("archiveChat", "unarchiveChat", "getChatHistory"):
        return http.get(path, **kw)
    return http.post(path, json=body, **kw)


def archive(http: httpx.Client, chat_id: Any, token: str = GTOKEN) -> httpx.Response:
    return green(http, "archiveChat", {"chatId": chat_id}, token=token)


def wass(
    http: httpx.Client, verb: str, chat_id: str, token: str | None = WTOKEN, device: str = DEV
) -> httpx.Response:
    headers = {} if token is None else {"Token": token}
    return http.request(verb, f"/v1/io/{device}/chats/{chat_id}/archive", headers=headers)


def message(response: httpx.Response) -> str:
    return response.json()["message"]


# ----- GREEN-API archiveChat / unarchiveChat -----------------------------------------------------


def test_green_archive_success_is_empty_200_and_archives(admin, http):
    response = archive(http, USER)
    assert response.status_code == 200
    assert response.content == b""
    assert admin.chat("green-api", GID, USER)["archived"] is True


def test_green_already_archived(admin, http):
    archive(http, USER)
    response = archive(http, USER)
    assert response.status_code == 400
    assert message(response) == f"ArchiveChatError: chat with id {USER} already archive=true"


def test_green_unarchive_and_already_unarchived(admin, http):
    archive(http, GROUP)
    assert green(http, "unarchiveChat", {"chatId": GROUP}).status_code == 200
    assert admin.chat("green-api", GID, GROUP)["archived"] is False
    response = green(http, "unarchiveChat", {"chatId": GROUP})
    assert response.status_code == 400
    assert message(response) == f"UnarchiveChatError: chat with id {GROUP} already archive=false"


def test_green_chat_not_found(admin, http):
    response = archive(http, "79999999999@c.us")
    assert response.status_code == 400
    assert message(response) == "ArchiveChatError: chat with id 79999999999@c.us not found"


def test_green_last_message_not_found(admin, http):
    response = archive(http, NO_MSG)
    assert response.status_code == 400
    assert "last message not found" in message(response)
    assert admin.chat("green-api", GID, NO_MSG)["archived"] is False


@pytest.mark.parametrize(
    "body",
    [{}, {"chatId": ""}, {"chatId": "79001234567"}, {"chatId": "abc@s.whatsapp.net"}, None],
    ids=["missing", "empty", "no-suffix", "wrong-suffix", "no-body"],
)
def test_green_validation_failed(admin, http, body):
    response = http.post(f"/waInstance{GID}/archiveChat/{GTOKEN}", json=body)
    assert response.status_code == 400
    assert "Validation failed" in message(response)


def test_green_invalid_json_is_validation_failed(admin, http):
    response = http.post(f"/waInstance{GID}/archiveChat/{GTOKEN}", content=b"{not json")
    assert response.status_code == 400
    assert "Validation failed" in message(response)


def test_green_lid_chat_id_is_valid(admin, http):
    response = archive(http, "123456789012345@lid")
    assert response.status_code == 400
    assert "not found" in message(response)


@pytest.mark.parametrize(
    ("chat_id", "go_type"),
    [(79001234567, "float64"), (True, "bool"), ({"a": 1}, "map[string]interface {}")],
)
def test_green_wrong_json_type_is_500_interface_conversion(admin, http, chat_id, go_type):
    response = archive(http, chat_id)
    assert response.status_code == 500
    assert message(response) == f"interface conversion: interface {{}} is {go_type}, not string"


def test_green_wrong_token_is_401_without_the_token(admin, http):
    response = archive(http, USER, token="wrong-token-value")
    assert response.status_code == 401
    assert response.text == "Unauthorized"
    assert "wrong-token-value" not in response.text


def test_green_unknown_instance_is_403(admin, http):
    response = http.post(f"/waInstance1101999999/archiveChat/{GTOKEN}", json={"chatId": USER})
    assert response.status_code == 403
    assert response.text == "Forbidden"


def test_green_unknown_method_is_404(admin, http):
    response = http.post(f"/waInstance{GID}/archiveChats/{GTOKEN}", json={"chatId": USER})
    assert response.status_code == 404
    assert response.text == "Not Found"


@pytest.mark.parametrize(
    ("status", "text"),
    [
        ("starting", "instance in starting process try later"),
        ("not_authorized", "instance account not authorized"),
        ("expired", "Instance account is expired"),
        ("deleted", "Instance is deleted"),
    ],
)
def test_green_account_status_errors(admin, http, status, text):
    admin.patch_account("green-api", GID, status=status)
    response = archive(http, USER)
    assert response.status_code == 400
    assert text in message(response)
    assert admin.chat("green-api", GID, USER)["archived"] is False


def test_green_quota_exceeded_is_466(admin, http):
    admin.patch_account("green-api", GID, status="quota_exceeded")
    response = archive(http, USER)
    assert response.status_code == 466
    body = response.json()
    assert body["invokeStatus"]["status"] == "QUOTE_EXCEEDED"
    assert "correspondentsStatus" in body
    assert "QUOTE_EXCEEDED" in response.text


# ----- rate limits and counters -----------------------------------------------------------------


def test_sliding_window_429_and_counters(admin, http):
    admin.patch_account("green-api", GID, rate_limits={"archiveChat": 5})
    statuses = [archive(http, f"7900000000{i:03d}@c.us").status_code for i in range(8)]
    assert statuses[:5] == [400] * 5  # unknown chats, but accepted calls
    assert statuses[5:] == [429] * 3
    response = archive(http, USER)
    assert response.status_code == 429
    assert response.text == "Too Many Requests"
    assert "retry-after" not in response.headers
    counters = admin.counters()
    method = counters["accounts"][f"green-api:{GID}"]["archiveChat"]
    assert method["calls"] == 9
    assert method["rate_limited"] == 4
    assert method["peak_1s"] == 5
    assert method["by_status"] == {"400": 5, "429": 4}
    # Each refused call keeps the ages (ms) of the 5 calls its window held, oldest first.
    refusals = method["refusals_ms"]
    assert len(refusals) == 4 and all(len(ages) == 5 for ages in refusals)
    assert all(
        ages == sorted(ages, reverse=True) and 0 <= ages[-1] < ages[0] < 1000 for ages in refusals
    )
    assert counters["totals"] == {"calls": 9, "rate_limited": 4, "unmatched": 0, "undocumented": 0}
    assert counters["routes"] == {"POST /waInstance{idInstance}/archiveChat/{apiTokenInstance}": 9}
    time.sleep(1.05)  # the window slides: the first calls left it
    assert archive(http, USER).status_code == 200
    assert admin.counters()["accounts"][f"green-api:{GID}"]["archiveChat"]["peak_1s"] == 5


def test_counters_reset(admin, http):
    archive(http, USER)
    admin.reset_counters()
    assert admin.counters() == {
        "accounts": {},
        "totals": {"calls": 0, "rate_limited": 0, "unmatched": 0, "undocumented": 0},
        "routes": {},
        "undocumented": {},
    }


def test_default_listing_limit_is_one_per_second(admin, http):
    admin.put_account("green-api", "1101000001", token="t")
    first = http.get("/waInstance1101000001/getChats/t")
    second = http.get("/waInstance1101000001/getChats/t")
    assert (first.status_code, second.status_code) == (200, 429)


# ----- faults -----------------------------------------------------------------------------------


def test_fail_next_burst_then_success(admin, http):
    admin.patch_account("green-api", GID, faults={"fail_next": [503, 502, 500]})
    first, second, third = (archive(http, USER) for _ in range(3))
    assert (first.status_code, first.text) == (503, "Service Unavailable")
    assert (second.status_code, second.text) == (502, "Bad Gateway")
    assert third.status_code == 500
    assert "interface conversion" not in third.text
    assert admin.chat("green-api", GID, USER)["archived"] is False
    assert archive(http, USER).status_code == 200


def test_echo_next_quotes_the_request_in_each_form_then_stops(admin, http):
    """The echo fault answers 400 quoting the token-bearing part of the request (GREEN-API's
    path, Wassenger's Token header) in the form asked, once per form, then archives again."""
    forms = ["raw", "percent", "percent_lower", "json", "basic", "bearer"]
    admin.patch_account("green-api", GID, faults={"echo_next": forms})
    assert admin.account("green-api", GID)["faults"]["echo_next"] == forms
    path = f"/waInstance{GID}/archiveChat/{GTOKEN}"
    expected = {
        "raw": path,
        "percent": "".join(f"%{byte:02X}" for byte in path.encode()),
        "percent_lower": "".join(f"%{byte:02x}" for byte in path.encode()),
        "json": '"' + path.replace("/", "\\/") + '"',
        "basic": "Authorization: Basic " + base64.b64encode(f"{GID}:{GTOKEN}".encode()).decode(),
        "bearer": f"Authorization: Bearer {GTOKEN}",
    }
    for form in forms:
        response = archive(http, USER)
        assert response.status_code == 400
        assert response.text == f"echo ({form}): {expected[form]}"
    assert json.loads(expected["json"]) == path
    assert archive(http, USER).status_code == 200

    admin.patch_account("wassenger", DEV, faults={"echo_next": ["percent"]})
    echoed = wass(http, "PUT", USER)
    header = f"Token: {WTOKEN}"
    assert echoed.status_code == 400
    assert echoed.text == "echo (percent): " + "".join(f"%{b:02X}" for b in header.encode())
    assert wass(http, "PUT", USER).status_code == 200
    with pytest.raises(SimulatorError, match="echo_next"):
        admin.patch_account("wassenger", DEV, faults={"echo_next": ["rot13"]})


def test_error_ratio_generates_5xx_without_interface_conversion(admin, http):
    admin.patch_account(
        "green-api", GID, faults={"error_ratio": 1.0, "error_statuses": [500], "seed": 3}
    )
    for _ in range(3):
        response = archive(http, USER)
        assert response.status_code == 500
        assert "interface conversion" not in response.text


def test_outage_answers_503_to_everything_until_it_ends(admin, http):
    admin.patch_account("green-api", GID, faults={"outage_until": time.time() + 0.6})
    assert archive(http, USER).status_code == 503
    assert green(http, "getChats").status_code == 503
    time.sleep(0.7)
    assert archive(http, USER).status_code == 200


def test_timeout_after_success_applies_the_archive(admin, sim):
    admin.patch_account("green-api", GID, faults={"timeout_after_success_ms": 800})
    with (
        httpx.Client(base_url=sim.url, timeout=0.2) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        archive(impatient, USER)
    assert admin.chat("green-api", GID, USER)["archived"] is True
    with httpx.Client(base_url=sim.url, timeout=5) as client:
        retry = archive(client, USER)
    assert retry.status_code == 400
    assert "already archive=true" in message(retry)


def test_latency_of_one_account_does_not_block_another(admin, sim):
    admin.patch_account("green-api", GID, faults={"latency_ms": 600})

    def slow_call() -> httpx.Response:
        with httpx.Client(base_url=sim.url) as client:
            return archive(client, USER)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow_started = time.perf_counter()
        slow = pool.submit(slow_call)
        time.sleep(0.05)
        with httpx.Client(base_url=sim.url) as client:
            fast_started = time.perf_counter()
            fast = wass(client, "PUT", USER)
            fast_elapsed = time.perf_counter() - fast_started
        assert fast.status_code == 200
        assert fast_elapsed < 0.3
        assert slow.result().status_code == 200
        assert time.perf_counter() - slow_started >= 0.6


# ----- GREEN-API listings -----------------------------------------------------------------------


def test_get_chats_order_types_and_no_channels(admin, http):
    chats = green(http, "getChats").json()
    assert [c["id"] for c in chats] == [USER, GROUP, NO_MSG, "79000000000@c.us"]
    assert {c["type"] for c in chats} == {"user", "group"}
    assert chats[1] == {"id": GROUP, "name": "Team", "type": "group", "archive": False}
    assert chats[3]["archive"] is True
    assert all("timestamp" not in c for c in chats)
    assert [c["id"] for c in green(http, "getChats", params={"count": 2}).json()] == [USER, GROUP]


def test_last_incoming_and_outgoing_window(admin, http):
    incoming = green(http, "lastIncomingMessages", params={"minutes": 90}).json()
    assert [m["chatId"] for m in incoming] == [USER, GROUP]  # channel and no-message chat absent
    first = incoming[0]
    assert first["type"] == "incoming"
    assert first["typeMessage"] == "textMessage"
    assert isinstance(first["timestamp"], int)
    assert {"idMessage", "textMessage"} <= set(first)
    outgoing = green(http, "lastOutgoingMessages", params={"minutes": 150}).json()
    assert [m["chatId"] for m in outgoing] == [USER, NO_MSG]
    assert outgoing[0]["type"] == "outgoing"
    assert green(http, "lastIncomingMessages", params={"minutes": 0}).json() == []


def test_last_incoming_caps_at_10000_newest_first(admin, http):
    admin.put_account(
        "green-api",
        "1101000002",
        token="t",
        rate_limits={"lastIncomingMessages": None},
        generate={"count": 12_000, "inactive_ratio": 0.0, "active_days": 0.001, "seed": 5},
    )
    messages = http.get("/waInstance1101000002/lastIncomingMessages/t?minutes=10").json()
    assert len(messages) == 10_000
    stamps = [m["timestamp"] for m in messages]
    assert stamps == sorted(stamps, reverse=True)


def test_get_chat_history(admin, http):
    history = green(http, "getChatHistory", {"chatId": USER, "count": 10}).json()
    assert [m["type"] for m in history] == ["incoming", "outgoing"]
    assert len(green(http, "getChatHistory", {"chatId": USER, "count": 1}).json()) == 1
    missing = green(http, "getChatHistory", {"chatId": "79999999999@c.us", "count": 1})
    assert missing.status_code == 400
    assert "not found" in message(missing)


@pytest.mark.parametrize(
    ("status", "state"),
    [("authorized", "authorized"), ("not_authorized", "notAuthorized"), ("starting", "starting")],
)
def test_get_state_instance(admin, http, status, state):
    admin.patch_account("green-api", GID, status=status)
    assert green(http, "getStateInstance").json() == {"stateInstance": state}


def test_get_settings(admin, http):
    settings = green(http, "getSettings").json()
    assert settings["incomingWebhook"] == "yes"
    admin.patch_account("green-api", GID, settings={"incomingWebhook": "no"})
    assert green(http, "getSettings").json()["incomingWebhook"] == "no"


def test_listing_methods_check_token_and_status(admin, http):
    assert green(http, "getChats", token="nope").status_code == 401
    admin.patch_account("green-api", GID, status="not_authorized")
    response = green(http, "getChats")
    assert response.status_code == 400
    assert "not authorized" in message(response)


def test_get_chats_of_100000_chats_is_fast(admin, http):
    admin.put_account(
        "green-api",
        "1101000003",
        token="t",
        rate_limits={"getChats": None},
        generate={"count": 100_000, "seed": 2},
    )
    started = time.perf_counter()
    response = http.get("/waInstance1101000003/getChats/t")
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert len(response.json()) == 100_000
    assert elapsed < 1.0


# ----- Wassenger --------------------------------------------------------------------------------


def test_wassenger_archive_returns_the_chat(admin, http):
    response = wass(http, "PUT", USER)
    assert response.status_code == 200
    chat = response.json()
    assert chat["id"] == USER
    assert chat["waStatus"] == "archived"
    assert chat["meta"] == {"isArchived": True, "unreadCount": 2}
    assert admin.chat("wassenger", DEV, USER)["archived"] is True


def test_wassenger_percent_encoded_chat_id(admin, http):
    assert wass(http, "PUT", GROUP.replace("@", "%40")).status_code == 200
    assert admin.chat("wassenger", DEV, GROUP)["archived"] is True


def test_wassenger_already_archived_is_409(admin, http):
    wass(http, "PUT", USER)
    response = wass(http, "PUT", USER)
    assert response.status_code == 409
    assert response.json() == {
        "status": 409,
        "message": "Chat is already archived",
        "errorCode": "chat:already_archived",
    }


def test_wassenger_unarchive(admin, http):
    wass(http, "PUT", USER)
    response = wass(http, "DELETE", USER)
    assert response.status_code == 200
    assert response.json()["waStatus"] == "active"
    again = wass(http, "DELETE", USER)
    assert again.status_code == 409
    assert message(again) == "Chat is not archived"


def test_wassenger_chat_not_found(admin, http):
    response = wass(http, "PUT", "79999999999@c.us")
    assert response.status_code == 404
    assert response.json() == {"status": 404, "message": "Chat not found"}


def test_wassenger_invalid_chat_id(admin, http):
    response = wass(http, "PUT", "not-a-chat-id")
    assert response.status_code == 400
    assert response.json() == {"status": 400, "message": "Invalid chat ID"}


def test_wassenger_channel_can_be_archived(admin, http):
    assert wass(http, "PUT", CHANNEL).status_code == 200


def test_wassenger_unknown_device_is_404(admin, http):
    response = wass(http, "PUT", USER, device="ffffffffffffffffffffffff")
    assert response.status_code == 404
    assert message(response) == "Device not found"


@pytest.mark.parametrize("token", ["wrong-key-value", None])
def test_wassenger_bad_or_missing_token_is_401(admin, http, token):
    response = wass(http, "PUT", USER, token=token)
    assert response.status_code == 401
    assert response.json() == {
        "status": 401,
        "message": "Unauthorized: invalid API key",
        "errorCode": "auth:invalid_token",
    }
    assert "wrong-key-value" not in response.text


def test_wassenger_token_query_parameter_is_not_accepted(admin, http):
    response = http.put(f"/v1/io/{DEV}/chats/{USER}/archive", params={"token": WTOKEN})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("status", "code", "text", "error_code"),
    [
        ("device_unregistered", 400, "Device not registered or offline", None),
        (
            "plan_required",
            402,
            "Device plan does not support this feature",
            "billing:plan_required",
        ),
        ("not_authorized", 403, "Forbidden", "auth:forbidden"),
        ("expired", 403, "Forbidden", "auth:forbidden"),
        ("deleted", 403, "Forbidden", "auth:forbidden"),
    ],
)
def test_wassenger_account_status_errors(admin, http, status, code, text, error_code):
    admin.patch_account("wassenger", DEV, status=status)
    response = wass(http, "PUT", USER)
    assert response.status_code == code
    body = response.json()
    assert body["status"] == code
    assert body["message"].startswith(text)
    assert body.get("errorCode") == error_code


def test_wassenger_429_with_retry_after_only_when_set(admin, http):
    admin.patch_account("wassenger", DEV, rate_limits={"archive": 1})
    wass(http, "PUT", USER)
    limited = wass(http, "PUT", GROUP)
    assert limited.status_code == 429
    assert limited.json() == {"status": 429, "message": "Too many requests"}
    assert "retry-after" not in limited.headers
    admin.patch_account("wassenger", DEV, retry_after=2.5)
    limited = wass(http, "PUT", GROUP)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"


def test_wassenger_injected_5xx_is_json(admin, http):
    admin.patch_account("wassenger", DEV, faults={"fail_next": [503, 504]})
    first, second = wass(http, "PUT", USER), wass(http, "PUT", USER)
    assert first.json() == {"status": 503, "message": "Service Unavailable"}
    assert second.status_code == 504
    assert wass(http, "PUT", USER).status_code == 200


def test_wassenger_devices(admin, http):
    devices = http.get("/v1/devices", headers={"Token": WTOKEN}).json()
    assert len(devices) == 1
    device = devices[0]
    assert device["id"] == DEV
    assert device["status"] == "operative"
    assert device["session"] == {"status": "online"}
    assert device["billing"] == {"subscription": {"product": "io"}}
    assert {"phone", "alias"} <= set(device)
    admin.patch_account("wassenger", DEV, status="device_unregistered")
    device = http.get("/v1/devices", headers={"Token": WTOKEN}).json()[0]
    assert device["session"]["status"] != "online"
    assert http.get("/v1/devices", headers={"Token": "nope"}).status_code == 401


def test_wassenger_chat_listing_fields(admin, http):
    page = http.get(f"/v1/chat/{DEV}/chats", headers={"Token": WTOKEN}, params={"size": 100})
    chats = {c["id"]: c for c in page.json()}
    assert set(chats) == {c["id"] for c in base_chats(0)}
    assert chats[CHANNEL]["type"] == "channel"
    assert chats[GROUP]["type"] == "group"
    assert chats[USER]["type"] == "chat"
    archived = chats["79000000000@c.us"]
    assert archived["waStatus"] == "archived"
    assert archived["meta"]["isArchived"] is True
    assert archived["lastMessageAt"].endswith("Z")
    assert set(chats[USER]) == {
        "id",
        "type",
        "name",
        "lastMessageAt",
        "status",
        "waStatus",
        "labels",
        "meta",
    }


def test_wassenger_pagination_sort_and_filters(admin, http):
    admin.put_account(
        "wassenger",
        DEV,
        token=WTOKEN,
        rate_limits={"listChats": None},
        generate={"count": 250, "group_ratio": 0.2, "channel_ratio": 0.1, "seed": 9},
    )

    def pages(**params: Any) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        page = 0
        while True:
            batch = http.get(
                f"/v1/chat/{DEV}/chats",
                headers={"Token": WTOKEN},
                params={"size": 100, "page": page, **params},
            ).json()
            found.extend(batch)
            if len(batch) < 100:
                return found
            page += 1

    ascending = pages(sort="lastMessageAt:asc")
    assert len(ascending) == 250
    assert len({c["id"] for c in ascending}) == 250
    stamps = [c["lastMessageAt"] for c in ascending]
    assert stamps == sorted(stamps)
    descending = pages(sort="lastMessageAt:desc")
    assert [c["id"] for c in descending] == [c["id"] for c in reversed(ascending)]
    assert pages(sort="lastMessageAt:asc") == ascending  # stable while nothing changes
    groups = pages(type="group")
    assert len(groups) == 50
    assert {c["type"] for c in groups} == {"group"}
    assert len(pages(type="group,channel")) == 75
    assert pages(status="resolved") == []
    assert len(pages(status="active,resolved")) == 250
    too_big = http.get(f"/v1/chat/{DEV}/chats", headers={"Token": WTOKEN}, params={"size": 501})
    assert too_big.status_code == 400
    full = http.get(f"/v1/chat/{DEV}/chats", headers={"Token": WTOKEN}, params={"size": 500})
    assert len(full.json()) == 250


# ----- admin API, generate, scenarios -----------------------------------------------------------


def test_generate_counts_match_summary_and_truth(admin):
    spec = {
        "count": 5000,
        "inactive_ratio": 0.3,
        "group_ratio": 0.1,
        "channel_ratio": 0.05,
        "archived_ratio": 0.1,
        "seed": 4,
    }
    admin.put_account("wassenger", DEV, token=WTOKEN, generate=spec)
    summary = admin.summary("wassenger", DEV, days=30)
    assert summary["chats"] == 5000
    assert summary["archived"] == 500
    assert summary["by_kind"] == {"user": 4250, "group": 500, "channel": 250}
    truth = admin.inactive("wassenger", DEV, days=30)
    assert summary["inactive"] == len(truth)
    local = [
        c.id
        for c in generate_chats(spec)
        if c.kind != "channel" and not c.archived and c.last_activity < time.time() - 30 * 86400
    ]
    assert sorted(local) == truth
    # every inactive chat is older than inactive_days, every active one newer than active_days
    assert admin.summary("wassenger", DEV, days=44.9)["inactive"] == len(truth)
    assert admin.summary("wassenger", DEV, days=2.1)["inactive"] == len(truth)


def test_generated_ids_and_determinism():
    chats = generate_chats({"count": 200, "group_ratio": 0.5, "seed": 1}, now=1_000_000_000.0)
    again = generate_chats({"count": 200, "group_ratio": 0.5, "seed": 1}, now=1_000_000_000.0)
    assert [c.to_dict() for c in chats] == [c.to_dict() for c in again]
    assert chats[123].id in ("7900000000123@c.us", "120363000000000123@g.us")


def test_admin_chat_state_and_errors(admin):
    chat = admin.chat("green-api", GID, USER)
    assert chat["kind"] == "user"
    assert chat["unread"] == 2
    with pytest.raises(SimulatorError) as unknown:
        admin.chat("green-api", GID, "79999999999@c.us")
    assert unknown.value.status == 404
    with pytest.raises(SimulatorError) as bad:
        admin.put_account("green-api", "not-digits", token="t")
    assert bad.value.status == 400
    with pytest.raises(SimulatorError) as typo:
        admin.patch_account("green-api", GID, faults={"latencyms": 5})
    assert typo.value.status == 400
    with pytest.raises(SimulatorError) as unconvertible:
        admin.patch_account("green-api", GID, status="starting", faults={"latency_ms": "slow"})
    assert unconvertible.value.status == 400
    assert admin.account("green-api", GID)["status"] == "authorized"  # a bad patch changes nothing


def test_admin_add_chats(admin, http):
    admin.add_chats(
        "green-api", GID, chats=[{"id": "79001112233@c.us", "last_incoming_days_ago": 1}]
    )
    assert archive(http, "79001112233@c.us").status_code == 200
    added = admin.add_chats("green-api", GID, generate={"count": 10})
    assert added == {"added": 10, "chats": 16}


def test_scenario_files_json_and_toml(tmp_path: Path):
    scenario = {
        "accounts": [
            {
                "provider": "green-api",
                "id": "1101000009",
                "token": "s",
                "rate_limits": {"archiveChat": 0},
                "chats": [{"id": USER, "last_incoming_days_ago": 60}],
            }
        ]
    }
    json_path = tmp_path / "scenario.json"
    json_path.write_text(json.dumps(scenario))
    toml_path = tmp_path / "scenario.toml"
    toml_path.write_text(
        '[[accounts]]\nprovider = "wassenger"\nid = "' + DEV + '"\ntoken = "w"\n'
        "[accounts.generate]\ncount = 20\n"
    )
    state = SimulatorState()
    state.apply_scenario(load_scenario(json_path))
    state.apply_scenario(load_scenario(toml_path))
    assert state.summary("green-api", "1101000009", days=30)["inactive"] == 1
    assert state.get("green-api", "1101000009").rate_limits["archiveChat"] is None
    assert state.summary("wassenger", DEV)["chats"] == 20
    with start_in_thread(scenario=scenario) as handle, SimulatorClient(handle.url) as client:
        assert client.summary("green-api", "1101000009")["chats"] == 1
        assert client.health() == {"ok": True}


# ----- secrets ----------------------------------------------------------------------------------


def test_tokens_never_in_bodies(admin, http):
    bodies = [
        archive(http, USER).text,
        archive(http, USER).text,
        archive(http, 5).text,
        green(http, "getSettings").text,
        green(http, "getStateInstance").text,
        green(http, "getChats").text,
        wass(http, "PUT", USER).text,
        wass(http, "PUT", USER).text,
        http.get("/v1/devices", headers={"Token": WTOKEN}).text,
        json.dumps(admin.accounts()),
        json.dumps(admin.counters()),
        json.dumps(admin.patch_account("green-api", GID, status="authorized")),
    ]
    for body in bodies:
        assert GTOKEN not in body
        assert WTOKEN not in body


def test_mask_path():
    assert mask_path(f"/waInstance{GID}/archiveChat/{GTOKEN}") == (
        f"/waInstance{GID}/archiveChat/***"
    )
    assert mask_path("/v1/devices?token=abc&x=1") == "/v1/devices?token=***&x=1"


def test_access_log_masks_tokens(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="worker.sandbox.simulator.access")
    with start_in_thread(access_log=True) as handle, httpx.Client(base_url=handle.url) as http:
        handle.state.put_account("green-api", GID, {"token": GTOKEN})
        http.post(f"/waInstance{GID}/archiveChat/{GTOKEN}", json={"chatId": USER})
        http.get(f"/waInstance{GID}/getChats/wrong-{GTOKEN}")
        http.get("/_sim/health")
    lines = [r.getMessage() for r in caplog.records if r.name == "worker.sandbox.simulator.access"]
    assert len(lines) == 3
    assert any("/archiveChat/***" in line for line in lines)
    assert all(GTOKEN not in line for line in lines)


# ----- strictness: only documented routes, a router's plain 404 for the rest ----------------------


@pytest.mark.parametrize(
    ("verb", "path"),
    [
        ("POST", f"/waInstance{GID}/archiveChats/{GTOKEN}"),  # no such method
        ("GET", f"/waInstance{GID}/archiveChat/{GTOKEN}"),  # a documented method, wrong verb
        ("PUT", f"/waInstance{GID}/archiveChat/{GTOKEN}"),
        ("POST", f"/nowhere/waInstance{GID}/archiveChat/{GTOKEN}"),  # an api_url with a path
        ("PUT", f"/v1/chat/{DEV}/chats/{USER}/archive"),  # the white-label's path (issue 19)
        ("POST", f"/v1/io/{DEV}/chats/{USER}/archive"),
        ("GET", f"/v1/io/{DEV}/chats/{USER}/archive"),
        ("PUT", f"/v1/io/{DEV}/chats/{USER}/archived"),
        ("PUT", f"/v1/io/{DEV}/chats//archive"),
        ("DELETE", f"/v1/chat/{DEV}/chats/{USER}"),
        ("POST", "/v1/devices"),
        ("GET", "/v1/nothing"),
        ("PUT", f"/nowhere/v1/io/{DEV}/chats/{USER}/archive"),
    ],
)
def test_undocumented_routes_get_a_routers_plain_404_and_are_counted(admin, http, verb, path):
    response = http.request(verb, path, headers={"Token": WTOKEN}, json={"chatId": USER})
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "Not Found"  # never JSON, never naming the chat
    counters = admin.counters()
    assert counters["totals"]["undocumented"] == 1
    [(key, count)] = counters["undocumented"].items()
    assert count == 1 and key.startswith(f"{verb} ")
    assert GTOKEN not in key and WTOKEN not in key
    assert counters["routes"] == {}
    # Nothing reached an account: a wrong path changes no chat and costs no rate slot.
    assert counters["accounts"] == {}
    assert admin.chat("wassenger", DEV, USER)["archived"] is False
    assert admin.undocumented_calls() == counters["undocumented"]


def test_documented_routes_are_counted_by_template(admin, http):
    archive(http, USER)
    green(http, "unarchiveChat", {"chatId": USER})
    green(http, "getStateInstance")
    green(http, "getContactInfo", {"chatId": USER})
    wass(http, "PUT", USER)
    wass(http, "DELETE", USER)
    http.get(f"/v1/chat/{DEV}/chats/{USER}", headers={"Token": WTOKEN})
    http.get("/v1/devices", headers={"Token": WTOKEN})
    counters = admin.counters()
    assert counters["routes"] == {
        "DELETE /v1/io/{deviceId}/chats/{chatWid}/archive": 1,
        "GET /v1/chat/{deviceId}/chats/{chatWid}": 1,
        "GET /v1/devices": 1,
        "GET /waInstance{idInstance}/getStateInstance/{apiTokenInstance}": 1,
        "POST /waInstance{idInstance}/archiveChat/{apiTokenInstance}": 1,
        "POST /waInstance{idInstance}/getContactInfo/{apiTokenInstance}": 1,
        "POST /waInstance{idInstance}/unarchiveChat/{apiTokenInstance}": 1,
        "PUT /v1/io/{deviceId}/chats/{chatWid}/archive": 1,
    }
    assert counters["undocumented"] == {} and counters["totals"]["undocumented"] == 0


# ----- states for a while: asleep, starting, not authorized, blocked, not operative ---------------


@pytest.mark.parametrize(
    ("status", "text", "state"),
    [
        ("sleep_mode", "instance in sleepMode", "sleepMode"),
        ("starting", "instance in starting process try later", "starting"),
        ("not_authorized", "instance account not authorized", "notAuthorized"),
        ("blocked", "instance is blocked", "blocked"),
    ],
)
def test_green_state_for_a_while_answers_every_call_then_ends(admin, http, status, text, state):
    admin.set_status("green-api", GID, status, seconds=0.6)
    assert admin.account("green-api", GID)["status"] == status
    for response in (
        archive(http, USER),
        green(http, "unarchiveChat", {"chatId": USER}),
        green(http, "getChats"),
        green(http, "getContactInfo", {"chatId": USER}),
    ):
        assert response.status_code == 400
        assert message(response) == text
    assert green(http, "getStateInstance").json() == {"stateInstance": state}
    assert admin.chat("green-api", GID, USER)["archived"] is False
    time.sleep(0.7)
    assert green(http, "getStateInstance").json() == {"stateInstance": "authorized"}
    assert archive(http, USER).status_code == 200
    assert admin.account("green-api", GID)["status"] == "authorized"


def test_a_state_without_seconds_stays(admin, http):
    admin.set_status("green-api", GID, "sleep_mode")
    assert admin.account("green-api", GID)["status_until"] is None
    time.sleep(0.1)
    assert green(http, "getStateInstance").json() == {"stateInstance": "sleepMode"}
    admin.set_status("green-api", GID, "authorized")
    assert archive(http, USER).status_code == 200


@pytest.mark.parametrize(
    ("provider", "account", "changes", "error"),
    [
        ("wassenger", DEV, {"status": "sleep_mode"}, "green-api state"),
        ("green-api", GID, {"status": "not_operative"}, "wassenger state"),
        ("green-api", GID, {"status_seconds": 5}, "goes with a status"),
        ("green-api", GID, {"status": "starting", "status_seconds": 0}, "> 0"),
        ("green-api", GID, {"status": "starting", "status_seconds": True}, "> 0"),
    ],
)
def test_state_switch_refuses_what_it_cannot_hold(admin, provider, account, changes, error):
    with pytest.raises(SimulatorError, match=error):
        admin.patch_account(provider, account, **changes)
    assert admin.account(provider, account)["status"] == "authorized"


def test_wassenger_device_not_operative_for_a_while(admin, http):
    admin.set_status("wassenger", DEV, "not_operative", seconds=0.6)
    response = wass(http, "PUT", USER)
    assert response.status_code == 400
    body = response.json()
    assert body == {"status": 400, "message": "WhatsApp number is not ready to perform this action"}
    device = http.get("/v1/devices", headers={"Token": WTOKEN}).json()[0]
    assert (device["status"], device["session"]["status"]) == ("verified", "offline")
    assert http.get(f"/v1/chat/{DEV}/chats/{USER}", headers={"Token": WTOKEN}).status_code == 400
    time.sleep(0.7)
    device = http.get("/v1/devices", headers={"Token": WTOKEN}).json()[0]
    assert (device["status"], device["session"]["status"]) == ("operative", "online")
    assert wass(http, "PUT", USER).status_code == 200


# ----- a false "already archived" (GREEN-API #488, #744) -----------------------------------------


def test_green_false_already_archived_for_the_next_calls(admin, http):
    admin.false_already_archived("green-api", GID, count=2)
    for _ in range(2):
        response = archive(http, USER)
        assert response.status_code == 400
        assert message(response) == f"ArchiveChatError: chat with id {USER} already archive=true"
    # Nothing was archived, and the chat's record says so.
    assert admin.chat("green-api", GID, USER)["archived"] is False
    assert green(http, "getContactInfo", {"chatId": USER}).json()["isArchive"] is False
    assert archive(http, USER).status_code == 200
    assert green(http, "getContactInfo", {"chatId": USER}).json()["isArchive"] is True
    assert admin.account("green-api", GID)["faults"]["false_already_archived"] == 0


def test_false_already_archived_for_a_chat_until_cleared(admin, http):
    admin.false_already_archived("green-api", GID, chats=[USER])
    admin.false_already_archived("wassenger", DEV, chats=[USER])
    for _ in range(3):
        assert "already archive=true" in message(archive(http, USER))
        assert wass(http, "PUT", USER).status_code == 409
    assert archive(http, GROUP).status_code == 200  # other chats archive
    assert admin.chat("green-api", GID, USER)["archived"] is False
    wassenger_chat = http.get(f"/v1/chat/{DEV}/chats/{USER}", headers={"Token": WTOKEN}).json()
    assert wassenger_chat["waStatus"] == "active"
    admin.false_already_archived("green-api", GID)
    assert archive(http, USER).status_code == 200
    with pytest.raises(SimulatorError, match="false_already_archived"):
        admin.patch_account("green-api", GID, faults={"false_already_archived": -1})


# ----- the reads behind `verify` ------------------------------------------------------------------


def test_green_get_contact_info(admin, http):
    info = green(http, "getContactInfo", {"chatId": USER}).json()
    assert info["chatId"] == USER and info["isArchive"] is False
    archived = green(http, "getContactInfo", {"chatId": "79000000000@c.us"}).json()
    assert archived["isArchive"] is True
    missing = green(http, "getContactInfo", {"chatId": "79999999999@c.us"})
    assert missing.status_code == 400
    assert message(missing) == "GetContactInfoError: chat with id 79999999999@c.us not found"
    assert green(http, "getContactInfo", {}).status_code == 400
    assert green(http, "getContactInfo", {"chatId": USER}, token="nope").status_code == 401


def test_wassenger_get_chat(admin, http):
    chat = http.get(f"/v1/chat/{DEV}/chats/{USER}", headers={"Token": WTOKEN})
    assert chat.status_code == 200
    assert chat.json()["waStatus"] == "active" and chat.json()["meta"]["isArchived"] is False
    wass(http, "PUT", USER)
    chat = http.get(f"/v1/chat/{DEV}/chats/{USER.replace('@', '%40')}", headers={"Token": WTOKEN})
    assert chat.json()["waStatus"] == "archived"
    missing = http.get(f"/v1/chat/{DEV}/chats/79999999999@c.us", headers={"Token": WTOKEN})
    assert missing.json() == {"status": 404, "message": "Chat not found"}
    assert http.get(f"/v1/chat/{DEV}/chats/{USER}", headers={"Token": "nope"}).status_code == 401


def test_mask_path_masks_a_green_token_after_any_prefix():
    assert mask_path(f"/nowhere/waInstance{GID}/archiveChat/{GTOKEN}") == (
        f"/nowhere/waInstance{GID}/archiveChat/***"
    )
