"""Wassenger as the simulator serves it, under `/v1`, authenticated by the `Token` header only.

Strict, like the real API: only these routes and verbs; any other path or verb gets a router's
plain-text 404 `Not Found` (never an API error naming the chat), counted in the counters'
`undocumented`:

    GET    /v1/devices                                   devices of the API key [sk][bot]
    GET    /v1/chat/{deviceId}/chats?sort=&page=&size=&status=&type=   chats, a page [spec]
    GET    /v1/chat/{deviceId}/chats/{chatWid}           one chat (its resource link) [spec]
    PUT    /v1/io/{deviceId}/chats/{chatWid}/archive     archive, no body [inbox]
    DELETE /v1/io/{deviceId}/chats/{chatWid}/archive     unarchive ("restore") [inbox]
The chat id may come with a raw or a percent-encoded `@`.

[inbox] wassengerhq/whatsapp-skills skills/wassenger-inbox/SKILL.md, recipe 5 (Wassenger's own)
[sk]    wassengerhq/whatsapp-skills skills/wassenger-setup/SKILL.md (Token header, /v1/devices)
[bot]   wassengerhq/whatsapp-chatgpt-bot main.js: a usable device has status "operative" and
        session.status "online"
[spec]  Wassenger's Swagger 2.0 spec, copy in logg926/wassenger-metrics specification1.json:
        the error object `{"status", "message", "errorCode"?}`, device and session status
        enums, chat fields `waStatus`, `status`; `/v1/chat/{device}/chats/{wid}` as a chat's link
[chosen] not documented: the simulator's choice (the adapter must not depend on the words)

Every API error is Wassenger's error object [spec] `{"status": <code>, "message": <text>[,
"errorCode": <code>]}`; all texts are [chosen]:
    401 `Unauthorized: invalid API key` errorCode `auth:invalid_token` (missing or wrong Token)
    404 `Device not found`                                 unknown device id
    404 `Chat not found`                                   unknown chat
    400 `Invalid chat ID`                                  not ...@c.us|@g.us|@lid|@newsletter
    400 `Invalid sort: ...` / `Invalid page: ...` / `Invalid size: ...` (size is 1..500)
    409 `Chat is already archived` errorCode `chat:already_archived`
    409 `Chat is not archived`     errorCode `chat:not_archived`     (unarchive)
    400 `Device not registered or offline`                 status device_unregistered
    400 `WhatsApp number is not ready to perform this action`  status not_operative (names
                                                           neither device nor session: the
                                                           adapter has to read /v1/devices)
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
account status (a timed one ends by itself) -> for archive/unarchive: `echo_next` (400 quoting
the Token header: worker/sandbox/simulator/echo.py), `fail_next`, then `error_ratio` -> the
request itself (archive: a false "already archived" first when one is set).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote

from worker.sandbox.simulator.answers import (
    Answer,
    SimRequest,
    json_answer,
    mask_path,
    reason_phrase,
    text,
)
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
    "starting": ("operative", "loading", "io"),
    "not_authorized": ("operative", "authorize", "io"),
    "device_unregistered": ("pending", "offline", "io"),
    "not_operative": ("verified", "offline", "io"),
    "expired": ("disabled", "offline", "io"),
    "deleted": ("removed", "offline", "io"),
}

# Routes: (verb, path shape) -> (method name for counters and limits, route template).
_ROUTES: dict[tuple[str, str, int], tuple[str, str]] = {
    ("GET", "chat", 5): ("listChats", "GET /v1/chat/{deviceId}/chats"),
    ("GET", "chat", 6): ("getChat", "GET /v1/chat/{deviceId}/chats/{chatWid}"),
    ("PUT", "io", 7): ("archive", "PUT /v1/io/{deviceId}/chats/{chatWid}/archive"),
    ("DELETE", "io", 7): ("unarchive", "DELETE /v1/io/{deviceId}/chats/{chatWid}/archive"),
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


def status_error(status: str) -> Answer | None:
    if status == "authorized":
        return None
    if status == "device_unregistered":
        return error(400, "Device not registered or offline")
    if status == "not_operative":
        return error(400, "WhatsApp number is not ready to perform this action")
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
    current = account.current_status(time.time())
    status, session, product = DEVICE_VIEW.get(current, ("operative", "offline", "io"))
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
    if len(parts) == 3 and parts[2] == "devices" and request.verb == "GET":
        with state.lock:
            state.counters.route("GET /v1/devices")
        return _devices(state, token)
    # ["", "v1", "chat"|"io", device, "chats", chatWid?, "archive"?]
    found = _ROUTES.get((request.verb, parts[2] if len(parts) > 2 else "", len(parts)))
    if (
        found is None
        or parts[4] != "chats"
        or (len(parts) == 7 and parts[6] != "archive")
        or (len(parts) > 5 and not parts[5])
    ):
        with state.lock:
            state.counters.no_route(request.verb, mask_path(request.path))
        return text(404, "Not Found")
    method, template = found
    with state.lock:
        state.counters.route(template)
        account = state.get(WASSENGER, parts[3])
        if account is None:
            state.counters.unmatched += 1
            return error(404, "Device not found")
        counter = state.counter(account, method)
        answer = _answer(state, account, method, token, counter, parts, request.query)
        state.counters.record_status(counter, answer.status)
        answer.delay += account.faults.latency_ms / 1000.0
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
    now = time.time()
    faults = account.faults
    if faults.in_outage(now):
        return fault(503, account)
    if token != account.token:
        return unauthorized()
    if not state.admit(account, method, counter, time.monotonic()):
        return too_many(account.retry_after)
    problem = status_error(account.current_status(now))
    if problem is not None:
        return problem
    if method == "listChats":
        return _list_chats(account, query)
    chat_id = unquote(parts[5])
    if method == "getChat":
        chat = account.chats.get(chat_id)
        return error(404, "Chat not found") if chat is None else json_answer(200, chat_json(chat))
    form = faults.next_echo()
    if form is not None:
        return echo(form, f"Token: {token}", account.id, token or "")
    failure = faults.next_failure()
    if failure is not None:
        return fault(failure, account)
    if not CHAT_ID.fullmatch(chat_id):
        return error(400, "Invalid chat ID")
    chat = account.chats.get(chat_id)
    if chat is None:
        return error(404, "Chat not found")
    if method == "archive":
        if chat.archived or faults.falsely_already_archived(chat.id):
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
