"""Logging that never carries a secret, in text or JSON lines.

Redaction happens where a log record is *created* (a record factory), not in one handler: Celery,
pytest, Flower and the CLI each install their own handlers, and a record made anywhere in the
process is redacted before any of them sees it. The exception text is rendered and redacted at the
same moment, because a traceback can hold a URL (GREEN-API's token is in the path).

httpx logs every request URL at INFO, so its loggers are held at WARNING as well.

JSON lines are redacted field by field, before they are serialised: masking serialised JSON
could eat the backslash of an escaped quote and leave a line that no longer parses.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from config import redact

_installed = False
_lock = threading.Lock()
_formatter = logging.Formatter()

# Fields a job log line carries (see tasks/archive.py); JSON lines put them at the top level.
JOB_FIELDS = (
    "job_id",
    "provider",
    "account",
    "chat_id",
    "outcome",
    "reason",
    "attempts",
    "duration",
    "request_id",
    "source",
)


def _redacting_factory(base: Any) -> Any:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = base(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format must still be logged, not raised here
            message = str(record.msg)
        record.msg, record.args = redact(message), ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(_formatter.formatException(record.exc_info))
            # The traceback object holds frames (and their locals); drop it once rendered.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    return factory


def install_redaction() -> None:
    """Redact every log record of this process from now on. Idempotent."""
    global _installed
    with _lock:
        if _installed:
            return
        logging.setLogRecordFactory(_redacting_factory(logging.getLogRecordFactory()))
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
        _installed = True


def _redacted(value: Any) -> Any:
    """A field's value with every secret masked; numbers stay numbers."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(value if isinstance(value, str) else str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the job's fields if any."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": _redacted(record.getMessage()),
        }
        for name in JOB_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = _redacted(value)
        if record.exc_text:
            data["exception"] = _redacted(record.exc_text)
        return json.dumps(data)


def use_json_format(logger: logging.Logger | None = None) -> None:
    """Switch the handlers of ``logger`` (default: root) to JSON lines."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        handler.setFormatter(JsonFormatter())
