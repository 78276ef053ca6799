"""A Celery consumer that dead-letters the messages stock Celery would drop.

Celery acknowledges an undecodable message, and rejects one for an unknown task or with a
forbidden content type: on Redis both mean the message is gone, with only a log line. Here each is
also written to the dead letters (reason ``invalid_request``) with what could be read of it, so an
operator can see it, fix the producer and replay the job.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any

from celery.worker.consumer import Consumer
from kombu.message import Message

from config import excerpt
from worker.contract.jobs import job_summary
from worker.contract.outcomes import Reason
from worker.services import get_services
from worker.stores.deadletters import DeadLetter

logger = logging.getLogger("chat_archiver.consumer")


def _body_text(message: Message) -> str:
    body = message.body
    if isinstance(body, bytes):
        return body.decode("utf-8", errors="replace")
    return str(body)


def _kwargs_of(message: Message) -> Any:
    """The keyword arguments of a protocol-2 message ([args, kwargs, embed]), if readable."""
    try:
        body = json.loads(_body_text(message))
    except ValueError:
        return None
    if isinstance(body, list) and len(body) >= 2:
        return body[1]
    return body


def dead_letter_message(message: Message, detail: str) -> None:
    headers = message.headers or {}
    kwargs = _kwargs_of(message)
    now = time.time()
    entry = DeadLetter(
        reason=Reason.INVALID_REQUEST,
        job=job_summary(kwargs) if kwargs is not None else {},
        detail=detail,
        excerpt=excerpt(_body_text(message)),
        first_attempt_at=now,
        last_attempt_at=now,
        worker=socket.gethostname(),
        task_id=headers.get("id") if isinstance(headers, dict) else None,
    )
    try:
        entry_id = get_services().dead_letters.add(entry)
    except Exception:
        # The message is about to be dropped by Celery; if we cannot store it, say so loudly
        # and keep the worker alive.
        logger.exception("could not dead-letter a malformed message (%s)", detail)
        return
    logger.error("dead-lettered a malformed message as %s: %s", entry_id, detail)


class ArchiverConsumer(Consumer):
    def on_decode_error(self, message: Message, exc: Exception) -> None:
        dead_letter_message(message, f"undecodable message ({type(exc).__name__})")
        message.ack()

    def on_unknown_message(self, body: Any, message: Message) -> None:
        dead_letter_message(message, "not a Celery task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        name = (message.headers or {}).get("task", "?")
        dead_letter_message(message, f"unknown task {name!r}")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        dead_letter_message(message, f"invalid task message ({type(exc).__name__})")
        super().on_invalid_task(body, message, exc)
