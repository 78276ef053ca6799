"""Dispatched jobs reach this node's Celery consumer in-process, not through Redis and back.

The dispatcher runs in a thread of the worker's main process, beside the consumer it feeds: each
message it builds (with Celery's API) goes to the consumer's own task handler on the consumer's
event loop (kombu's ``Hub.call_soon``, which is safe from another thread and wakes the loop).
While the consumer is away (a lost broker connection), messages wait here until it is back, and
their node renews their leases (``members``). One waiting here when the process dies dies with
it, as one in a dead node's Redis list would: the job's lease brings it back
(worker/dispatch/janitor.py).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from kombu import Message

logger = logging.getLogger("chat_archiver.dispatch")


class Handoff:
    def __init__(self, name: str) -> None:
        """``name``: the node's ready queue's, which its messages name as their routing key."""
        self.name = name
        self._lock = threading.Lock()
        self._inbox: deque[tuple[str, Message]] = deque()  # (lease member, message)
        self._hub: Any = None
        self._handler: Callable[[Message], None] | None = None
        self._scheduled = False
        self._closed = False

    def __len__(self) -> int:
        return len(self._inbox)

    @property
    def attached(self) -> bool:
        return self._handler is not None

    def attach(self, hub: Any, handler: Callable[[Message], None]) -> None:
        """The consumer started (again): ``handler`` is its task handler, run on ``hub``."""
        with self._lock:
            self._hub, self._handler, self._scheduled = hub, handler, False
        # A lost broker connection resets the hub, which runs its pending callbacks (a drain
        # among them) after its on_close ones: detached first, no message goes to a consumer
        # whose requests are about to be forgotten.
        on_close = getattr(hub, "on_close", None)
        if on_close is not None:
            on_close.add(self._hub_closing)
        self._schedule()

    def _hub_closing(self, hub: Any) -> None:
        hub.on_close.discard(self._hub_closing)
        if hub is self._hub:
            self.detach()

    def detach(self) -> None:
        """The consumer stopped: messages wait until it is attached again."""
        with self._lock:
            self._hub = self._handler = None

    def clear(self) -> None:
        """A warm shutdown: no message waiting here will run on this node. Their leases are no
        longer renewed, and the janitor gives their jobs back when the leases run out."""
        with self._lock:
            self._hub = self._handler = None
            self._inbox.clear()
            self._closed = True

    def members(self) -> list[str]:
        """The lease members of the jobs waiting here."""
        with self._lock:
            return [member for member, _ in self._inbox]

    def put(self, messages: Iterable[tuple[str, Message]]) -> None:
        """Messages with their jobs' lease members, oldest first (none once cleared)."""
        with self._lock:
            if self._closed:
                return
            self._inbox.extend(messages)
        self._schedule()

    def _schedule(self) -> None:
        with self._lock:
            hub = self._hub
            if hub is None or self._scheduled or not self._inbox:
                return
            self._scheduled = True
        hub.call_soon(self._drain)

    def _drain(self) -> None:
        """On the consumer's loop: every waiting message to its handler, oldest first. A message
        leaves only once its handler returns, when Celery holds it as a request: the node's free
        slots always count it in one place or the other (the handler sends an event, and the
        dispatcher's thread runs meanwhile)."""
        while True:
            with self._lock:
                handler = self._handler
                if handler is None or not self._inbox:
                    self._scheduled = False
                    return
                entry = self._inbox[0]
            try:
                handler(entry[1])
            except Exception:
                # The loop must go on; the job's lease brings it back.
                logger.exception("the consumer refused job %s", entry[1].headers.get("id"))
            with self._lock:
                if self._inbox and self._inbox[0] is entry:  # not cleared meanwhile
                    self._inbox.popleft()
