"""Wassenger: archive a chat (``PUT /v1/chat/{deviceId}/chats/{chatId}/archive``).

The API key goes in the ``Token`` header only (Wassenger also accepts a ``token`` query parameter,
which would put it in URLs). Less is confirmed publicly than for GREEN-API (see FACTS.md):
the path comes from the sibling WaliChat node, "already archived" has no documented answer, so
this table treats 409 or a message saying so as success. Rows branch on status first, then on
the error's ``message``/``errorCode`` only, never on the raw body, which may echo the path.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import httpx

from config import WASSENGER, Account
from worker.contract.outcomes import (
    ACCOUNT_UNAVAILABLE,
    ALREADY_ARCHIVED,
    ARCHIVED,
    CHAT_NOT_FOUND,
    INVALID_REQUEST,
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
    Rule,
    kind_of,
    status,
    statuses,
    unreadable_answer,
)

ARCHIVE_RULES: tuple[Rule, ...] = (
    Rule(statuses(200, 299), ARCHIVED, "archived"),
    Rule(status(409), ALREADY_ARCHIVED, "chat already archived"),
    Rule(statuses(400, 499), ALREADY_ARCHIVED, "chat already archived", r"already archived"),
    Rule(status(404), CHAT_NOT_FOUND, "chat not found", r"\bchat\b"),
    # Status-specific account rows come before the "device" row, which would shadow them.
    Rule(status(401), UNAUTHORIZED, "bad API key"),
    Rule(status(403), UNAUTHORIZED, "API key lacks permission"),
    Rule(status(402), QUOTA_EXCEEDED, "quota used", r"quota"),
    Rule(status(402), ACCOUNT_UNAVAILABLE, "billing or plan"),
    Rule(statuses(400, 404), ACCOUNT_UNAVAILABLE, "device not usable", r"\bdevice\b"),
    # A 404 that names neither chat nor device: a wrong api_url or path fails every call.
    Rule(status(404), ACCOUNT_UNAVAILABLE, "wrong api_url or path"),
    Rule(status(400), INVALID_REQUEST, "invalid request"),
    Rule(status(429), RATE_LIMITED, "rate limited"),
    Rule(statuses(500, 599), TRANSIENT, "server error"),
    Rule(ANY_STATUS, UNEXPECTED_RESPONSE, "answer not in Wassenger's documentation"),
)

API_PREFIX = "/v1"


def auth_headers(account: Account) -> dict[str, str]:
    return {"Token": account.token.reveal()}


class WassengerAdapter(ProviderAdapter):
    provider = WASSENGER
    archive_method = "archive"
    archive_rules = ARCHIVE_RULES

    def archive_request(
        self, client: httpx.Client, account: Account, chat_id: str
    ) -> httpx.Request:
        # The raw "@" stays in the path: it is a legal path character and what the API expects.
        url = f"{account.api_url}{API_PREFIX}/chat/{account.id}/chats/{chat_id}/archive"
        return client.build_request("PUT", url, headers=auth_headers(account))

    def answer_text(self, response: httpx.Response) -> str:
        # Only a JSON error's fields: a plain-text body (a proxy's or a router's "Cannot PUT
        # /v1/chat/.../chats/...") echoes the path, whose "chat" would read as chat_not_found.
        try:
            body = json.loads(response.content or b"null")
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            return ""
        if isinstance(body, dict):
            return f"{body.get('message', '')} {body.get('errorCode', '')}".strip()
        return ""


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
