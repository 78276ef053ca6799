"""Wassenger as the simulator serves it, under `/v1`, authenticated by the `Token` header only.

Routes:
    GET    /v1/devices                                   devices of the API key
    GET    /v1/chat/{deviceId}/chats?sort=&page=&size=&status=&type=
    PUT    /v1/chat/{deviceId}/chats/{chatId}/archive    archive (no body)
    DELETE /v1/chat/{deviceId}/chats/{chatId}/archive    unarchive
(`/v1/io/{deviceId}/...`, the older prefix Wassenger's prose mentions, is accepted as a synonym.)
The chat id may come with a raw or a percent-encoded `@`.

Every error is JSON `{"status": <code>, "message": <text>[, "errorCode": <code>]}`:
    401 `Unauthorized: invalid API key` errorCode `auth:invalid_token` (missing or wrong Token)
    404 `Device not found`                                 unknown device id
    404 `Chat not found`                                   unknown chat
    404 `Not found`                                        unknown path
    405 `Method not allowed`
    400 `Invalid chat ID`                                  not ...@c.us|@g.us|@lid|@newsletter
    400 `Invalid sort: ...` / `Invalid page: ...` / `Invalid size: ...` (size is 1..500)
    409 `Chat is already archived` errorCode `chat:already_archived`
    409 `Chat is not archived`     errorCode `chat:not_archived`     (unarchive)
    400 `Device not registered or offline`                 status device_unregistered
    402 `Device plan does not support this feature` errorCode `billing:plan_required`
    402 `Monthly quota exceeded for this device` errorCode `billing:quota_exceeded`
    403 `Forbidden: device session is not authorized` errorCode `auth:forbidden` (not_authorized)
    403 `Forbidden: device subscription has expired` errorCode `auth:forbidden` (expired)
    403 `Forbidden: device has been deleted` errorCode `auth:forbidden` (deleted)
    503 `Device is starting, try again later`              status starting
    429 `Too many requests`, plus `Retry-After: <ceil(retry_after)>` when the account sets one
    injected 5xx (and outages, always 503): the status's reason phrase, e.g. `Service Unavailable`
Account-status errors apply to the chat endpoints; `/v1/devices` reports the status instead.

Order of checks: device (404) -> outage (503) -> token (401) -> sliding rate limit (429) ->
account status -> for archive/unarchive: `echo_next` (400 quoting the Token header:
worker/sandbox/simulator/echo.py), `fail_next`, then `error_ratio` -> the request itself.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote

from worker.sandbox.simulator.answers import Answer, SimRequest, json_answer, reason_phrase
from worker.sandbox.simulator.echo import echo
from worker.sandbox.simulator.state import (
    WASSENGER,
    WASSENGER_TYPES,
    Account,
    Chat,
    SimulatorState,
    retry_after_header,
)

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 20
SORTS = {"lastMessageAt:asc": False, "lastMessageAt:desc": True}
CHAT_ID = re.compile(r"[^@/\s]+@(?:c\.us|g\.us|lid|newsletter)")

# (device status, session status, subscription product) shown by /v1/devices per account status.
DEVICE_VIEW: dict[str, tuple[str, str, str]] = {
    "authorized": ("operative", "online", "io"),
    "quota_exceeded": ("operative", "online", "io"),
    "plan_required": ("operative", "online", "chat"),
    "starting": ("operative", "starting", "io"),
    "not_authorized": ("operative", "authorize", "io"),
    "device_unregistered": ("pending", "offline", "io"),
    "expired": ("disabled", "offline", "io"),
    "deleted": ("removed", "offline", "io"),
}


def error(status: int, message: str, error_code: str | None = None) -> Answer:
    payload: dict[str, Any] = {"status": status, "message": message}
    if error_code is not None:
        payload["errorCode"] = error_code
    return json_answer(status, payload)


def unauthorized() -> Answer:
    return error(401, "Unauthorized: invalid API key", "auth:invalid_token")


def too_many(retry_after: float | None) -> Answer:
    answer = error(429, "Too many requests")
    if retry_after is not None:
        answer.headers["Retry-After"] = retry_after_header(retry_after)
    return answer


def fault(status: int, account: Account) -> Answer:
    if status == 429:
        return too_many(account.retry_after)
    return error(status, reason_phrase(status))


def status_error(account: Account) -> Answer | None:
    status = account.status
    if status == "authorized":
        return None
    if status == "device_unregistered":
        return error(400, "Device not registered or offline")
    if status == "plan_required":
        return error(402, "Device plan does not support this feature", "billing:plan_required")
    if status == "quota_exceeded":
        return error(402, "Monthly quota exceeded for this device", "billing:quota_exceeded")
    if status == "not_authorized":
        return error(403, "Forbidden: device session is not authorized", "auth:forbidden")
    if status == "expired":
        return error(403, "Forbidden: device subscription has expired", "auth:forbidden")
    if status == "deleted":
        return error(403, "Forbidden: device has been deleted", "auth:forbidden")
    if status == "starting":
        return error(503, "Device is starting, try again later")
    return None


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def chat_json(chat: Chat) -> dict[str, Any]:
    return {
        "id": chat.id,
        "type": WASSENGER_TYPES[chat.kind],
        "name": chat.name,
        "lastMessageAt": iso_time(chat.last_activity),
        "status": chat.status,
        "waStatus": "archived" if chat.archived else "active",
        "labels": list(chat.labels),
        "meta": {"isArchived": chat.archived, "unreadCount": chat.unread},
    }


def device_json(account: Account) -> dict[str, Any]:
    status, session, product = DEVICE_VIEW.get(account.status, ("operative", "offline", "io"))
    digits = int(account.id, 16) % 10**8
    return {
        "id": account.id,
        "phone": str(account.settings.get("phone") or f"+1555{digits:08d}"),
        "alias": str(account.settings.get("alias") or f"Simulated device {account.id[-4:]}"),
        "status": status,
        "session": {"status": session},
        "billing": {"subscription": {"product": product}},
    }


def handle(state: SimulatorState, request: SimRequest) -> Answer:
    parts = request.path.split("/")
    if parts and parts[-1] == "" and len(parts) > 3:
        parts.pop()
    token = request.headers.get("token")
    # ["", "v1", "devices"]
    if len(parts) == 3 and parts[2] == "devices":
        if request.verb != "GET":
            return _unmatched(state, error(405, "Method not allowed"))
        return _devices(state, token)
    # ["", "v1", "chat", device, "chats"] or [..., "chats", chatId, "archive"]
    if len(parts) not in (5, 7) or parts[2] not in ("chat", "io") or parts[4] != "chats":
        return _unmatched(state, error(404, "Not found"))
    if len(parts) == 5:
        if request.verb != "GET":
            return _unmatched(state, error(405, "Method not allowed"))
        method = "listChats"
    else:
        if parts[6] != "archive":
            return _unmatched(state, error(404, "Not found"))
        if request.verb == "PUT":
            method = "archive"
        elif request.verb == "DELETE":
            method = "unarchive"
        else:
            return _unmatched(state, error(405, "Method not allowed"))
    with state.lock:
        account = state.get(WASSENGER, parts[3])
        if account is None:
            state.counters.unmatched += 1
            return error(404, "Device not found")
        counter = state.counter(account, method)
        answer = _answer(state, account, method, token, counter, parts, request.query)
        state.counters.record_status(counter, answer.status)
        answer.delay += account.faults.latency_ms / 1000.0
        return answer


def _unmatched(state: SimulatorState, answer: Answer) -> Answer:
    with state.lock:
        state.counters.unmatched += 1
    return answer


def _answer(
    state: SimulatorState,
    account: Account,
    method: str,
    token: str | None,
    counter: Any,
    parts: list[str],
    query: str,
) -> Answer:
    faults = account.faults
    if faults.in_outage(time.time()):
        return fault(503, account)
    if token != account.token:
        return unauthorized()
    if not state.admit(account, method, counter, time.monotonic()):
        return too_many(account.retry_after)
    problem = status_error(account)
    if problem is not None:
        return problem
    if method == "listChats":
        return _list_chats(account, query)
    form = faults.next_echo()
    if form is not None:
        return echo(form, f"Token: {token}", account.id, token or "")
    failure = faults.next_failure()
    if failure is not None:
        return fault(failure, account)
    chat_id = unquote(parts[5])
    if not CHAT_ID.fullmatch(chat_id):
        return error(400, "Invalid chat ID")
    chat = account.chats.get(chat_id)
    if chat is None:
        return error(404, "Chat not found")
    if method == "archive":
        if chat.archived:
            return error(409, "Chat is already archived", "chat:already_archived")
        chat.archived = True
    else:
        if not chat.archived:
            return error(409, "Chat is not archived", "chat:not_archived")
        chat.archived = False
    answer = json_answer(200, chat_json(chat))
    if faults.timeout_after_success_ms:
        answer.delay += faults.timeout_after_success_ms / 1000.0
    return answer


def _devices(state: SimulatorState, token: str | None) -> Answer:
    with state.lock:
        accounts = list(state.wassenger_devices_for(token)) if token else []
        if not accounts:
            state.counters.unmatched += 1
            return unauthorized()
        counters = [state.counter(account, "listDevices") for account in accounts]
        answer = _devices_answer(state, accounts, counters)
        for counter in counters:
            state.counters.record_status(counter, answer.status)
        answer.delay += max(account.faults.latency_ms for account in accounts) / 1000.0
        return answer


def _devices_answer(state: SimulatorState, accounts: list[Account], counters: list[Any]) -> Answer:
    now = time.time()
    if any(account.faults.in_outage(now) for account in accounts):
        return fault(503, accounts[0])
    if not state.admit_all(accounts, "listDevices", counters, time.monotonic()):
        waits = [a.retry_after for a in accounts if a.retry_after is not None]
        return too_many(max(waits) if waits else None)
    return json_answer(200, [device_json(account) for account in accounts])


def _csv(values: list[str] | None) -> frozenset[str] | None:
    if not values:
        return None
    items = frozenset(v.strip() for value in values for v in value.split(",") if v.strip())
    return items or None


def _list_chats(account: Account, query: str) -> Answer:
    params = parse_qs(query)
    sort = params.get("sort", ["lastMessageAt:desc"])[0]
    if sort not in SORTS:
        return error(400, "Invalid sort: use lastMessageAt:asc or lastMessageAt:desc")
    try:
        page = int(params.get("page", ["0"])[0])
        size = int(params.get("size", [str(DEFAULT_PAGE_SIZE)])[0])
    except ValueError:
        return error(400, "Invalid page: page and size must be integers")
    if page < 0:
        return error(400, "Invalid page: must be >= 0")
    if not 1 <= size <= MAX_PAGE_SIZE:
        return error(400, f"Invalid size: must be between 1 and {MAX_PAGE_SIZE}")
    view = account.index.wassenger_view(
        SORTS[sort], _csv(params.get("status")), _csv(params.get("type"))
    )
    start = page * size
    return json_answer(200, [chat_json(chat) for chat in view[start : start + size]])
