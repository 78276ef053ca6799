"""Every documented provider answer maps to exactly one outcome (tasks/providers/FACTS.md, row
by row)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import httpx
import pytest
import respx
from celery.exceptions import SoftTimeLimitExceeded

from config import PROVIDERS, Account, Secret, excerpt, parse_rate
from tasks.providers import (
    ADAPTERS,
    GreenApiAdapter,
    GreenApiListings,
    ListingError,
    WassengerAdapter,
    WassengerListings,
)
from tasks.providers.base import ChatInfo, classify, parse_retry_after
from tasks.providers.green_api import ARCHIVE_RULES as GREEN_RULES
from tasks.providers.green_api import UNARCHIVE_RULES as GREEN_UNARCHIVE_RULES
from tasks.providers.wassenger import ARCHIVE_RULES as WASSENGER_RULES
from tasks.providers.wassenger import UNARCHIVE_RULES as WASSENGER_UNARCHIVE_RULES
from worker.contract.outcomes import (
    ACCOUNT_UNAVAILABLE,
    ALREADY_ARCHIVED,
    ALREADY_UNARCHIVED,
    ARCHIVED,
    CHAT_NOT_FOUND,
    INVALID_REQUEST,
    MISCONFIGURED,
    NO_MESSAGES,
    QUOTA_EXCEEDED,
    RATE_LIMITED,
    TRANSIENT,
    UNARCHIVED,
    UNAUTHORIZED,
    UNEXPECTED_RESPONSE,
    Kind,
    Reason,
    Verdict,
)
from worker.logs import install_redaction
from worker.sandbox.simulator import start_in_thread

TOKEN = "CANARYtableT0ken12345"
GREEN = Account(
    "green-api",
    "7105187566",
    "https://7105.api.greenapi.com",
    Secret(TOKEN),
    {"archiveChat": parse_rate("10/s")},
)
WASSENGER = Account(
    "wassenger",
    "61b37a069cba0c15d6c81c8e",
    "https://api.wassenger.com",
    Secret(TOKEN),
    {"archive": parse_rate("5/s")},
)
GREEN_BASE = "https://7105.api.greenapi.com/waInstance7105187566"
GREEN_URL = f"{GREEN_BASE}/archiveChat/{TOKEN}"
GREEN_UNARCHIVE_URL = f"{GREEN_BASE}/unarchiveChat/{TOKEN}"
GREEN_STATE_URL = f"{GREEN_BASE}/getStateInstance/{TOKEN}"
GREEN_CONTACT_URL = f"{GREEN_BASE}/getContactInfo/{TOKEN}"
WASSENGER_URL = (
    "https://api.wassenger.com/v1/io/61b37a069cba0c15d6c81c8e/chats/79001234567@c.us/archive"
)
WASSENGER_DEVICES_URL = "https://api.wassenger.com/v1/devices"
WASSENGER_CHAT_URL = (
    "https://api.wassenger.com/v1/chat/61b37a069cba0c15d6c81c8e/chats/79001234567@c.us"
)
CHAT = "79001234567@c.us"
OPERATIVE = [{"id": WASSENGER.id, "status": "operative", "session": {"status": "online"}}]

# (HTTP status, body as the provider sends it, the one outcome it must mean), with the account's
# state answering "works" when a row asks for it (the `confirm` rows; see the tests further down).
# Bodies are GREEN-API's documented texts (tasks/providers/FACTS.md) unless a comment says.
GREEN_SHARED: list[tuple[int, str, Verdict]] = [
    (400, f"ArchiveChatError: chat with id {CHAT} not found", CHAT_NOT_FOUND),
    (
        400,
        "ArchiveChatError: cannot archive chat cause last message not found in chat",
        NO_MESSAGES,
    ),
    (400, "Validation failed. Details: 'value' must have at least 1 key", INVALID_REQUEST),
    (400, "bad request data", INVALID_REQUEST),
    (400, "Unexpected token _ in JSON at position 12", INVALID_REQUEST),
    (500, "interface conversion: interface {} is bool, not string", INVALID_REQUEST),
    # Instance states: the account pauses, its jobs wait (issue 19), "starting" included.
    (400, "instance in starting process try later", ACCOUNT_UNAVAILABLE),
    (400, "instance is starting or not authorized", ACCOUNT_UNAVAILABLE),
    (400, "instance account not authorized", ACCOUNT_UNAVAILABLE),
    (
        400,
        "Instance account is expired. Renew your instance from personal area",
        ACCOUNT_UNAVAILABLE,
    ),
    (400, "Instance is deleted", ACCOUNT_UNAVAILABLE),
    (401, "Unauthorized", UNAUTHORIZED),
    (403, "Forbidden", UNAUTHORIZED),
    # GREEN-API's 404 is a method it does not serve there, whatever the body says: never a chat.
    (404, "Not Found", MISCONFIGURED),
    (404, f'{{"code":404,"message":"chat with id {CHAT} not found"}}', MISCONFIGURED),
    (405, "Method Not Allowed", MISCONFIGURED),
    (429, "Too Many Requests", RATE_LIMITED),
    (466, '{"invokeStatus":{"status":"QUOTE_EXCEEDED"},"correspondentsStatus":{}}', QUOTA_EXCEEDED),
    (499, "Client Closed Request", TRANSIENT),
    (500, "Internal Server Error", TRANSIENT),
    (502, "Bad Gateway", TRANSIENT),
    (503, "Service Unavailable", TRANSIENT),
    (504, "Gateway Timeout", TRANSIENT),
    # Undocumented, with getStateInstance saying "authorized": this job's problem.
    (400, "something nobody documented", UNEXPECTED_RESPONSE),
    (302, "", UNEXPECTED_RESPONSE),
]
GREEN_ANSWERS: list[tuple[int, str, Verdict]] = [
    (200, "", ARCHIVED),
    (
        400,
        f'{{"code":400,"message":"ArchiveChatError: chat with id {CHAT} already archive=true"}}',
        ALREADY_ARCHIVED,
    ),
    (400, "archiveChatError: already archive=true", ALREADY_ARCHIVED),
    *GREEN_SHARED,
]
GREEN_UNARCHIVE_ANSWERS: list[tuple[int, str, Verdict]] = [
    (200, "", UNARCHIVED),
    (400, f"UnarchiveChatError: chat with id {CHAT} already archive=false", ALREADY_UNARCHIVED),
    *GREEN_SHARED,
]

WASSENGER_SHARED: list[tuple[int, dict | str, Verdict]] = [
    (404, {"status": 404, "message": "Chat not found"}, CHAT_NOT_FOUND),
    (404, {"status": 404, "message": "Device not found"}, ACCOUNT_UNAVAILABLE),
    (400, {"status": 400, "message": "Device not registered or offline"}, ACCOUNT_UNAVAILABLE),
    (400, {"status": 400, "message": "Session is offline"}, ACCOUNT_UNAVAILABLE),
    # A 404 that is not Wassenger's error object saying "chat not found" is a route nobody
    # serves: a path echoed in the body must not make it look like one (issue 19).
    (404, {"status": 404, "message": "Not found", "path": "/v1/io/x/chats/y"}, MISCONFIGURED),
    (404, {"status": 404, "message": f"Cannot PUT /v1/io/x/chats/{CHAT}/archive"}, MISCONFIGURED),
    (404, f"Cannot PUT /v1/chat/{WASSENGER.id}/chats/{CHAT}/archive", MISCONFIGURED),
    (404, {"message": "Chat not found"}, MISCONFIGURED),  # a proxy's JSON: no status field
    (404, {"status": 400, "message": "Chat not found"}, MISCONFIGURED),  # status disagrees
    (404, "<html><title>404 Not Found</title><center>nginx</center></html>", MISCONFIGURED),
    (405, "Method Not Allowed", MISCONFIGURED),
    # With the device operative and online (/v1/devices): this job's problem.
    (400, {"status": 400, "message": "Invalid chat ID"}, INVALID_REQUEST),
    (401, {"status": 401, "message": "Unauthorized"}, UNAUTHORIZED),
    (403, {"status": 403, "message": "Forbidden"}, UNAUTHORIZED),
    (
        402,
        {"status": 402, "message": "Device plan does not support this feature"},
        ACCOUNT_UNAVAILABLE,
    ),
    (402, {"status": 402, "message": "Monthly quota exceeded for this device"}, QUOTA_EXCEEDED),
    (429, {"status": 429, "message": "Too many requests"}, RATE_LIMITED),
    (500, {"status": 500, "message": "Internal error"}, TRANSIENT),
    (502, "Bad Gateway", TRANSIENT),
    (503, {"status": 503, "message": "Unavailable"}, TRANSIENT),
    (504, "", TRANSIENT),
    (418, {"status": 418, "message": "teapot"}, UNEXPECTED_RESPONSE),
]
WASSENGER_ANSWERS: list[tuple[int, dict | str, Verdict]] = [
    (200, {"id": CHAT, "waStatus": "archived"}, ARCHIVED),
    (201, "", ARCHIVED),
    (409, {"status": 409, "message": "Conflict"}, ALREADY_ARCHIVED),
    (400, {"status": 400, "message": "Chat is already archived"}, ALREADY_ARCHIVED),
    *WASSENGER_SHARED,
]
WASSENGER_UNARCHIVE_ANSWERS: list[tuple[int, dict | str, Verdict]] = [
    (200, {"id": CHAT, "waStatus": "active"}, UNARCHIVED),
    (204, "", UNARCHIVED),
    (409, {"status": 409, "message": "Conflict"}, ALREADY_UNARCHIVED),
    (400, {"status": 400, "message": "Chat is not archived"}, ALREADY_UNARCHIVED),
    *WASSENGER_SHARED,
]


def _client() -> httpx.Client:
    return httpx.Client(timeout=1.0)


def _body(body: dict | str) -> dict[str, Any]:
    return {"json": body} if isinstance(body, dict) else {"text": body}


def _confirms(adapter: Any, rules: tuple, status: int, body: dict | str) -> bool:
    text = adapter.answer_text(httpx.Response(status, **_body(body)))
    return classify(rules, status, text).confirm


@pytest.mark.parametrize(
    ("unarchive", "status", "body", "verdict"),
    [(False, *row) for row in GREEN_ANSWERS] + [(True, *row) for row in GREEN_UNARCHIVE_ANSWERS],
)
def test_green_api_answer(unarchive: bool, status: int, body: str, verdict: Verdict) -> None:
    adapter = GreenApiAdapter()
    url, call = (
        (GREEN_UNARCHIVE_URL, adapter.unarchive) if unarchive else (GREEN_URL, adapter.archive)
    )
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(url).respond(status, text=body)
        state = mock.get(GREEN_STATE_URL).respond(200, json={"stateInstance": "authorized"})
        answer = call(_client(), GREEN, CHAT)
    assert answer.verdict == verdict
    assert answer.status == status
    assert json.loads(route.calls.last.request.content) == {"chatId": CHAT}
    assert TOKEN not in answer.excerpt and TOKEN not in answer.meaning
    # The state is read for the rows that ask for it, and only for them.
    rules = adapter.unarchive_rules if unarchive else adapter.archive_rules
    assert state.call_count == int(_confirms(adapter, rules, status, body))
    if verdict.kind is Kind.ACCOUNT and body:
        # What the provider said reaches the paused account's detail (runner: "HTTP n: meaning").
        assert excerpt(body)[:40] in answer.meaning


@pytest.mark.parametrize(
    ("unarchive", "status", "body", "verdict"),
    [(False, *row) for row in WASSENGER_ANSWERS]
    + [(True, *row) for row in WASSENGER_UNARCHIVE_ANSWERS],
)
def test_wassenger_answer(unarchive: bool, status: int, body: dict | str, verdict: Verdict) -> None:
    adapter = WassengerAdapter()
    call = adapter.unarchive if unarchive else adapter.archive
    with respx.mock(assert_all_called=False) as mock:
        verb = mock.delete if unarchive else mock.put
        route = verb(WASSENGER_URL).respond(status, **_body(body))
        devices = mock.get(WASSENGER_DEVICES_URL).respond(200, json=OPERATIVE)
        answer = call(_client(), WASSENGER, CHAT)
    assert answer.verdict == verdict
    request = route.calls.last.request
    # The key travels in the Token header and nowhere in the URL.
    assert request.headers["Token"] == TOKEN
    assert TOKEN not in str(request.url)
    assert "@c.us" in request.url.raw_path.decode()
    rules = adapter.unarchive_rules if unarchive else adapter.archive_rules
    assert devices.call_count == int(_confirms(adapter, rules, status, body))


def test_every_table_row_is_reachable() -> None:
    """Each row is hit by at least one documented answer above: no dead rows, no gaps."""
    tables = (
        (GreenApiAdapter(), GREEN_RULES, GREEN_ANSWERS),
        (GreenApiAdapter(), GREEN_UNARCHIVE_RULES, GREEN_UNARCHIVE_ANSWERS),
        (WassengerAdapter(), WASSENGER_RULES, WASSENGER_ANSWERS),
        (WassengerAdapter(), WASSENGER_UNARCHIVE_RULES, WASSENGER_UNARCHIVE_ANSWERS),
    )
    for adapter, rules, answers in tables:
        hit = set()
        for status, body, _ in answers:
            text = adapter.answer_text(httpx.Response(status, **_body(body)))
            hit.add(classify(rules, status, text))
        assert set(rules) == hit


# -- answers that alone cannot tell a job's problem from the account's: the state decides --------


@pytest.mark.parametrize(
    ("state", "verdict", "shown"),
    [
        (
            httpx.Response(200, json={"stateInstance": "sleepMode"}),
            ACCOUNT_UNAVAILABLE,
            "sleepMode",
        ),
        (httpx.Response(200, json={"stateInstance": "blocked"}), ACCOUNT_UNAVAILABLE, "blocked"),
        (httpx.Response(200, json={"stateInstance": "yellowCard"}), ACCOUNT_UNAVAILABLE, "yellow"),
        (
            httpx.Response(400, text="instance account not authorized"),
            ACCOUNT_UNAVAILABLE,
            "not authorized",
        ),
        # The state cannot be read: the account pauses rather than dead-letter every job.
        (httpx.Response(429, text="Too Many Requests"), ACCOUNT_UNAVAILABLE, "could not be read"),
        (httpx.Response(200, text="<html>"), ACCOUNT_UNAVAILABLE, "could not be read"),
        (httpx.Response(200, json={"other": 1}), ACCOUNT_UNAVAILABLE, "could not be read"),
        (httpx.ConnectError("refused"), ACCOUNT_UNAVAILABLE, "could not be read"),
        (httpx.Response(200, json={"stateInstance": "authorized"}), UNEXPECTED_RESPONSE, ""),
    ],
)
def test_an_undocumented_green_api_answer_is_settled_by_get_state_instance(
    state: httpx.Response | Exception, verdict: Verdict, shown: str
) -> None:
    """What archiveChat answers while the instance sleeps is not documented; getStateInstance
    is (FACTS.md): an instance that is not authorized pauses the account, naming its state."""
    asleep = '{"code":400,"message":"whatever an asleep instance says"}'
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(400, text=asleep)
        route = mock.get(GREEN_STATE_URL)
        route.mock(side_effect=state) if isinstance(state, Exception) else route.mock(state)
        answer = GreenApiAdapter().archive(_client(), GREEN, CHAT)
    assert answer.verdict == verdict
    assert route.call_count == 1
    assert shown in answer.meaning
    if verdict is ACCOUNT_UNAVAILABLE:
        assert "whatever an asleep instance says" in answer.meaning


@pytest.mark.parametrize(
    ("devices", "verdict", "shown"),
    [
        (
            [{"id": WASSENGER.id, "status": "verified", "session": {"status": "offline"}}],
            ACCOUNT_UNAVAILABLE,
            "device verified, session offline",
        ),
        (
            [{"id": WASSENGER.id.upper(), "status": "operative", "session": {"status": "timeout"}}],
            ACCOUNT_UNAVAILABLE,
            "session timeout",
        ),
        ([{"id": "ffffffffffffffffffffffff", "status": "operative"}], ACCOUNT_UNAVAILABLE, "not"),
        ({"not": "a list"}, ACCOUNT_UNAVAILABLE, "not among"),
        (OPERATIVE, INVALID_REQUEST, ""),
    ],
)
def test_an_unexplained_wassenger_400_is_settled_by_the_device_record(
    devices: object, verdict: Verdict, shown: str
) -> None:
    """Wassenger documents no answer for a device that is not operative: a 400 naming neither
    device nor session dead-letters its job only while /v1/devices shows the device operative
    and online (what Wassenger's own bot checks)."""
    with respx.mock() as mock:
        mock.put(WASSENGER_URL).respond(400, json={"status": 400, "message": "Cannot do that"})
        route = mock.get(WASSENGER_DEVICES_URL).respond(200, json=devices)
        answer = WassengerAdapter().archive(_client(), WASSENGER, CHAT)
    assert answer.verdict == verdict
    assert shown in answer.meaning
    assert route.calls.last.request.headers["Token"] == TOKEN


def test_a_wassenger_state_read_that_fails_pauses_the_account() -> None:
    with respx.mock() as mock:
        mock.put(WASSENGER_URL).respond(400, text="Bad Request")
        mock.get(WASSENGER_DEVICES_URL).respond(503, text="Service Unavailable")
        answer = WassengerAdapter().archive(_client(), WASSENGER, CHAT)
    assert answer.verdict == ACCOUNT_UNAVAILABLE
    assert "could not be read" in answer.meaning


@pytest.mark.parametrize("provider", ["green-api", "wassenger"])
def test_a_misconfigured_answer_carries_what_was_said_without_the_token(provider: str) -> None:
    """The detail of a paused account is what an operator reads: the answer, redacted."""
    if provider == "green-api":
        adapter, account, url, verb = GreenApiAdapter(), GREEN, GREEN_URL, "post"
        said = f"404 page not found: POST /x/waInstance{GREEN.id}/archiveChat/{TOKEN}"
    else:
        adapter, account, url, verb = WassengerAdapter(), WASSENGER, WASSENGER_URL, "put"
        said = f"Cannot PUT /v1/io/{WASSENGER.id}/chats/{CHAT}/archive?token={TOKEN}"
    with respx.mock() as mock:
        getattr(mock, verb)(url).respond(404, text=said)
        answer = adapter.archive(_client(), account, CHAT)
    assert answer.verdict == MISCONFIGURED
    assert answer.verdict.reason == Reason.MISCONFIGURED
    assert "Cannot PUT" in answer.meaning or "page not found" in answer.meaning
    assert TOKEN not in answer.meaning and "***" in answer.meaning


# -- reading a chat's archive flag back (an account's `verify`) ---------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (httpx.Response(200, json={"chatId": CHAT, "isArchive": True}), True),
        (httpx.Response(200, json={"chatId": CHAT, "isArchive": False}), False),
        (httpx.Response(200, json={"chatId": CHAT}), None),
        (httpx.Response(200, json={"isArchive": "true"}), None),
        (httpx.Response(400, text=f"GetContactInfoError: chat with id {CHAT} not found"), None),
        (httpx.Response(200, text="not json"), None),
        (httpx.ReadTimeout("slow"), None),
    ],
)
def test_green_api_archived_state_reads_get_contact_info(
    answer: httpx.Response | Exception, expected: bool | None
) -> None:
    with respx.mock() as mock:
        route = mock.post(GREEN_CONTACT_URL)
        route.mock(side_effect=answer) if isinstance(answer, Exception) else route.mock(answer)
        assert GreenApiAdapter().archived_state(_client(), GREEN, CHAT) is expected
    assert json.loads(route.calls.last.request.content) == {"chatId": CHAT}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (httpx.Response(200, json={"id": CHAT, "waStatus": "archived"}), True),
        (httpx.Response(200, json={"id": CHAT, "meta": {"isArchived": True}}), True),
        (
            httpx.Response(
                200, json={"id": CHAT, "waStatus": "active", "meta": {"isArchived": False}}
            ),
            False,
        ),
        (httpx.Response(200, json={"id": CHAT}), None),
        (httpx.Response(404, json={"status": 404, "message": "Chat not found"}), None),
        (httpx.Response(200, json=["not", "a", "chat"]), None),
    ],
)
def test_wassenger_archived_state_reads_the_chat(
    answer: httpx.Response, expected: bool | None
) -> None:
    with respx.mock() as mock:
        route = mock.get(WASSENGER_CHAT_URL).mock(answer)
        assert WassengerAdapter().archived_state(_client(), WASSENGER, CHAT) is expected
    request = route.calls.last.request
    assert request.headers["Token"] == TOKEN and TOKEN not in str(request.url)


def test_adapters_name_the_rate_limited_methods_the_provider_table_knows() -> None:
    """Every call an adapter makes has a rate in config/providers.py (per account, per method)."""
    for adapter in ADAPTERS.values():
        rates = PROVIDERS[adapter.provider].method_rates
        for method in (
            adapter.archive_method,
            adapter.unarchive_method,
            adapter.archived_state_method,
            adapter.account_state_method,
        ):
            assert method in rates, (adapter.provider, method)
    assert PROVIDERS["green-api"].method_rates["unarchiveChat"] == "10/s"
    assert PROVIDERS["green-api"].method_rates["getContactInfo"] == "1/s"


@pytest.mark.parametrize("provider", sorted(ADAPTERS))
def test_network_failures_are_transient_and_redacted(provider: str) -> None:
    account = GREEN if provider == "green-api" else WASSENGER
    url = GREEN_URL if provider == "green-api" else WASSENGER_URL
    method = "POST" if provider == "green-api" else "PUT"
    for error in (httpx.ReadTimeout(f"timed out on {url}"), httpx.ConnectError(f"refused {url}")):
        with respx.mock() as mock:
            mock.request(method, url).mock(side_effect=error)
            answer = ADAPTERS[provider].archive(_client(), account, CHAT)
        assert answer.verdict == TRANSIENT
        assert answer.status is None
        assert answer.meaning in ("timeout", "connection error")
        assert TOKEN not in answer.excerpt


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("7") == 7
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 10) == 10
    with respx.mock() as mock:
        mock.put(WASSENGER_URL).respond(
            429, json={"message": "Too many"}, headers={"Retry-After": "3"}
        )
        answer = WassengerAdapter().archive(_client(), WASSENGER, CHAT)
    assert answer.verdict == RATE_LIMITED
    assert answer.retry_after == 3


def test_excerpt_is_short_flat_and_redacted() -> None:
    long = f"line one\nhttps://h/waInstance1/archiveChat/{TOKEN} " + "x" * 500
    text = excerpt(long)
    assert len(text) <= 200 and "\n" not in text and TOKEN not in text


# -- exceptions from the HTTP layer: mapped by type, their text never kept ------------------------

EXCEPTION_CANARY = "CANARYexc3pt10n0123456789"


def _account(provider: str, token: str, api_url: str | None = None) -> Account:
    base = GREEN if provider == "green-api" else WASSENGER
    return replace(base, token=Secret(token), api_url=api_url or base.api_url)


def _leaks(answer: object, caplog: pytest.LogCaptureFixture) -> list[str]:
    assert caplog.records, "nothing was logged: looking for leaks there would prove nothing"
    texts = [repr(answer), *(logging.Formatter().format(record) for record in caplog.records)]
    return [text for text in texts if "CANARY" in text]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    install_redaction()
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.mark.parametrize("bad", ["\u200b", "é", "\u2028"])
def test_a_non_ascii_header_token_pauses_the_account_without_leaking(
    bad: str, logs: pytest.LogCaptureFixture
) -> None:
    """httpx raises UnicodeEncodeError carrying the whole header value while building the
    request: on main it escaped the task into the result backend and Flower."""
    account = _account("wassenger", EXCEPTION_CANARY + bad)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.put(WASSENGER_URL).respond(200)
        answer = WassengerAdapter().archive(_client(), account, CHAT)
    assert route.call_count == 0
    assert answer.verdict == ACCOUNT_UNAVAILABLE
    assert answer.excerpt == "UnicodeEncodeError"
    assert answer.meaning == "request impossible with the account's settings"
    assert _leaks(answer, logs) == []


def test_an_illegal_header_value_refused_by_h11_leaks_nothing(
    logs: pytest.LogCaptureFixture,
) -> None:
    """A two-line token (a token_file with a second line, on main) reaches h11, whose error
    quotes the header value with its newline escaped."""
    with start_in_thread() as simulator:
        account = _account("wassenger", f"{EXCEPTION_CANARY}\n{EXCEPTION_CANARY}2", simulator.url)
        answer = WassengerAdapter().archive(_client(), account, CHAT)
    assert answer.verdict == ACCOUNT_UNAVAILABLE
    assert answer.excerpt == "LocalProtocolError"
    assert _leaks(answer, logs) == []


def test_any_other_exception_is_an_internal_error_without_its_text(
    logs: pytest.LogCaptureFixture,
) -> None:
    account = _account("green-api", EXCEPTION_CANARY)
    url = f"https://7105.api.greenapi.com/waInstance7105187566/archiveChat/{EXCEPTION_CANARY}"
    with respx.mock() as mock:
        mock.post(url).mock(side_effect=RuntimeError(f"boom at {url}"))
        answer = GreenApiAdapter().archive(_client(), account, CHAT)
    assert answer.verdict == Verdict(Kind.PERMANENT, reason=Reason.INTERNAL_ERROR)
    assert answer.excerpt == "RuntimeError"
    assert _leaks(answer, logs) == []
    # The traceback is logged for whoever fixes the bug: redacted where the record was made.
    assert any("RuntimeError: boom at" in (record.exc_text or "") for record in logs.records)


def test_a_real_refused_connection_keeps_the_systems_reason_only() -> None:
    account = _account("green-api", EXCEPTION_CANARY, "http://127.0.0.1:1")
    answer = GreenApiAdapter().archive(_client(), account, CHAT)
    assert (answer.verdict, answer.meaning) == (TRANSIENT, "connection error")
    assert answer.excerpt == "ConnectError: Connection refused"


def test_the_soft_time_limit_passes_through_the_adapter() -> None:
    with respx.mock() as mock:
        mock.post(GREEN_URL).mock(side_effect=SoftTimeLimitExceeded())
        with pytest.raises(SoftTimeLimitExceeded):
            GreenApiAdapter().archive(_client(), GREEN, CHAT)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("inf", 86400), ("1e400", 86400), ("nan", None), ("-5", 0), ("99999999", 86400)],
)
def test_retry_after_is_finite_and_at_most_a_day(value: str, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_listings_map_unbuildable_requests_and_unreadable_answers_to_listing_errors(
    logs: pytest.LogCaptureFixture,
) -> None:
    broken = _account("wassenger", EXCEPTION_CANARY + "\u200b")
    with pytest.raises(ListingError) as caught:
        WassengerListings(WassengerAdapter()).chats_page(_client(), broken, 0, 100)
    assert caught.value.answer.verdict == ACCOUNT_UNAVAILABLE
    assert "CANARY" not in str(caught.value) + repr(caught.value.answer)

    chats_url = "https://api.wassenger.com/v1/chat/61b37a069cba0c15d6c81c8e/chats"
    green_chats = f"https://7105.api.greenapi.com/waInstance7105187566/getChats/{TOKEN}"
    with respx.mock() as mock:
        mock.get(chats_url).respond(200, json=[{"id": CHAT, "lastMessageAt": "not a time"}])
        mock.get(green_chats).respond(200, text=f'[{{"id": "{TOKEN}"}}, nonsense {TOKEN}')
        with pytest.raises(ListingError) as page_error:
            WassengerListings(WassengerAdapter()).chats_page(_client(), WASSENGER, 0, 100)
        with pytest.raises(ListingError) as stream_error:
            list(GreenApiListings(GreenApiAdapter()).chats(_client(), GREEN))
    for error in (page_error.value, stream_error.value):
        assert error.answer.verdict == UNEXPECTED_RESPONSE
        assert TOKEN not in str(error) + repr(error.answer)


def test_listings_read_every_documented_field_of_a_chat() -> None:
    """What sweeps decide on: each provider's listing read field by field into one shape."""
    chats_url = "https://api.wassenger.com/v1/chat/61b37a069cba0c15d6c81c8e/chats"
    green_chats = f"https://7105.api.greenapi.com/waInstance7105187566/getChats/{TOKEN}"
    page = [
        {
            "id": CHAT,
            "lastMessageAt": "2026-11-01T10:00:00+00:00",
            "status": "resolved",
            "labels": [{"name": "vip"}, "lead"],
            "meta": {"isArchived": True, "unreadCount": 3},
        },
        {"id": "120363000000000001@g.us", "waStatus": "archived", "meta": "not an object"},
        {"id": "120363000000000002@newsletter", "status": 7, "labels": None},
        {"no": "id"},
        "not a chat",
    ]
    with respx.mock() as mock:
        route = mock.get(chats_url).respond(200, json=page)
        mock.get(green_chats).respond(
            200, json=[{"id": CHAT, "archive": True}, {"id": "1@g.us"}, ["x"], {"id": 5}]
        )
        wassenger = WassengerListings(WassengerAdapter()).chats_page(
            _client(), WASSENGER, 2, 50, frozenset({"resolved", "active"})
        )
        green = list(GreenApiListings(GreenApiAdapter()).chats(_client(), GREEN))
    request = route.calls.last.request
    assert dict(request.url.params) == {
        "sort": "lastMessageAt:asc",
        "page": "2",
        "size": "50",
        "status": "active,resolved",
    }
    assert request.method == "GET" and request.headers["Token"] == TOKEN
    assert wassenger == [
        ChatInfo(CHAT, "user", True, 1_793_527_200.0, 3, "resolved", ("vip", "lead")),
        ChatInfo("120363000000000001@g.us", "group", True, None, 0, None, ()),
        ChatInfo("120363000000000002@newsletter", "channel", False, None, 0, None, ()),
    ]
    assert green == [ChatInfo(CHAT, "user", True), ChatInfo("1@g.us", "group", False)]
