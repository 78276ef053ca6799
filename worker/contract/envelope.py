"""Celery messages on Redis, as raw text: read what any producer published to the intake.

Producers in any language publish to the intake queue. Nothing there reaches Celery as it came:
the router (worker/dispatch/router.py) reads each message with :func:`read`, which checks every
layer before anything else touches it (size first, then UTF-8, JSON, the kombu envelope, the body
encoding and compression, protocol 2's ``[args, kwargs, options]``, headers, the task's name and
keyword arguments), and either returns an :class:`Intake` or raises :class:`Refused` with one line
naming the field. A refused message is dead-lettered (``invalid_request``); it can never stop a
worker, because a worker's Celery consumer reads only the messages its dispatcher builds, with
Celery's own API, from jobs checked here (worker/dispatch/dispatcher.py).

The wire format is kombu's Redis transport's (a JSON object pushed onto a list):
``{"body": base64(JSON [args, kwargs, options]), "content-encoding", "content-type", "headers",
"properties": {..., "body_encoding": "base64", "delivery_tag"}}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from config import ArchiverError
from worker.contract.jobs import TASK_ID, ArchiveJob, InvalidJob, job_summary
from worker.contract.tasks import CHAT_TASKS, SWEEP_TASK, TASK_NAMES, UNPACED
from worker.tracing import trace_headers

# Every message we accept is a few hundred bytes; a limit far above that and far below what could
# hurt a worker. Checked on the raw text and again after base64 and decompression.
DEFAULT_MAX_BYTES = 64 * 1024
# An eta further away than this is a mistake (or an attack on the delayed set), not a plan.
MAX_ETA_SECONDS = 31 * 86400
_GZIP = "application/x-gzip"  # kombu's name for zlib compression (`compression="zlib"`)
# The job's history across its runs (worker/contract/history.py), carried in headers.
HISTORY_PREFIX = "archiver_"
_HISTORY_LIMIT = 1e12  # counts and unix times alike stay far below this


class Refused(ArchiverError, ValueError):
    """A message that is not a job we can run. ``str()`` is one line naming the field."""

    def __init__(self, detail: str, job: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.task_id: str | None = None  # set by read(), when the message has a well-formed id
        self.job = dict(job or {})
        self.trace: dict[str, str] = {}  # the message's W3C trace context, when asked for


@dataclass(frozen=True)
class Intake:
    """A message that passed every check, reduced to what a worker needs."""

    task: str
    task_id: str
    kwargs: dict[str, Any]  # validated and normalised
    account: str  # "provider:id" for chat jobs, UNPACED for sweeps
    not_before: float | None = None  # unix time, from the message's eta
    history: dict[str, float] = field(default_factory=dict)
    origin: str = ""
    trace: dict[str, str] = field(default_factory=dict)  # W3C trace context (``trace=True``)


def read(
    raw: bytes | str, *, now: float, max_bytes: int = DEFAULT_MAX_BYTES, trace: bool = False
) -> Intake:
    """Check one raw intake message at every layer; raise Refused naming the first problem.
    ``trace``: keep the message's W3C trace context (its ``traceparent`` and ``tracestate``
    headers, as the Celery instrumentation writes them); one that is malformed is left out,
    never refused."""
    if len(raw) > max_bytes:
        raise Refused(f"message: {len(raw)} bytes, more than the {max_bytes} allowed")
    text = _utf8(raw, "message") if isinstance(raw, bytes) else raw
    try:
        envelope = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise Refused(f"message: not JSON ({_reason(error)})") from None
    if not isinstance(envelope, dict):
        raise Refused(f"message: a JSON {_kind(envelope)}, not an object (a kombu envelope)")
    headers = _object(envelope, "headers")
    properties = _object(envelope, "properties")
    task_id = _task_id(headers)
    try:
        intake = _read_envelope(envelope, headers, properties, task_id, now, max_bytes)
    except Refused as refused:
        refused.task_id = task_id
        if trace:
            refused.trace = trace_headers(headers)
        raise
    return replace(intake, trace=trace_headers(headers)) if trace else intake


def _read_envelope(
    envelope: dict[str, Any],
    headers: dict[str, Any],
    properties: dict[str, Any],
    task_id: str | None,
    now: float,
    max_bytes: int,
) -> Intake:
    content_type = envelope.get("content-type")
    if content_type != "application/json":
        raise Refused(f"content-type: {_show(content_type)} is not application/json (JSON only)")
    encoding = envelope.get("content-encoding", "utf-8")
    if not isinstance(encoding, str) or encoding.lower() not in ("utf-8", "utf8"):
        raise Refused(f"content-encoding: {_show(encoding)} is not utf-8")
    body_encoding = properties.get("body_encoding")
    if body_encoding != "base64":
        raise Refused(f"properties.body_encoding: {_show(body_encoding)} is not base64")
    body = envelope.get("body")
    if not isinstance(body, str) or not body:
        raise Refused(f"body: {_show(body)} is not a base64 string")
    try:
        data = base64.b64decode(body.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise Refused("body: not valid base64") from None
    data = _decompressed(data, headers.get("compression"), max_bytes)
    if len(data) > max_bytes:
        raise Refused(f"body: {len(data)} bytes once decoded, more than the {max_bytes} allowed")
    text = _utf8(data, "body")
    try:
        decoded = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise Refused(f"body: not JSON ({_reason(error)})") from None
    if not (isinstance(decoded, list) and len(decoded) == 3):
        raise Refused("body: not [args, kwargs, options] (publish Celery protocol 2)")
    args, kwargs, options = decoded
    if not isinstance(kwargs, dict):
        raise Refused(f"body: keyword arguments are a {_kind(kwargs)}, not an object")
    job = job_summary(kwargs)

    task = headers.get("task")
    if task is None:
        raise Refused("headers.task: missing (publish Celery protocol 2)", job=job)
    if not isinstance(task, str) or task not in TASK_NAMES:
        known = ", ".join(sorted(TASK_NAMES))
        raise Refused(f"headers.task: {_show(task)} is not a task of ours ({known})", job=job)
    if task_id is None:
        raise Refused(f"headers.id: {_show(headers.get('id'))} is not a task id", job=job)
    if args != []:
        raise Refused(f"args: {task} takes keyword arguments only", job=job)
    if options is not None and not isinstance(options, dict):
        raise Refused(f"body: options are a {_kind(options)}, not an object", job=job)
    for name in ("callbacks", "errbacks", "chain", "chord"):
        if (options or {}).get(name):
            raise Refused(f"options.{name}: workflows are not supported", job=job)
    not_before = _eta(headers.get("eta"), now)
    _check_expires(headers.get("expires"), now)
    history = _history(headers)

    if task in CHAT_TASKS:
        try:
            parsed = ArchiveJob.parse(kwargs)
        except InvalidJob as error:
            raise Refused(str(error), job=job) from None
        checked, account = parsed.kwargs(), parsed.account_key
    else:
        checked, account = _sweep_kwargs(kwargs), UNPACED
    return Intake(task, task_id, checked, account, not_before, history, _origin(headers))


# -- helpers ------------------------------------------------------------------------------------


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Refused(f"{where}: not UTF-8 (byte {error.start})") from None


def _object(envelope: dict[str, Any], name: str) -> dict[str, Any]:
    value = envelope.get(name)
    if not isinstance(value, dict):
        raise Refused(f"{name}: {_show(value)} is not an object")
    return value


def _task_id(headers: Mapping[str, Any]) -> str | None:
    value = headers.get("id")
    return value if isinstance(value, str) and TASK_ID.match(value) else None


def _decompressed(data: bytes, compression: object, max_bytes: int) -> bytes:
    if compression is None:
        return data
    if compression != _GZIP:
        raise Refused(f"headers.compression: {_show(compression)} is not supported (zlib only)")
    # Bounded: a few hundred kilobytes of zlib can inflate to gigabytes. Never more than the
    # limit plus one byte is produced, which is enough to tell that it is too big.
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error:
        raise Refused("body: not valid zlib data") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise Refused(f"body: inflates to more than the {max_bytes} bytes allowed")
    if not inflater.eof:
        raise Refused("body: truncated zlib data")
    return out


def _when(value: object, name: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise Refused(f"headers.{name}: {_show(value)} is not an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Refused(f"headers.{name}: {_show(value)} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _eta(value: object, now: float) -> float | None:
    at = _when(value, "eta")
    if at is None or at <= now:
        return None
    if at - now > MAX_ETA_SECONDS:
        raise Refused(
            f"headers.eta: {_show(value)} is more than {MAX_ETA_SECONDS // 86400} days away"
        )
    return at


def _check_expires(value: object, now: float) -> None:
    at = _when(value, "expires")
    if at is not None and at <= now:
        raise Refused(f"headers.expires: expired at {value} before it could run")


def _history(headers: Mapping[str, Any]) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, value in headers.items():
        if not (isinstance(name, str) and name.startswith(HISTORY_PREFIX)):
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 <= value < _HISTORY_LIMIT
        ):
            raise Refused(f"headers.{name}: {_show(value)} is not a non-negative number")
        found[name] = value
    return found


def _origin(headers: Mapping[str, Any]) -> str:
    origin = headers.get("origin")
    return origin[:128] if isinstance(origin, str) else ""


_SWEEP_KWARGS = {"provider": str, "account": str, "dry_run": bool, "list_chats": bool}


def _sweep_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Sweeps: only the keyword arguments they take, of the right types, short."""
    checked: dict[str, Any] = {}
    for name, value in kwargs.items():
        kind = _SWEEP_KWARGS.get(name)
        if kind is None:
            raise Refused(f"{name}: unexpected keyword argument of {SWEEP_TASK}")
        if value is None:
            continue
        if not isinstance(value, kind) or (isinstance(value, str) and len(value) > 128):
            raise Refused(f"{name}: {_show(value)} is not a valid {kind.__name__}")
        checked[name] = value
    return checked


def _kind(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "number" if isinstance(value, int | float) else "null"
    )


def _show(value: object) -> str:
    """A value in an error line: short, one line, ASCII (never the whole of a huge value)."""
    text = ascii(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _reason(error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at character {error.pos}"
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return type(error).__name__
