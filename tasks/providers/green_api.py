"""GREEN-API: archiveChat (https://green-api.com/en/docs/api/service/archiveChat).

Every call is ``{apiUrl}/waInstance{idInstance}/{method}/{apiTokenInstance}``: the token is in the
URL path, so a request URL must never reach a log, an exception text or a result. Error bodies
are text identifiers whose prefix varies between doc revisions (``ArchiveChatError:`` /
``archiveChatError:``), so rows match substrings, case-insensitively.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import httpx
import ijson

from config import GREEN_API, Account
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
)

from .base import (
    ANY_STATUS,
    ChatInfo,
    ListingError,
    ProviderAdapter,
    ResponseReader,
    Rule,
    kind_of,
    parsed,
    status,
    statuses,
    unreadable_answer,
)

# Order matters: the first matching row wins, and the catch-alls come last.
ARCHIVE_RULES: tuple[Rule, ...] = (
    Rule(statuses(200, 299), ARCHIVED, "archived"),
    Rule(status(400), ALREADY_ARCHIVED, "chat already archived", r"already archive=true"),
    Rule(status(400), NO_MESSAGES, "no incoming message in the chat", r"last message not found"),
    Rule(status(400), CHAT_NOT_FOUND, "chat not found", r"chat with id .*not found"),
    Rule(status(400), INVALID_REQUEST, "request validation failed", r"validation failed"),
    # "instance in starting process" is a restart (minutes); "is starting or not authorized"
    # below is a QR code nobody scanned. The first must be tried before the second.
    Rule(status(400), TRANSIENT, "instance starting", r"starting process"),
    Rule(status(400), ACCOUNT_UNAVAILABLE, "instance not authorized", r"not authorized"),
    Rule(status(400), ACCOUNT_UNAVAILABLE, "instance expired or deleted", r"expired|is deleted"),
    # A 500 that retrying cannot fix: chatId of the wrong JSON type.
    Rule(status(500), INVALID_REQUEST, "chatId of the wrong type", r"interface conversion"),
    Rule(status(401), UNAUTHORIZED, "wrong token"),
    Rule(status(403), UNAUTHORIZED, "wrong idInstance or URL"),
    # A 404 is a wrong path or host (#926), never "chat not found": every call of the account
    # would fail the same way.
    Rule(status(404), ACCOUNT_UNAVAILABLE, "wrong apiUrl or path"),
    Rule(status(429), RATE_LIMITED, "rate limited"),
    Rule(status(466), QUOTA_EXCEEDED, "monthly quota used"),
    Rule(status(499), TRANSIENT, "client closed request"),
    Rule(statuses(500, 599), TRANSIENT, "server error"),
    Rule(ANY_STATUS, UNEXPECTED_RESPONSE, "answer not in GREEN-API's documentation"),
)


def method_url(account: Account, method: str) -> str:
    """The URL of one method, token included: hand it to httpx only, never to a log."""
    return f"{account.api_url}/waInstance{account.id}/{method}/{account.token.reveal()}"


class GreenApiAdapter(ProviderAdapter):
    provider = GREEN_API
    archive_method = "archiveChat"
    archive_rules = ARCHIVE_RULES

    def archive_request(
        self, client: httpx.Client, account: Account, chat_id: str
    ) -> httpx.Request:
        return client.build_request(
            "POST", method_url(account, "archiveChat"), json={"chatId": chat_id}
        )


# -- listings, for sweeps ---------------------------------------------------------------------

# lastIncomingMessages / lastOutgoingMessages answer at most this many messages: a full answer
# may have cut off older ones, so chats missing from it are not proven inactive.
MESSAGE_WINDOW_CAP = 10_000


class GreenApiListings:
    """getChats (newest activity first, per GREEN-API's docs: "in chronological order", and
    `count` keeps "the number of chats sorted by chat activity time"), the two message windows
    and getChatHistory. Everything is streamed: a 100,000-chat answer never sits in memory."""

    def __init__(self, adapter: GreenApiAdapter) -> None:
        self.adapter = adapter

    def chats(
        self, client: httpx.Client, account: Account, count: int | None = None
    ) -> Iterator[ChatInfo]:
        params = {"count": count} if count is not None else None
        url = method_url(account, "getChats")
        request = self.adapter.build(client, "getChats", "GET", url, params=params)
        started = time.monotonic()
        with self.adapter.listing(client, "getChats", request) as response:
            items = ijson.items(ResponseReader(response), "item")
            for item in parsed("getChats", items, started):
                chat_id = item.get("id") if isinstance(item, dict) else None
                if isinstance(chat_id, str):
                    yield ChatInfo(chat_id, kind_of(chat_id), bool(item.get("archive")))

    def recent_messages(
        self, client: httpx.Client, account: Account, method: str, minutes: int
    ) -> Iterator[tuple[str, float]]:
        """(chat id, unix time) of each message of the last `minutes`, newest first."""
        url = method_url(account, method)
        request = self.adapter.build(client, method, "GET", url, params={"minutes": minutes})
        started = time.monotonic()
        with self.adapter.listing(client, method, request) as response:
            items = ijson.items(ResponseReader(response), "item")
            for item in parsed(method, items, started):
                if isinstance(item, dict) and isinstance(item.get("chatId"), str):
                    yield item["chatId"], _timestamp(method, item.get("timestamp"), started)

    def newest_message_at(
        self, client: httpx.Client, account: Account, chat_id: str
    ) -> float | None:
        """The time of the chat's newest message, or None when it has none."""
        method = "getChatHistory"
        url = method_url(account, method)
        body = {"chatId": chat_id, "count": 1}
        request = self.adapter.build(client, method, "POST", url, json=body)
        started = time.monotonic()
        with self.adapter.listing(client, method, request) as response:
            response.read()
            try:
                messages = response.json()
            except (ValueError, RecursionError) as error:
                raise ListingError(method, unreadable_answer(error, started)) from None
        if isinstance(messages, list) and messages and isinstance(messages[0], dict):
            return _timestamp(method, messages[0].get("timestamp"), started) or None
        return None


def _timestamp(method: str, value: object, started: float) -> float:
    """A message's unix time as a listing gives it (0 when absent)."""
    try:
        seconds = float(value or 0)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise ListingError(method, unreadable_answer(error, started)) from None
    if not math.isfinite(seconds):
        raise ListingError(method, unreadable_answer(ValueError("timestamp"), started))
    return seconds
