"""The transport-neutral request and answer the provider modules exchange with the HTTP server.

Provider logic returns an `Answer` instead of writing to tornado directly, so it can be unit
tested without sockets and so the server can apply injected latency after the state changed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"

# Statuses the standard library does not name but the providers (or their gateways) use.
_EXTRA_REASONS = {466: "Quota Exceeded", 499: "Client Closed Request"}


def reason_phrase(status: int) -> str:
    if status in _EXTRA_REASONS:
        return _EXTRA_REASONS[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


@dataclass(slots=True)
class SimRequest:
    verb: str
    path: str  # percent-encoded, without the query string
    query: str
    headers: dict[str, str]  # only the few the providers read, with lower-case names
    body: bytes


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before writing; the state has already changed


def empty(status: int = 200) -> Answer:
    return Answer(status)


def text(status: int, message: str) -> Answer:
    return Answer(status, message.encode(), TEXT_TYPE)


def json_answer(status: int, payload: Any) -> Answer:
    return Answer(status, json.dumps(payload, separators=(",", ":")).encode(), JSON_TYPE)


def raw_json(status: int, body: str | bytes) -> Answer:
    """A JSON answer serialised beforehand (large listings join cached parts)."""
    data = body.encode() if isinstance(body, str) else body
    return Answer(status, data, JSON_TYPE)


# The GREEN-API token segment wherever a `/waInstance{id}/{method}/` prefix sits in the path (an
# api_url with a path puts one before it), and token query values.
_GREEN_TOKEN = re.compile(r"(/waInstance[^/]*/[^/]*/)[^/?]+")
_TOKEN_QUERY = re.compile(r"(?i)([?&](?:token|apitokeninstance)=)[^&]*")


def mask_path(path: str) -> str:
    """The path as it may be logged or counted: token segment and token query values replaced
    by ***."""
    path = _GREEN_TOKEN.sub(r"\1***", path)
    return _TOKEN_QUERY.sub(r"\1***", path)
