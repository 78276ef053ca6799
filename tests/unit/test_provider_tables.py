"""Every documented provider answer maps to exactly one outcome (tasks/providers/FACTS.md, row
by row)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import httpx
import pytest
import respx
from celery.exceptions import SoftTimeLimitExceeded

from config import Account, Secret, excerpt, parse_rate
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
from tasks.providers.wassenger import ARCHIVE_RULES as WASSENGER_RULES
from worker.contract.outcomes import (
    ACCOUNT_UNAVAILABLE,
    ALREADY_ARCHIVED,
    ARCHIVED,
    CHAT_NOT_FOUND,
    INVALID_REQUEST,
    NO_MESSAGES,
    QUOTA_EXCEEDED,
    RATE_LIMITED,
    TRANSIENT,
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
GREEN_URL = f"https://7105.api.greenapi.com/waInstance7105187566/archiveChat/{TOKEN}"
WASSENGER_URL = (
    "https://api.wassenger.com/v1/chat/61b37a069cba0c15d6c81c8e/chats/79001234567@c.us/archive"
)
CHAT = "79001234567@c.us"

# (HTTP status, body as the provider sends it, the one outcome it must mean)
GREEN_ANSWERS: list[tuple[int, str, Verdict]] = [
    (200, "", ARCHIVED),
    (400, '{"code":400,"message":"ArchiveChatError: already archive=true"}', ALREADY_ARCHIVED),
    (400, "archiveChatError: already archive=true", ALREADY_ARCHIVED),
    (400, f"ArchiveChatError: chat with id {CHAT} not found", CHAT_NOT_FOUND),
    (400, "ArchiveChatError: last message not found", NO_MESSAGES),
    (400, "Validation failed. Details: 'chatId' is required", INVALID_REQUEST),
    (500, "interface conversion: interface {} is float64, not string", INVALID_REQUEST),
    (400, "instance in starting process try later", TRANSIENT),
    (400, "instance is starting or not authorized", ACCOUNT_UNAVAILABLE),
    (400, "instance account not authorized", ACCOUNT_UNAVAILABLE),
    (400, "Instance account is expired. Please renew", ACCOUNT_UNAVAILABLE),
    (400, "Instance is deleted", ACCOUNT_UNAVAILABLE),
    (401, "Unauthorized", UNAUTHORIZED),
    (403, "Forbidden", UNAUTHORIZED),
    (404, "Not Found", ACCOUNT_UNAVAILABLE),
    (429, "Too Many Requests", RATE_LIMITED),
    (466, '{"invokeStatus":{"status":"QUOTE_EXCEEDED"},"correspondentsStatus":{}}', QUOTA_EXCEEDED),
    (499, "Client Closed Request", TRANSIENT),
    (500, "Internal Server Error", TRANSIENT),
    (502, "Bad Gateway", TRANSIENT),
    (503, "Service Unavailable", TRANSIENT),
    (504, "Gateway Timeout", TRANSIENT),
    (400, "something nobody documented", UNEXPECTED_RESPONSE),
    (302, "", UNEXPECTED_RESPONSE),
]

WASSENGER_ANSWERS: list[tuple[int, dict | str, Verdict]] = [
    (200, {"id": CHAT, "waStatus": "archived"}, ARCHIVED),
    (201, "", ARCHIVED),
    (409, {"status": 409, "message": "Conflict"}, ALREADY_ARCHIVED),
    (400, {"status": 400, "message": "Chat is already archived"}, ALREADY_ARCHIVED),
    (404, {"status": 404, "message": "Chat not found"}, CHAT_NOT_FOUND),
    (404, {"status": 404, "message": "Device not found"}, ACCOUNT_UNAVAILABLE),
    (400, {"status": 400, "message": "Device not registered or offline"}, ACCOUNT_UNAVAILABLE),
    # The path echoed in a body must not make an unknown 404 look like "chat not found".
    (
        404,
        {"status": 404, "message": "Not found", "path": "/v1/chat/x/chats/y"},
        ACCOUNT_UNAVAILABLE,
    ),
    # Nor a plain-text 404 from a router that does not know the path.
    (404, f"Cannot PUT /v1/chat/{WASSENGER.id}/chats/{CHAT}/archive", ACCOUNT_UNAVAILABLE),
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


def _client() -> httpx.Client:
    return httpx.Client(timeout=1.0)


@pytest.mark.parametrize(("status", "body", "verdict"), GREEN_ANSWERS)
def test_green_api_answer(status: int, body: str, verdict: Verdict) -> None:
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(GREEN_URL).respond(status, text=body)
        answer = GreenApiAdapter().archive(_client(), GREEN, CHAT)
    assert answer.verdict == verdict
    assert answer.status == status
    assert json.loads(route.calls.last.request.content) == {"chatId": CHAT}
    assert TOKEN not in answer.excerpt and TOKEN not in answer.meaning


@pytest.mark.parametrize(("status", "body", "verdict"), WASSENGER_ANSWERS)
def test_wassenger_answer(status: int, body: dict | str, verdict: Verdict) -> None:
    with respx.mock(assert_all_called=True) as mock:
        kwargs = {"json": body} if isinstance(body, dict) else {"text": body}
        route = mock.put(WASSENGER_URL).respond(status, **kwargs)
        answer = WassengerAdapter().archive(_client(), WASSENGER, CHAT)
    assert answer.verdict == verdict
    request = route.calls.last.request
    # The key travels in the Token header and nowhere in the URL.
    assert request.headers["Token"] == TOKEN
    assert TOKEN not in str(request.url)
    assert "@c.us" in request.url.raw_path.decode()


def test_every_table_row_is_reachable() -> None:
    """Each row is hit by at least one documented answer above: no dead rows, no gaps."""
    tables = (
        (GreenApiAdapter(), GREEN_RULES, GREEN_ANSWERS),
        (WassengerAdapter(), WASSENGER_RULES, WASSENGER_ANSWERS),
    )
    for adapter, rules, answers in tables:
        hit = set()
        for status, body, _ in answers:
            kwargs = {"json": body} if isinstance(body, dict) else {"text": body}
            text = adapter.answer_text(httpx.Response(status, **kwargs))
            hit.add(classify(rules, status, text))
        assert set(rules) == hit


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
