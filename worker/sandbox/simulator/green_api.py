"""GREEN-API as the simulator serves it: `/waInstance{idInstance}/{method}/{apiTokenInstance}`.

Strict, like the real API: only the methods and HTTP verbs below. Any other path, method or verb
gets the router's plain-text 404 (common-errors lists "404 Not Found" for a request method it
does not serve), counted in the counters' `undocumented`.

    POST archiveChat, unarchiveChat, getChatHistory, getContactInfo
    GET  getChats (also POST: newer docs send `count` in a body), lastIncomingMessages,
         lastOutgoingMessages, getStateInstance, getSettings

Bodies, each with its source; GREEN-API does not say whether its error identifiers come as text
or JSON, so the simulator sends what the API itself says as JSON `{"code": <status>, "message":
<text>}` and what a gateway says as plain text (the adapter matches substrings either way).

[ce] https://green-api.com/en/docs/api/common-errors/ (read in a web copy; the WhatsApp API's)
[ac] https://green-api.com/en/docs/api/service/archiveChat  [uc] .../service/unarchiveChat
[gs] https://green-api.com/en/docs/api/account/GetStateInstance
[gc] https://green-api.com/en/docs/api/service/GetContactInfo
[rl] https://green-api.com/en/docs/api/ratelimiter/
[chosen] not documented: the simulator's choice, so the adapter's fail-safe rows get exercised

Plain text (`text/plain`):
    401 `Unauthorized`                wrong token, never echoed [ce]
    403 `Forbidden`                   unknown idInstance [ce]
    404 `Not Found`                   unknown method, path or verb [ce]
    429 `Too Many Requests`           over the per-method limit, no Retry-After [ce][rl]
    499 `Client Closed Request`, 502 `Bad Gateway` [ce]; 503 `Service Unavailable`,
    504 `Gateway Timeout`             injected faults and outages (others: their reason phrase)
JSON `{"code": <status>, "message": <text>}`:
    400 `ArchiveChatError: chat with id {chatId} already archive=true` [ac]
    400 `UnarchiveChatError: chat with id {chatId} already archive=false` [uc]
    400 `ArchiveChatError: chat with id {chatId} not found` (UnarchiveChatError,
        GetChatHistoryError, GetContactInfoError [chosen] the same way) [ac][uc]
    400 `ArchiveChatError: cannot archive chat cause last message not found in chat` [ac]
    400 `Validation failed. Details: ...` (the details [chosen]; the prefix [ac])
    500 `interface conversion: interface {} is float64, not string`   chatId a JSON number (other
        JSON types name Go's type: `bool`, `map[string]interface {}`, `[]interface {}`) [ac]
    500 `Internal Server Error`                             injected 500
    400 `instance in starting process try later`           status starting [ce]
    400 `instance account not authorized`                  status not_authorized,
                                                           device_unregistered [ce]
    400 `Instance account is expired. Renew the instance plan in the console`
                                                           status expired, plan_required [ce]
    400 `Instance is deleted`                              status deleted [ce]
    400 `instance in sleepMode` [chosen]                   status sleep_mode
    400 `instance is blocked` [chosen]                     status blocked
    400 `Bad Request`                                      injected 400
466 quota (`application/json`), status quota_exceeded, archiveChat/unarchiveChat only [ce]:
    {"invokeStatus": {"method": <method>, "used": 100, "total": 100, "status": "QUOTE_EXCEEDED",
     "description": "Monthly quota has been exceeded. ..."},
     "correspondentsStatus": {"method": "correspondents", "used": 3, "total": 3,
     "status": "CORRESPONDENTS_QUOTE_EXCEEDED",
     "description": "Monthly quota has been exceeded. ..."}}
getStateInstance: `{"stateInstance": "authorized" | "notAuthorized" | "starting" | "sleepMode" |
    "blocked"}` [gs] for statuses authorized (and quota_exceeded), not_authorized
    (device_unregistered), starting, sleep_mode, blocked; expired, plan_required and deleted
    answer their 400 there too.
getContactInfo: `{"chatId", "name", "contactName", "isArchive", "isMute", "isDisappearing", ...}`
    [gc]; `isArchive` is the chat's true state, also while a false "already archived" is on.

Order of checks for a known route: unknown instance (403) -> outage (503, to every method) ->
token (401) -> sliding rate limit (429) -> account status (a timed one ends by itself) -> for
archive/unarchive: `echo_next` (400 quoting the path, token included: simulator/echo.py),
`fail_next`, then `error_ratio` -> the method itself (archiveChat: a false "already archived"
first when one is set).
"""

from __future__ import annotations

import json
import time
import zlib
from typing import Any
from urllib.parse import parse_qs, unquote

from worker.sandbox.simulator.answers import (
    Answer,
    SimRequest,
    empty,
    json_answer,
    mask_path,
    raw_json,
    reason_phrase,
    text,
)
from worker.sandbox.simulator.echo import echo
from worker.sandbox.simulator.journals import settings_of
from worker.sandbox.simulator.state import GREEN_API, Account, Chat, SimulatorState

ARCHIVE_METHODS = frozenset({"archiveChat", "unarchiveChat"})
# HTTP verbs per method; getChats also takes POST because newer docs send `count` in a body.
METHOD_VERBS: dict[str, frozenset[str]] = {
    "archiveChat": frozenset({"POST"}),
    "unarchiveChat": frozenset({"POST"}),
    "getChats": frozenset({"GET", "POST"}),
    "lastIncomingMessages": frozenset({"GET"}),
    "lastOutgoingMessages": frozenset({"GET"}),
    "getChatHistory": frozenset({"POST"}),
    "getContactInfo": frozenset({"POST"}),
    "getStateInstance": frozenset({"GET"}),
    "getSettings": frozenset({"GET"}),
}
MAX_LAST_MESSAGES = 10_000
DEFAULT_MINUTES = 1440  # GREEN-API's default window for lastIncoming/OutgoingMessages

CHAT_ID_SUFFIXES = ("@c.us", "@g.us", "@lid")
NO_MESSAGES = "cannot archive chat cause last message not found in chat"
_ERROR_PREFIX = {
    "archiveChat": "ArchiveChatError",
    "unarchiveChat": "UnarchiveChatError",
    "getChatHistory": "GetChatHistoryError",
    "getContactInfo": "GetContactInfoError",
}
_PLAIN_FAULTS = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    499: "Client Closed Request",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_GO_TYPES = {bool: "bool", int: "float64", float: "float64", dict: "map[string]interface {}"}
_STATE_INSTANCE = {
    "authorized": "authorized",
    "quota_exceeded": "authorized",
    "not_authorized": "notAuthorized",
    "device_unregistered": "notAuthorized",
    "starting": "starting",
    "sleep_mode": "sleepMode",
    "blocked": "blocked",
}
# What every call answers in a state GREEN-API documents no answer for (see the docstring).
_UNDOCUMENTED_STATE_ERRORS = {
    "sleep_mode": "instance in sleepMode",
    "blocked": "instance is blocked",
}
_QUOTA_TEXT = (
    "Monthly quota has been exceeded. Please go to your personal account and change the tariff "
    "to business https://console.green-api.com"
)


def api_error(status: int, message: str) -> Answer:
    return json_answer(status, {"code": status, "message": message})


def quota_exceeded(method: str) -> Answer:
    return json_answer(
        466,
        {
            "invokeStatus": {
                "method": method,
                "used": 100,
                "total": 100,
                "status": "QUOTE_EXCEEDED",
                "description": _QUOTA_TEXT,
            },
            "correspondentsStatus": {
                "method": "correspondents",
                "used": 3,
                "total": 3,
                "status": "CORRESPONDENTS_QUOTE_EXCEEDED",
                "description": _QUOTA_TEXT,
            },
        },
    )


def fault(status: int, method: str) -> Answer:
    """The answer for an injected or outage status."""
    if status == 500:
        # Never the "interface conversion" text: that one means "do not retry" to the adapter.
        return api_error(500, "Internal Server Error")
    if status == 466:
        return quota_exceeded(method)
    if status == 400:
        return api_error(400, "Bad Request")
    return text(status, _PLAIN_FAULTS.get(status) or reason_phrase(status))


def status_error(status: str, method: str) -> Answer | None:
    """The account-level error `method` answers in the account's status, or None."""
    if status == "authorized":
        return None
    if status == "deleted":
        return api_error(400, "Instance is deleted")
    if status in ("expired", "plan_required"):
        return api_error(400, "Instance account is expired. Renew the instance plan in the console")
    if method == "getStateInstance":
        return None  # the state itself tells the caller what is wrong
    if status == "starting":
        return api_error(400, "instance in starting process try later")
    if status in ("not_authorized", "device_unregistered"):
        return api_error(400, "instance account not authorized")
    if status in _UNDOCUMENTED_STATE_ERRORS:
        return api_error(400, _UNDOCUMENTED_STATE_ERRORS[status])
    if status == "quota_exceeded" and method in ARCHIVE_METHODS:
        return quota_exceeded(method)
    return None


def route(verb: str, method: str) -> str:
    return f"{verb} /waInstance{{idInstance}}/{method}/{{apiTokenInstance}}"


def handle(state: SimulatorState, request: SimRequest) -> Answer:
    parts = request.path.split("/")
    # ["", "waInstance{id}", method, token] with an optional trailing slash
    if len(parts) == 5 and parts[4] == "":
        parts.pop()
    verbs = METHOD_VERBS.get(parts[2]) if len(parts) == 4 else None
    instance_id = parts[1][10:] if len(parts) > 1 else ""
    if verbs is None or request.verb not in verbs or not instance_id.isdigit():
        with state.lock:
            state.counters.no_route(request.verb, mask_path(request.path))
        return text(404, "Not Found")
    method, token = parts[2], unquote(parts[3])
    with state.lock:
        state.counters.route(route(request.verb, method))
        account = state.accounts.get((GREEN_API, instance_id))
        if account is None:
            state.counters.unmatched += 1
            return text(403, "Forbidden")
        counter = state.counter(account, method)
        answer = _answer(state, account, method, token, request, counter)
        state.counters.record_status(counter, answer.status)
        answer.delay += account.faults.latency_ms / 1000.0
        return answer


def _answer(
    state: SimulatorState,
    account: Account,
    method: str,
    token: str,
    request: SimRequest,
    counter: Any,
) -> Answer:
    now = time.time()
    faults = account.faults
    if faults.in_outage(now):
        return fault(503, method)
    if token != account.token:
        return text(401, "Unauthorized")
    if not state.admit(account, method, counter, time.monotonic()):
        return text(429, "Too Many Requests")
    status = account.current_status(now)
    problem = status_error(status, method)
    if problem is not None:
        return problem
    if method in ARCHIVE_METHODS:
        form = faults.next_echo()
        if form is not None:
            return echo(form, request.path, account.id, token)
        failure = faults.next_failure()
        if failure is not None:
            return fault(failure, method)
        answer = _archive(account, method, request.body)
        if answer.status == 200 and faults.timeout_after_success_ms:
            answer.delay += faults.timeout_after_success_ms / 1000.0
        return answer
    if method == "getChats":
        return _get_chats(account, request)
    if method in ("lastIncomingMessages", "lastOutgoingMessages"):
        direction = "incoming" if method == "lastIncomingMessages" else "outgoing"
        return _last_messages(account, direction, request.query, now)
    if method == "getChatHistory":
        return _chat_history(account, request.body)
    if method == "getContactInfo":
        return _contact_info(account, request.body)
    if method == "getStateInstance":
        return json_answer(200, {"stateInstance": _STATE_INSTANCE.get(status, "notAuthorized")})
    return json_answer(200, settings_of(account.id, account.settings))


def _chat_id(body: bytes) -> tuple[str | None, Answer | None]:
    """The request's chatId, or the error GREEN-API gives for a body it cannot use."""
    try:
        payload = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return None, api_error(400, "Validation failed. Details: body: invalid JSON")
    if not isinstance(payload, dict) or payload.get("chatId") is None:
        return None, api_error(400, "Validation failed. Details: chatId: is required")
    chat_id = payload["chatId"]
    if not isinstance(chat_id, str):
        go_type = _GO_TYPES.get(type(chat_id), "[]interface {}")
        message = f"interface conversion: interface {{}} is {go_type}, not string"
        return None, api_error(500, message)
    local, _, _ = chat_id.partition("@")
    if not local or " " in chat_id or not chat_id.endswith(CHAT_ID_SUFFIXES):
        return None, api_error(
            400,
            "Validation failed. Details: chatId: must be a chat id ending in @c.us, @g.us or @lid",
        )
    return chat_id, None


def _archive(account: Account, method: str, body: bytes) -> Answer:
    chat_id, error = _chat_id(body)
    if error is not None:
        return error
    prefix = _ERROR_PREFIX[method]
    chat = account.chats.get(chat_id)  # type: ignore[arg-type]
    if chat is None:
        return api_error(400, f"{prefix}: chat with id {chat_id} not found")
    if method == "archiveChat":
        if chat.archived or account.faults.falsely_already_archived(chat.id):
            return api_error(400, f"{prefix}: chat with id {chat.id} already archive=true")
        if not chat.has_incoming:
            return api_error(400, f"{prefix}: {NO_MESSAGES}")
        chat.archived = True
    else:
        if not chat.archived:
            return api_error(400, f"{prefix}: chat with id {chat.id} already archive=false")
        chat.archived = False
    return empty(200)


def _get_chats(account: Account, request: SimRequest) -> Answer:
    count: int | None = None
    raw = parse_qs(request.query).get("count")
    if raw:
        count = _int_or_none(raw[0])
        if count is None:
            return api_error(400, "Validation failed. Details: count: must be an integer")
    elif request.verb == "POST" and request.body:
        try:
            payload = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            return api_error(400, "Validation failed. Details: body: invalid JSON")
        if isinstance(payload, dict) and payload.get("count") is not None:
            if not isinstance(payload["count"], int) or isinstance(payload["count"], bool):
                return api_error(400, "Validation failed. Details: count: must be an integer")
            count = payload["count"]
    chats = account.index.green_by_activity
    if count is not None and count >= 0:
        chats = chats[:count]
    return raw_json(200, "[" + ",".join(_green_chat_json(chat) for chat in chats) + "]")


def _green_chat_json(chat: Chat) -> str:
    prefix = chat.green_prefix
    if prefix is None:
        kind = "group" if chat.kind == "group" else "user"
        entry = {"id": chat.id, "name": chat.name, "type": kind}
        prefix = chat.green_prefix = json.dumps(entry, separators=(",", ":"))[:-1] + ',"archive":'
    return prefix + ("true}" if chat.archived else "false}")


def _int_or_none(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def _message(chat: Chat, direction: str, timestamp: float) -> dict[str, Any]:
    seconds = int(timestamp)
    letter = "I" if direction == "incoming" else "O"
    return {
        "type": direction,
        "idMessage": f"SIM{zlib.crc32(chat.id.encode()):08X}{letter}{seconds:X}",
        "timestamp": seconds,
        "typeMessage": "textMessage",
        "chatId": chat.id,
        "textMessage": f"Simulated {direction} message",
    }


def _last_messages(account: Account, direction: str, query: str, now: float) -> Answer:
    minutes = DEFAULT_MINUTES
    raw = parse_qs(query).get("minutes")
    if raw:
        parsed = _int_or_none(raw[0])
        if parsed is None or parsed < 0:
            return api_error(400, "Validation failed. Details: minutes: must be a positive integer")
        minutes = parsed
    # Only what the journal recorded: while its setting was on (simulator/journals.py).
    since, until = account.journals.of(direction).span(now - minutes * 60.0)
    chats = account.index.window(direction, since, until)[:MAX_LAST_MESSAGES]
    attr = "last_incoming" if direction == "incoming" else "last_outgoing"
    messages = [_message(chat, direction, getattr(chat, attr)) for chat in chats]
    return json_answer(200, messages)


def _chat_history(account: Account, body: bytes) -> Answer:
    chat_id, error = _chat_id(body)
    if error is not None:
        return error
    payload = json.loads(body)
    count = payload.get("count", 100)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        return api_error(400, "Validation failed. Details: count: must be a positive integer")
    chat = account.chats.get(chat_id)  # type: ignore[arg-type]
    if chat is None or chat.kind == "channel":
        return api_error(400, f"GetChatHistoryError: chat with id {chat_id} not found")
    messages = []
    if chat.has_incoming and chat.last_incoming is not None:
        messages.append(_message(chat, "incoming", chat.last_incoming))
    if chat.last_outgoing is not None:
        messages.append(_message(chat, "outgoing", chat.last_outgoing))
    messages.sort(key=lambda m: m["timestamp"], reverse=True)
    return json_answer(200, messages[:count])


def _contact_info(account: Account, body: bytes) -> Answer:
    chat_id, error = _chat_id(body)
    if error is not None:
        return error
    chat = account.chats.get(chat_id)  # type: ignore[arg-type]
    if chat is None:
        return api_error(400, f"GetContactInfoError: chat with id {chat_id} not found")
    return json_answer(
        200,
        {
            "avatar": "",
            "name": chat.name,
            "contactName": "",
            "email": "",
            "category": "",
            "description": "",
            "products": [],
            "chatId": chat.id,
            "lastSeen": None,
            "isArchive": chat.archived,
            "isDisappearing": False,
            "isMute": False,
            "messageExpiration": 0,
            "muteExpiration": None,
            "isBusiness": False,
        },
    )
