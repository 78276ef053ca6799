"""GREEN-API: archiveChat, unarchiveChat, and the reads that back them (getStateInstance,
getContactInfo). Every fact here is cited in tasks/providers/FACTS.md.

Every call is ``{apiUrl}/waInstance{idInstance}/{method}/{apiTokenInstance}``: the token is in the
URL path, so a request URL must never reach a log, an exception text or a result. Error bodies
are text identifiers whose prefix varies between doc revisions (``ArchiveChatError:`` /
``archiveChatError:``), so rows match substrings, case-insensitively.

What the tables rely on, from GREEN-API's pages: a chat's own errors are 400s naming it
(archiveChat, unarchiveChat); the instance's states are 400s of the common-errors page
("instance in starting process try later", "instance is starting or not authorized",
"Instance account is expired", "Instance is deleted") and getStateInstance's values
(notAuthorized, blocked, sleepMode, starting, yellowCard). What an archive call answers while the
instance is asleep or blocked is not documented: such a 400 lands on the ``confirm`` row, and the
state read from getStateInstance decides (a state that is not ``authorized``, or none at all,
pauses the account). A 404 is never "chat not found" here: GREEN-API's "not found" is a 400 body;
its 404 means no such method at that URL (common-errors; green-api/issues #926).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import httpx
import ijson

from config import GREEN_API, Account, excerpt
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
)

from .base import (
    ANY_STATUS,
    AccountCheck,
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

# A chat's own errors (archiveChat and unarchiveChat pages): this job can never succeed.
_CHAT_ROWS: tuple[Rule, ...] = (
    Rule(status(400), NO_MESSAGES, "no incoming message in the chat", r"last message not found"),
    Rule(status(400), CHAT_NOT_FOUND, "chat not found", r"chat with id .*not found"),
    Rule(
        status(400),
        INVALID_REQUEST,
        "request validation failed",
        r"validation failed|bad request data|unexpected token",
    ),
    # A 500 that retrying cannot fix: chatId of the wrong JSON type.
    Rule(status(500), INVALID_REQUEST, "chatId of the wrong type", r"interface conversion"),
)

# The instance's states (common-errors page): every call of the account fails alike until the
# state changes, so the account pauses and a probe finds it back. "starting" lasts up to 5
# minutes (getStateInstance page): a pause, not a retry budget spent per job.
_INSTANCE_ROWS: tuple[Rule, ...] = (
    Rule(status(400), ACCOUNT_UNAVAILABLE, "instance starting", r"starting process"),
    Rule(
        status(400),
        ACCOUNT_UNAVAILABLE,
        "instance starting or not authorized",
        r"starting or not authorized",
    ),
    Rule(status(400), ACCOUNT_UNAVAILABLE, "instance not authorized", r"not authorized"),
    Rule(status(400), ACCOUNT_UNAVAILABLE, "instance expired", r"account is expired"),
    Rule(status(400), ACCOUNT_UNAVAILABLE, "instance deleted", r"instance is deleted"),
)

_TAIL_ROWS: tuple[Rule, ...] = (
    Rule(status(401), UNAUTHORIZED, "wrong apiTokenInstance"),
    Rule(status(403), UNAUTHORIZED, "wrong idInstance or request URL"),
    # No such method at this apiUrl: a setting to fix (or GREEN-API's own #926), never a chat.
    Rule(statuses(404, 405), MISCONFIGURED, "no such method at the account's apiUrl"),
    Rule(status(429), RATE_LIMITED, "rate limited"),
    Rule(status(466), QUOTA_EXCEEDED, "monthly quota used"),
    Rule(status(499), TRANSIENT, "client closed request"),
    Rule(statuses(500, 599), TRANSIENT, "server error"),
    # Undocumented: a job's problem only if getStateInstance says the instance is authorized.
    Rule(status(400), UNEXPECTED_RESPONSE, "undocumented 400", confirm=True),
    Rule(ANY_STATUS, UNEXPECTED_RESPONSE, "answer not in GREEN-API's documentation", confirm=True),
)

ARCHIVE_RULES: tuple[Rule, ...] = (
    Rule(statuses(200, 299), ARCHIVED, "archived"),
    Rule(status(400), ALREADY_ARCHIVED, "chat already archived", r"already archive=true"),
    *_CHAT_ROWS,
    *_INSTANCE_ROWS,
    *_TAIL_ROWS,
)

UNARCHIVE_RULES: tuple[Rule, ...] = (
    Rule(statuses(200, 299), UNARCHIVED, "unarchived"),
    Rule(status(400), ALREADY_UNARCHIVED, "chat already unarchived", r"already archive=false"),
    *_CHAT_ROWS,
    *_INSTANCE_ROWS,
    *_TAIL_ROWS,
)

# getStateInstance's value for an instance that works; every other documented value (and any
# new one) means calls may fail for the whole account.
USABLE_STATE = "authorized"


def method_url(account: Account, method: str) -> str:
    """The URL of one method, token included: hand it to httpx only, never to a log."""
    return f"{account.api_url}/waInstance{account.id}/{method}/{account.token.reveal()}"


class GreenApiAdapter(ProviderAdapter):
    provider = GREEN_API
    archive_method = "archiveChat"
    unarchive_method = "unarchiveChat"
    archived_state_method = "getContactInfo"
    account_state_method = "getStateInstance"
    archive_rules = ARCHIVE_RULES
    unarchive_rules = UNARCHIVE_RULES
    archive_route = ("POST", "/waInstance{idInstance}/archiveChat/{apiTokenInstance}")
    unarchive_route = ("POST", "/waInstance{idInstance}/unarchiveChat/{apiTokenInstance}")

    def archive_request(
        self, client: httpx.Client, account: Account, chat_id: str
    ) -> httpx.Request:
        return client.build_request(
            "POST", method_url(account, "archiveChat"), json={"chatId": chat_id}
        )

    def unarchive_request(
        self, client: httpx.Client, account: Account, chat_id: str
    ) -> httpx.Request:
        return client.build_request(
            "POST", method_url(account, "unarchiveChat"), json={"chatId": chat_id}
        )

    def account_state(self, client: httpx.Client, account: Account) -> AccountCheck:
        method = self.account_state_method
        payload, failed = self.read_json(client, method, "GET", method_url(account, method))
        if failed is not None:
            # An instance-state error is itself an answer; a 429 or a 5xx tells nothing.
            usable = False if failed.verdict.kind is Kind.ACCOUNT else None
            return AccountCheck(usable, f"{method}: {failed.meaning}")
        state = payload.get("stateInstance") if isinstance(payload, dict) else None
        if not isinstance(state, str):
            return AccountCheck(None, f"{method}: no stateInstance in the answer")
        return AccountCheck(state == USABLE_STATE, f"stateInstance {excerpt(state)}")

    def archived_state(self, client: httpx.Client, account: Account, chat_id: str) -> bool | None:
        # getContactInfo (1/s) answers one chat's isArchive: the cheapest documented read of
        # the flag; getChats holds it too, but lists every chat.
        method = self.archived_state_method
        url = method_url(account, method)
        payload, _ = self.read_json(client, method, "POST", url, json={"chatId": chat_id})
        flag = payload.get("isArchive") if isinstance(payload, dict) else None
        return flag if isinstance(flag, bool) else None


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
