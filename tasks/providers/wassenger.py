"""Wassenger: archive and unarchive a chat (``PUT`` / ``DELETE``
``/v1/io/{deviceId}/chats/{chatWid}/archive``), and the reads that back them. Every fact here is
cited in tasks/providers/FACTS.md.

The API key goes in the ``Token`` header only (Wassenger also accepts a ``token`` query parameter,
which would put it in URLs). The paths are Wassenger's own (wassengerhq/whatsapp-skills, inbox
recipe 5). Less is documented than for GREEN-API: the error object's shape is
(``{"status", "message", "errorCode"?, ...}``, status equal to the HTTP status), its texts are
not. So rows branch on the status first and read the message only from a body in that shape:
anything else (a router's "Cannot PUT /v1/...", a proxy's page) has no message, and a path it
echoes can never read as "chat not found". A 404 is ``chat_not_found`` only with Wassenger's
error object saying so; any other 404 is ``misconfigured``. Device states (not operative, session
offline) have no documented answer: a 4xx naming the device or session pauses the account, and a
400 that names neither is checked against the device record (``GET /v1/devices``: ``status``
``operative`` and ``session.status`` ``online``, as Wassenger's own bot requires) before it may
dead-letter a job.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import httpx

from config import WASSENGER, Account, excerpt
from worker.contract.outcomes import (
    ACCOUNT_UNAVAILABLE,
    ALREADY_ARCHIVED,
    ALREADY_UNARCHIVED,
    ARCHIVED,
    CHAT_NOT_FOUND,
    INVALID_REQUEST,
    MISCONFIGURED,
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
    Rule,
    kind_of,
    status,
    statuses,
    unreadable_answer,
)

# Rows both calls share. Order matters: the first matching row wins, the catch-alls come last.
_SHARED_ROWS: tuple[Rule, ...] = (
    # Only Wassenger's error object saying so (answer_text): see the module docstring.
    Rule(status(404), CHAT_NOT_FOUND, "chat not found", r"\Achat not found\b"),
    # Status-specific account rows come before the device row, which would shadow them.
    Rule(status(401), UNAUTHORIZED, "API key rejected"),
    Rule(status(403), UNAUTHORIZED, "API key lacks permission"),
    Rule(status(402), QUOTA_EXCEEDED, "quota used", r"quota"),
    Rule(status(402), ACCOUNT_UNAVAILABLE, "billing or plan"),
    Rule(statuses(400, 404), ACCOUNT_UNAVAILABLE, "device not usable", r"\b(?:device|session)\b"),
    # A route Wassenger does not serve at the account's api_url: fix the setting, keep the jobs.
    Rule(statuses(404, 405), MISCONFIGURED, "no such route at the account's api_url"),
    # A job's fault only while the device record says the device works.
    Rule(status(400), INVALID_REQUEST, "request refused", confirm=True),
    Rule(status(429), RATE_LIMITED, "rate limited"),
    Rule(statuses(500, 599), TRANSIENT, "server error"),
    Rule(ANY_STATUS, UNEXPECTED_RESPONSE, "answer not in Wassenger's documentation", confirm=True),
)

# "Already archived" and "not archived" answers are not documented: 409 Conflict, or a message
# saying so, is taken as the state already reached (FACTS.md, Unconfirmed).
ARCHIVE_RULES: tuple[Rule, ...] = (
    Rule(statuses(200, 299), ARCHIVED, "archived"),
    Rule(status(409), ALREADY_ARCHIVED, "chat already archived"),
    Rule(statuses(400, 499), ALREADY_ARCHIVED, "chat already archived", r"already archived"),
    *_SHARED_ROWS,
)

UNARCHIVE_RULES: tuple[Rule, ...] = (
    Rule(statuses(200, 299), UNARCHIVED, "unarchived"),
    Rule(status(409), ALREADY_UNARCHIVED, "chat not archived"),
    Rule(statuses(400, 499), ALREADY_UNARCHIVED, "chat not archived", r"not archived"),
    *_SHARED_ROWS,
)

API_PREFIX = "/v1"


def auth_headers(account: Account) -> dict[str, str]:
    return {"Token": account.token.reveal()}


def archive_url(account: Account, chat_id: str) -> str:
    # The raw "@" stays in the path: it is a legal path character and what the API expects.
    return f"{account.api_url}{API_PREFIX}/io/{account.id}/chats/{chat_id}/archive"


def error_object(response: httpx.Response) -> dict[str, Any] | None:
    """The body when it is Wassenger's documented error object: a JSON object whose ``status``
    is the answer's HTTP status and whose ``message`` is text."""
    try:
        body = json.loads(response.content or b"null")
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None
    if not isinstance(body, dict) or not isinstance(body.get("message"), str):
        return None
    code = body.get("status")
    if isinstance(code, bool) or not isinstance(code, int | float) or code != response.status_code:
        return None
    return body


class WassengerAdapter(ProviderAdapter):
    provider = WASSENGER
    archive_method = "archive"
    unarchive_method = "unarchive"
    archived_state_method = "getChat"
    account_state_method = "listDevices"
    archive_rules = ARCHIVE_RULES
    unarchive_rules = UNARCHIVE_RULES
    archive_route = ("PUT", "/v1/io/{deviceId}/chats/{chatWid}/archive")
    unarchive_route = ("DELETE", "/v1/io/{deviceId}/chats/{chatWid}/archive")

    def archive_request(
        self, client: httpx.Client, account: Account, chat_id: str
    ) -> httpx.Request:
        return client.build_request(
            "PUT", archive_url(account, chat_id), headers=auth_headers(account)
        )

    def unarchive_request(
        self, client: httpx.Client, account: Account, chat_id: str
    ) -> httpx.Request:
        url = archive_url(account, chat_id)
        return client.build_request("DELETE", url, headers=auth_headers(account))

    def answer_text(self, response: httpx.Response) -> str:
        # Only the error object's fields: a plain-text body (a router's "Cannot PUT
        # /v1/io/.../chats/...") echoes the path, whose "chat" would read as chat_not_found.
        body = error_object(response)
        if body is None:
            return ""
        code = body.get("errorCode")
        return f"{body['message']} {code if isinstance(code, str) else ''}".strip()

    def account_state(self, client: httpx.Client, account: Account) -> AccountCheck:
        method = self.account_state_method
        url = f"{account.api_url}{API_PREFIX}/devices"
        payload, failed = self.read_json(client, method, "GET", url, headers=auth_headers(account))
        if failed is not None:
            usable = False if failed.verdict.kind is Kind.ACCOUNT else None
            return AccountCheck(usable, f"{method}: {failed.meaning}")
        devices = payload if isinstance(payload, list) else []
        for device in devices:
            if isinstance(device, dict) and str(device.get("id", "")).lower() == account.id:
                session = device.get("session")
                session_status = session.get("status") if isinstance(session, dict) else None
                device_status = device.get("status")
                usable = device_status == "operative" and session_status == "online"
                shown = excerpt(f"device {device_status}, session {session_status}")
                return AccountCheck(usable, shown)
        return AccountCheck(False, "device not among the API key's devices")

    def archived_state(self, client: httpx.Client, account: Account, chat_id: str) -> bool | None:
        # One chat record (its resource link in Wassenger's spec): waStatus, meta.isArchived.
        url = f"{account.api_url}{API_PREFIX}/chat/{account.id}/chats/{chat_id}"
        payload, _ = self.read_json(
            client, self.archived_state_method, "GET", url, headers=auth_headers(account)
        )
        if not isinstance(payload, dict):
            return None
        meta = payload.get("meta")
        flag = meta.get("isArchived") if isinstance(meta, dict) else None
        wa_status = payload.get("waStatus")
        if wa_status == "archived" or flag is True:
            return True
        if isinstance(wa_status, str) or flag is False:
            return False
        return None


# -- listings, for sweeps ---------------------------------------------------------------------


class WassengerListings:
    """Chats of a device, oldest activity first, a page at a time (a page is a bare JSON array;
    a page shorter than `size` is the last)."""

    def __init__(self, adapter: WassengerAdapter) -> None:
        self.adapter = adapter

    def chats_page(
        self,
        client: httpx.Client,
        account: Account,
        page: int,
        size: int,
        statuses: frozenset[str] | None = None,
    ) -> list[ChatInfo]:
        params: dict[str, str | int] = {"sort": "lastMessageAt:asc", "page": page, "size": size}
        if statuses:
            params["status"] = ",".join(sorted(statuses))
        url = f"{account.api_url}{API_PREFIX}/chat/{account.id}/chats"
        method = "listChats"
        request = self.adapter.build(
            client, method, "GET", url, params=params, headers=auth_headers(account)
        )
        started = time.monotonic()
        with self.adapter.listing(client, method, request) as response:
            response.read()
            try:
                items = response.json()
                if not isinstance(items, list):
                    return []
                return [chat for chat in map(_chat_info, items) if chat is not None]
            except (ValueError, TypeError, AttributeError, RecursionError) as error:
                # Not JSON, or a chat whose fields are not what the documentation says.
                raise ListingError(method, unreadable_answer(error, started)) from None


def _chat_info(item: object) -> ChatInfo | None:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        return None
    meta: dict[str, Any] = item["meta"] if isinstance(item.get("meta"), dict) else {}
    last = item.get("lastMessageAt")
    labels = tuple(
        label.get("name", "") if isinstance(label, dict) else str(label)
        for label in item.get("labels") or ()
    )
    return ChatInfo(
        id=item["id"],
        kind=kind_of(item["id"]),
        # Archived for WhatsApp: either flag says so (FACTS.md).
        archived=item.get("waStatus") == "archived" or bool(meta.get("isArchived")),
        last_activity=datetime.fromisoformat(last).timestamp() if isinstance(last, str) else None,
        unread=int(meta.get("unreadCount") or 0),
        status=item.get("status") if isinstance(item.get("status"), str) else None,
        labels=labels,
    )
