"""The dispatch runtime of one worker node: threads in the Celery worker's main process.

- **router**: intake queue → job store (worker/dispatch/router.py), blocking on the intake while
  it is empty;
- **dispatcher**: job store → ready queue, for this node's free slots (worker/dispatch/
  dispatcher.py);
- **housekeeper**: renews the leases of the jobs this node runs and says the node is alive,
  looks at the accounts file for changes, and takes the janitor's turn (worker/dispatch/
  janitor.py).

Started by a consumer bootstep once the worker's consumer is up; stopped at shutdown. Each thread
survives Redis going away (it retries with a backoff) and never stops the worker.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery import bootsteps, signals
from celery.worker import state as worker_state
from celery.worker.request import Request

from worker.dispatch.dispatcher import Dispatcher
from worker.dispatch.janitor import Janitor
from worker.dispatch.registry import AccountsPublisher
from worker.dispatch.router import Router, intake_lists
from worker.services import Services, accounts_file, get_services
from worker.stores.client import connect, set_outage_grace
from worker.stores.keys import ready_queue

logger = logging.getLogger("chat_archiver.dispatch")

_runtime: NodeRuntime | None = None


def poke() -> None:
    """A worker slot of this node freed: its dispatcher looks for work at once."""
    runtime = _runtime
    if runtime is not None:
        runtime.dispatcher.poke()


class JobRequest(Request):
    """Celery's request, in the worker's main process, telling the dispatcher when a slot frees.
    Every ending of a run (success, failure, retry, ignored) acknowledges or rejects its message
    once the slot is free (Celery's own on_success is replaced per task, so it is not the hook)."""

    def acknowledge(self) -> None:
        try:
            super().acknowledge()
        finally:
            poke()

    def reject(self, requeue: bool = False) -> None:
        try:
            super().reject(requeue)
        finally:
            poke()


@signals.worker_shutting_down.connect
def _draining(**_: Any) -> None:
    """A warm shutdown began: hand out and take in nothing more. Jobs already handed out finish
    here; what waits stays in the job store and the intake for the other nodes."""
    runtime = _runtime
    if runtime is not None:
        runtime.drain()


def _running_ids() -> list[str]:
    """Ids of the jobs this node holds (received, running): their leases are renewed. The set is
    changed by the consumer's thread; a copy taken mid-change is simply taken again."""
    for _ in range(10):
        try:
            return [request.id for request in list(worker_state.reserved_requests)]
        except RuntimeError:
            continue
    return []


class NodeRuntime:
    def __init__(
        self,
        services: Services,
        hostname: str,
        capacity: Callable[[], int],
        on_refused: Callable[[str, Exception], None] | None = None,
    ) -> None:
        settings = services.settings
        self.services = services
        self.node = f"{hostname}#{uuid.uuid4().hex[:8]}"
        self.ready = ready_queue(settings.queue)
        # Raw bytes: the router checks messages exactly as they were published.
        self.raw_broker = connect(settings.broker_url, decode=False)
        self.router = Router(
            self.raw_broker,
            services.jobs,
            services.dead_letters,
            services.keys,
            intake=settings.queue,
            ready=self.ready,
            node=self.node,
            max_bytes=settings.max_message_bytes,
            on_refused=on_refused,
        )
        self.dispatcher = Dispatcher(
            services.jobs, services.broker, self.ready, capacity, shared=services.shared
        )
        self.publisher = AccountsPublisher(
            accounts_file(), services.jobs, services.keys, services.limiter
        )
        self.janitor = Janitor(services, self.router, self.node, accounts_file().get)
        self._stop = threading.Event()
        self._draining = threading.Event()  # set: routing and dispatching have stopped
        self._redis_trouble = -1e9  # when housekeeping last failed (monotonic)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.publisher.publish(accounts_file().get())
        self.services.jobs.renew([], self.node)
        self._migrate_legacy_queues()
        # Routing and dispatching stop as a warm shutdown begins; the housekeeper goes on renewing
        # the leases of the jobs still running until the worker exits.
        for name, target, until in (
            ("router", self._route, self._draining),
            ("dispatcher", self.dispatcher.run, self._draining),
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
        """Stop routing and dispatching; leases go on being renewed until the worker exits."""
        self._draining.set()
        self.dispatcher.poke()

    def stop(self) -> None:
        self._draining.set()
        self._stop.set()
        self.dispatcher.poke()
        for thread in self._threads:
            thread.join(3)

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
                routed = self.router.route()
                if routed.accepted:
                    self.dispatcher.poke()
                    self.dispatcher.ring()
                if not routed.taken:
                    self.router.wait(2)
                backoff = 0.1
            except Exception as error:  # Redis away: the batch waits in the routing list
                logger.warning("router: %s; retrying", type(error).__name__)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _housekeep(self, stop: threading.Event) -> None:
        settings = self.services.settings
        renew_every = settings.lease_timeout / 3
        due = {"renew": 0.0, "janitor": 0.0, "accounts": 0.0}
        while not stop.is_set():
            now = time.monotonic()
            try:
                if now >= due["renew"]:
                    self.services.jobs.renew(_running_ids(), self.node)
                    due["renew"] = now + renew_every
                if now >= due["accounts"]:
                    self.publisher.check()
                    due["accounts"] = now + settings.accounts_reload_interval
                if now >= due["janitor"]:
                    # Right after Redis was unreachable every lease may have run out while its
                    # run lived on: give the live nodes a renewal round before taking any back.
                    quiet = now - self._redis_trouble > renew_every * 1.5
                    turn = self.janitor.tick(requeue=quiet)
                    if turn is not None and turn.requeued:
                        self.dispatcher.ring()
                    due["janitor"] = now + settings.janitor_interval
            except Exception as error:
                self._redis_trouble = time.monotonic()
                logger.warning("housekeeping: %s; retrying", type(error).__name__)
                for name in due:
                    due[name] = min(due[name], now + 1.0)
            stop.wait(0.25)

    def _migrate_legacy_queues(self) -> None:
        """Version 0.1 kept one queue per account ({queue}.{provider}.{id}); their jobs go to
        the intake, so an upgrade loses none."""
        intake = self.services.settings.queue
        skip = set(intake_lists(self.ready))
        moved = 0
        for key in self.raw_broker.scan_iter(f"{intake}.*", _type="list"):
            name = key.decode("utf-8", errors="replace")
            if name in skip:
                continue
            while self.raw_broker.lmove(key, intake, "RIGHT", "LEFT") is not None:
                moved += 1
        if moved:
            logger.warning("moved %d jobs from per-account queues of an older version", moved)


class DispatchStep(bootsteps.StartStopStep):
    """Starts the node's dispatch runtime with the worker's consumer (once: a consumer restarted
    after a lost broker connection keeps it), stops it at shutdown."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, consumer: Any) -> None:
        global _runtime
        if _runtime is not None:
            return
        services = get_services()
        set_outage_grace(services.settings.redis_outage_grace)

        def capacity() -> int:
            # The slots the consumer may fill (its prefetch), less the jobs it holds.
            qos = getattr(consumer, "qos", None)
            limit = int(qos.value) if qos is not None else 0
            return limit - len(worker_state.reserved_requests)

        def on_refused(task_id: str, error: Exception) -> None:
            consumer.app.backend.mark_as_failure(task_id, error, call_errbacks=False)

        _runtime = NodeRuntime(services, consumer.hostname, capacity, on_refused)
        _runtime.start()

    def stop(self, consumer: Any) -> None:
        """A consumer restart (a lost broker connection): the runtime keeps running."""

    def shutdown(self, consumer: Any) -> None:
        global _runtime
        if _runtime is not None:
            _runtime.stop()
            _runtime = None
