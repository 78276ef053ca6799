"""The dispatcher: hands a node's free worker slots the jobs that may run now.

One per worker node, in a thread of the main process. It asks the job store for as many due jobs
as the node has free slots (lua/dispatch.lua reserves each one's permit and lease in the same
step), builds each one's Celery message with Celery's own API, and hands it to the node's Celery
consumer in-process (worker/dispatch/handoff.py). So a worker never holds a job it cannot run
now, and never sleeps more than the dispatch lead for a permit.

It waits on a local event: a slot of this node freed (the task's request pokes it), work arrived
anywhere (a Redis publish on the wake channel, relayed by a subscriber thread, which costs nothing
while nothing happens), or the next job is due (its own timer, punctual to a millisecond).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery
from kombu import Message, serialization

from worker.contract.history import TICKET_HEADER, Ticket
from worker.dispatch.handoff import Handoff
from worker.stores.clock import MICROS
from worker.stores.jobs import Dispatch, DispatchedJob, JobStore

if TYPE_CHECKING:
    from worker.tracing.spans import JobTracer

logger = logging.getLogger("chat_archiver.dispatch")

# The longest a dispatcher waits without looking: it bounds how late a missed wake-up can make a
# job (a wake published while the subscriber reconnected), and costs one call per period idle.
MAX_SLEEP = 5.0


class Dispatcher:
    def __init__(
        self,
        store: JobStore,
        app: Celery,
        handoff: Handoff,
        capacity: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
        tracer: JobTracer | None = None,
    ) -> None:
        """``capacity``: the node's free worker slots; ``handoff``: the way to its consumer;
        ``tracer``: while tracing is on, a traced job's message carries its dispatch's trace
        context to its run (worker/tracing)."""
        self.store = store
        self.tracer = tracer
        self.app = app
        self.handoff = handoff
        self.queue = handoff.name
        self.serializer = app.conf.task_serializer
        self.capacity = capacity
        self.clock = clock
        self._wake = threading.Event()

    def poke(self) -> None:
        """A worker slot of this node freed, or work arrived: look again now."""
        self._wake.set()

    def step(self) -> float:
        """Dispatch once; return how long to wait before the next step (0: go again)."""
        budget = self.capacity()
        if budget <= 0:
            return MAX_SLEEP  # a freed slot pokes
        dispatch = self.store.dispatch(budget)
        if dispatch.jobs:
            self._publish(dispatch, self.clock())
        if len(dispatch.jobs) >= budget:
            return MAX_SLEEP  # full: a freed slot pokes
        if dispatch.next_in is None:
            return MAX_SLEEP  # nothing waits: a wake-up pokes
        return min(MAX_SLEEP, dispatch.next_in)

    def _publish(self, dispatch: Dispatch, local_now: float) -> None:
        """One Celery message per job, with its ticket, to this node's consumer."""
        messages = []
        for job in dispatch.jobs:
            deadline = slot_deadline(job, dispatch, local_now)
            headers = run_headers(job, deadline, dispatch.now_us)
            if self.tracer is None or not job.body.trace:
                messages.append((job.member, self._message(job, headers)))
                continue
            with self.tracer.dispatching(job, self.queue) as trace_headers:
                messages.append((job.member, self._message(job, {**headers, **trace_headers})))
        self.handoff.put(messages)

    def _message(self, job: DispatchedJob, extra_headers: dict[str, Any]) -> Message:
        """The message Celery would publish for the job, as its consumer would receive it."""
        # ignore_result: the run writes its result with its ending (in one step); the message's
        # own flag would have Celery store it a second time.
        headers, properties, body, _ = self.app.amqp.create_task_message(
            job.task_id,
            job.task,
            (),
            job.body.kwargs,
            argsrepr="()",
            kwargsrepr=repr(job.body.kwargs),
            origin=job.body.origin or None,
            ignore_result=True,
        )
        content_type, encoding, data = serialization.dumps(body, self.serializer)
        return Message(
            channel=NO_BROKER,
            body=data.encode() if isinstance(data, str) else data,
            content_type=content_type,
            content_encoding=encoding,
            headers={**headers, **extra_headers},
            properties=properties,
            delivery_info={"exchange": "", "routing_key": self.queue},
        )

    def clear(self) -> None:
        """Before a step: a poke from here on wakes the wait after it."""
        self._wake.clear()

    def wait(self, timeout: float) -> None:
        if timeout > 0:
            self._wake.wait(timeout)


class _NoBroker:
    """The channel of a message that came from no broker: Celery's paths that acknowledge or
    reject a message (an unknown task, a decode error) find nothing to tell."""

    no_ack_consumers = None  # kombu's Message.ack reads it

    def basic_ack(self, *_: Any, **__: Any) -> None:
        pass

    def basic_reject(self, *_: Any, **__: Any) -> None:
        pass

    def basic_recover(self, *_: Any, **__: Any) -> None:
        pass


NO_BROKER = _NoBroker()


def run_headers(job: DispatchedJob, deadline: float, now_us: int) -> dict[str, Any]:
    """The headers a handed-out job's message carries besides Celery's: its history and its
    ticket (worker/contract/history.py). ``now_us``: Redis's clock at the dispatch."""
    ticket = Ticket(
        token=job.token,
        account=job.account,
        mark=job.mark,
        lost=job.lost,
        slot=job.slot,
        deadline=deadline,
        probe=job.probe,
        holder=job.holder,
        idle=0 < job.slot <= now_us,
    )
    return {**job.body.history, TICKET_HEADER: ticket.header()}


def slot_deadline(job: DispatchedJob, dispatch: Dispatch, local_now: float) -> float:
    """The job's slot on this host's monotonic clock (0: no limit), counted from ``local_now``,
    when Redis's answer arrived: Redis read its clock before it replied, so never early."""
    return local_now + (job.slot - dispatch.now_us) / MICROS if job.slot else 0.0


class WakeListener:
    """Relays the wake channel to a local event: a subscribed connection costs Redis nothing while
    no one publishes."""

    def __init__(self, client: redis.Redis, channel: str, on_wake: Callable[[], None]) -> None:
        self.client = client
        self.channel = channel
        self.on_wake = on_wake

    def run(self, stop: threading.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            pubsub: Any = None
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self.on_wake()  # anything published while we were not subscribed
                backoff = 0.1
                while not stop.is_set():
                    if pubsub.get_message(timeout=1.0) is not None:
                        self.on_wake()
            except redis.RedisError as error:
                logger.debug("wake listener: %s; resubscribing", type(error).__name__)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(redis.RedisError):
                        pubsub.close()
