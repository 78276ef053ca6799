"""The dispatch runtime of one worker node: threads in the Celery worker's main process.

- **router**: intake queue -> job store (worker/dispatch/router.py), blocking on the intake while
  it is empty;
- **dispatcher**: job store -> this node's Celery consumer (in memory), for its free slots
  (worker/dispatch/dispatcher.py), woken by the **wake listener** when work arrives anywhere;
- **housekeeper**: one step every few seconds (lua/tick.lua) renews the leases of the runs this
  node holds, says the node is alive, and takes the janitor's turn when it is free
  (worker/dispatch/janitor.py); it also looks at the accounts file for changes.

Started by a consumer bootstep once the worker's consumer is up; stopped at shutdown. Each thread
survives Redis going away or refusing writes (it retries with a backoff, and the node logs one
line when Redis stops accepting work and one when it does again) and never stops the worker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, bootsteps, signals
from celery.worker import state as worker_state
from celery.worker.request import Request
from kombu import Queue

from worker import tracing
from worker.contract.history import Ticket
from worker.dispatch.dispatcher import Dispatcher, WakeListener
from worker.dispatch.handoff import Handoff
from worker.dispatch.janitor import Janitor
from worker.dispatch.registry import AccountsPublisher
from worker.dispatch.router import Router
from worker.services import Services, accounts_file, get_services
from worker.stores.client import SOCKET_TIMEOUT, connect, set_outage_grace
from worker.stores.endings import Endings
from worker.stores.jobs import lease_member
from worker.stores.keys import ready_queue

logger = logging.getLogger("chat_archiver.dispatch")

_runtime: NodeRuntime | None = None
_node: str | None = None

# How long the router blocks on an empty intake per call (an idle node's cost), well inside the
# client's socket timeout so that an empty intake answers as Redis's nil, not a timeout.
INTAKE_BLOCK = SOCKET_TIMEOUT - 3


def node_name(hostname: str) -> str:
    """This worker process's node name, made once: its ready queue, routing list and heartbeat
    are named after it (a restarted node is a new one; the janitor cleans up after the old)."""
    global _node
    if _node is None or not _node.startswith(f"{hostname}#"):
        _node = f"{hostname}#{os.getpid()}-{uuid.uuid4().hex[:6]}"
    return _node


def ready(queue: str, node: str) -> Queue:
    """A node's ready queue as its consumer reads it: no kombu acknowledgement (the job store's
    lease brings back a job whose run is lost, so kombu's unacked copy would be a second way to
    the same end), and nothing to declare (a Redis list needs none)."""
    return Queue(ready_queue(queue, node), no_ack=True, no_declare=True)


def poke() -> None:
    """A worker slot of this node freed: its dispatcher looks for work at once."""
    runtime = _runtime
    if runtime is not None:
        runtime.dispatcher.poke()


class JobRequest(Request):
    """Celery's request, in the worker's main process. Its message came from the node's
    dispatcher (or from its ready queue, read without acknowledgements), so acknowledging or
    rejecting it sends nothing to Redis: it tells the dispatcher that a slot freed. It knows its
    run's lease member, which the node renews."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ticket = Ticket.from_headers(self.request_dict)
        self.archiver_member = lease_member(self.id, ticket.token) if ticket else ""

    def acknowledge(self) -> None:
        if not self.acknowledged:
            self.acknowledged: bool = True
            poke()

    def reject(self, requeue: bool = False) -> None:
        self.acknowledge()

    def send_event(self, type: str, **fields: Any) -> None:
        # Flower keeps a task's fields from its earlier events: a job that waited (RETRY,
        # Deferred(why)) and then succeeded would show SUCCESS beside the old reason.
        if type == "task-succeeded":
            fields = {"exception": None, "traceback": None, **fields}
        super().send_event(type, **fields)


@signals.worker_shutting_down.connect
def _draining(**_: Any) -> None:
    """A warm shutdown began: hand out and take in nothing more. Jobs already handed out finish
    here; what waits stays in the job store and the intake for the other nodes."""
    runtime = _runtime
    if runtime is not None:
        runtime.drain()


def _held_requests() -> set[Request]:
    """The requests this node holds: received and waiting for a slot, or running. Celery
    forgets the requests it received (``reserved_requests``) when its broker connection drops,
    those already running included; the running ones stay in ``active_requests`` until they
    end. The sets are changed by the consumer's thread; a copy taken mid-change is simply taken
    again."""
    for _ in range(10):
        try:
            return {*worker_state.reserved_requests, *worker_state.active_requests}
        except RuntimeError:
            continue
    return set()


class WriteHealth:
    """Whether Redis accepts our writes, said once when it stops and once when it starts again
    (and once a minute while it lasts), instead of a line per failed step of every thread. Any
    thread's failure says it stopped; only the housekeeper's step, which always writes (the
    node's heartbeat), says it works again: a router or dispatcher step with nothing to do
    writes nothing, and succeeds while Redis refuses writes."""

    REMIND = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None
        self._said = 0.0

    def failed(self, error: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            if self._since is None:
                self._since = now
            elif now - self._said < self.REMIND:
                return
            self._said = now
        logger.warning(
            "Redis refuses work (%s): taking no new jobs, retrying; running jobs record their "
            "outcome once it answers",
            describe(error),
        )

    def ok(self) -> None:
        with self._lock:
            if self._since is None:
                return
            lasted = time.monotonic() - self._since
            self._since = None
        logger.warning("Redis accepts work again after %.0fs: resuming", lasted)


def describe(error: Exception) -> str:
    """One line of a Redis error, never its arguments (a URL may hold a password)."""
    text = str(error).split("\n")[0]
    if isinstance(error, redis.ResponseError) and text:
        return f"{type(error).__name__}: {text[:120]}"
    return type(error).__name__


class NodeRuntime:
    def __init__(
        self,
        services: Services,
        app: Celery,
        node: str,
        capacity: Callable[[], int],
        on_refused: Callable[[str, Exception], None] | None = None,
    ) -> None:
        settings = services.settings
        self.services = services
        self.node = node
        tracer = tracing.active(settings)  # None while tracing is off
        self.router = Router(
            # Raw bytes: the router checks messages exactly as they were published.
            connect(settings.broker_url, decode=False),
            services.jobs,
            services.dead_letters,
            services.keys,
            intake=settings.queue,
            node=node,
            shared=services.shared,
            max_bytes=settings.max_message_bytes,
            on_refused=on_refused,
            tracer=tracer,
        )
        self.handoff = Handoff(ready_queue(settings.queue, node))
        self.dispatcher = Dispatcher(services.jobs, app, self.handoff, capacity, tracer=tracer)
        self.wake = WakeListener(services.redis, services.keys.wake, self.dispatcher.poke)
        self.publisher = AccountsPublisher(
            accounts_file(), services.jobs, services.keys, services.limiter
        )
        self.janitor = Janitor(services, self.router, node, Endings(services, app.backend))
        self.health = WriteHealth()
        self._stop = threading.Event()
        self._draining = threading.Event()  # set: routing and dispatching have stopped
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        try:
            self.publisher.publish(accounts_file().get())
        except redis.RedisError as error:
            # The housekeeper publishes them once Redis takes writes again.
            self.health.failed(error)
        # Routing and dispatching stop as a warm shutdown begins; the housekeeper goes on renewing
        # the leases of the jobs still running until the worker exits.
        for name, target, until in (
            ("router", self._route, self._draining),
            ("dispatcher", self._dispatch, self._draining),
            ("wake", self.wake.run, self._draining),
            ("housekeeper", self._housekeep, self._stop),
        ):
            thread = threading.Thread(
                target=self._supervised,
                args=(name, target, until),
                name=f"archiver-{name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        logger.info("dispatch runtime started on %s", self.node)

    def drain(self) -> None:
        """Stop routing and dispatching; leases go on being renewed until the worker exits,
        except those of the jobs that were still waiting for the consumer."""
        self._draining.set()
        self.handoff.clear()
        self.dispatcher.poke()

    def stop(self) -> None:
        self._draining.set()
        self._stop.set()
        self.dispatcher.poke()
        for thread in self._threads:
            # The router blocks in BLMOVE for up to INTAKE_BLOCK seconds and nothing can wake it;
            # a message it moves after this point waits in this node's routing list, which the
            # janitor hands back to the intake, as after a kill. The others end at once.
            thread.join(0.2 if thread.name == "archiver-router" else 3)

    def _supervised(
        self, name: str, target: Callable[[threading.Event], None], until: threading.Event
    ) -> None:
        """Run a loop until ``until`` is set; should it ever raise (a bug), log it and start it
        again."""
        while not until.is_set():
            try:
                target(until)
            except Exception:
                logger.exception("the %s thread failed; restarting it", name)
                until.wait(1.0)

    def _route(self, stop: threading.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                if not self.router.route():
                    self.router.wait(INTAKE_BLOCK)
                backoff = 0.1
            except redis.RedisError as error:  # the batch waits in the routing list
                self.health.failed(error)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _dispatch(self, stop: threading.Event) -> None:
        backoff = 0.1
        dispatcher = self.dispatcher
        while not stop.is_set():
            dispatcher.clear()
            try:
                wait = dispatcher.step()
                backoff = 0.1
            except redis.RedisError as error:
                self.health.failed(error)
                wait = backoff
                backoff = min(backoff * 2, 5.0)
            if not stop.is_set():
                dispatcher.wait(wait)

    def _members(self) -> list[str]:
        """The lease members this node renews: the runs it holds (until each ends), and the jobs
        handed out that wait for its consumer."""
        held = [m for request in _held_requests() if (m := getattr(request, "archiver_member", ""))]
        return held + self.handoff.members()

    def _housekeep(self, stop: threading.Event) -> None:
        settings = self.services.settings
        every = min(settings.janitor_interval, settings.lease_timeout / 3)
        next_accounts = 0.0
        while not stop.is_set():
            started = time.monotonic()
            try:
                tick = self.services.jobs.tick(
                    self.node,
                    self._members(),
                    janitor_ms=max(100, int(every * 1000 * 0.9)),
                    node_timeout=2 * settings.lease_timeout,
                    unknown_grace=settings.unknown_account_grace,
                    # A live node renewed at most `every` before the fleet fell silent; one
                    # more `every` of slack for a tick that ran late.
                    silence=settings.lease_timeout - 2 * every,
                )
                if tick.held_after:
                    logger.warning(
                        "no node was heard for %.1fs (Redis away or refusing writes): no lease "
                        "is taken back for %.0fs, while the live nodes renew theirs",
                        tick.held_after,
                        settings.lease_timeout,
                    )
                if tick.janitor:
                    self.janitor.after(tick)
                if started >= next_accounts:
                    self.publisher.check()
                    next_accounts = started + settings.accounts_reload_interval
                self.health.ok()
            except redis.RedisError as error:
                self.health.failed(error)
                stop.wait(1.0)
                continue
            except Exception:
                logger.exception("housekeeping failed; retrying")
            stop.wait(max(0.0, every - (time.monotonic() - started)))


def _new_runtime(consumer: Any) -> NodeRuntime:
    """The node's dispatch runtime, not started yet."""
    services = get_services()
    set_outage_grace(services.settings.redis_outage_grace)

    def capacity() -> int:
        # The slots the consumer may fill (its prefetch), less the jobs it holds and those
        # handed out to it that wait in the handoff; none while it is away.
        runtime = _runtime
        qos = getattr(consumer, "qos", None)
        if runtime is None or qos is None or not runtime.handoff.attached:
            return 0
        return int(qos.value) - len(_held_requests()) - len(runtime.handoff)

    def on_refused(task_id: str, error: Exception) -> None:
        consumer.app.backend.mark_as_failure(task_id, error, call_errbacks=False)

    node = node_name(consumer.hostname)
    return NodeRuntime(services, consumer.app, node, capacity, on_refused)


class DispatchStep(bootsteps.StartStopStep):
    """Starts the node's dispatch runtime with the worker's consumer (once: a consumer restarted
    after a lost broker connection keeps it), stops it at shutdown."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, consumer: Any) -> None:
        global _runtime
        if consumer.hub is None:
            # eventlet or gevent: no event loop of Celery's to hand jobs to.
            raise SystemExit("chat-archiver: a worker node needs the prefork, threads or solo pool")
        first = _runtime is None
        if _runtime is None:
            _runtime = _new_runtime(consumer)
        # The first start, or a new broker connection: what was handed out meanwhile waited, and
        # the dispatcher, which takes nothing while the consumer is away, looks again at once.
        _runtime.handoff.attach(consumer.hub, consumer.create_task_handler())
        if first:
            _runtime.start()
        else:
            _runtime.dispatcher.poke()

    def stop(self, consumer: Any) -> None:
        """A consumer restart (a lost broker connection): the runtime keeps running, and what it
        hands out waits for the consumer's return."""
        if _runtime is not None:
            _runtime.handoff.detach()

    def shutdown(self, consumer: Any) -> None:
        global _runtime
        if _runtime is not None:
            _runtime.stop()
            _runtime = None
