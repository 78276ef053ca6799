"""The dispatcher: hands a node's free worker slots the jobs that may run now.

One per worker node, in a thread of the main process. It asks the job store for as many due jobs
as the node has free slots (less what already waits in the ready queue), and pushes them onto
the ready queue, the only queue Celery's consumer reads: a worker never holds a job it cannot
run now, and never sleeps more than the dispatch lead for a permit.

When it waits:
- its slots are full: for one of them to free (the task's Request pokes it: worker/dispatch/
  service.py), or a second at most;
- it has room but nothing is due: on the doorbell (a Redis list) until the next job is due, or
  until a router or another node rings because work arrived that it cannot take itself.
So an idle node costs Redis one blocking call a second, whatever the number of accounts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import redis

from worker.stores.jobs import JobStore

logger = logging.getLogger("chat_archiver.dispatch")

# The longest a dispatcher sleeps without looking: it bounds how late a missed wake-up can make
# a job, and costs one Redis call a second on an idle node.
MAX_SLEEP = 1.0
# Shorter waits are not worth a blocking call (and BLPOP's 0 would block forever).
MIN_BLOCK = 0.002
# Redis times out a blocked BLPOP from its server cron, which runs hz times a second (10 by
# default): a BLPOP may return up to 100 ms after its timeout. Waiting on it for the next due
# job made every dispatch of a busy account late by up to that much (an account at 10/s ran at
# 74-82% of its limit). So the doorbell is only waited on until PRECISE before the next job is
# due; the rest is waited on this process's own timer, which is punctual to a millisecond.
PRECISE = 0.2


class WaitOn(Enum):
    NOTHING = "nothing"  # go again at once
    SLOT = "slot"  # a local event: a worker slot freed
    DOORBELL = "doorbell"  # the Redis doorbell: work arrived somewhere


@dataclass(frozen=True)
class Wait:
    on: WaitOn
    timeout: float = 0.0


class Dispatcher:
    def __init__(
        self,
        store: JobStore,
        broker: redis.Redis,
        ready: str,
        capacity: Callable[[], int],
        *,
        shared: bool,
    ) -> None:
        """``capacity``: the node's free worker slots. ``shared``: the broker is the state Redis,
        so one script reserves and pushes in the same step."""
        self.store = store
        self.broker = broker
        self.ready = ready
        self.capacity = capacity
        self.shared = shared
        self.doorbell = store.keys.doorbell
        self.dispatched = 0
        self._idle_rounds = 0
        self._slot_freed = threading.Event()

    def poke(self) -> None:
        """A worker slot of this node freed (or work arrived here): look again now."""
        self._slot_freed.set()

    def ring(self) -> None:
        """Wake one idle dispatcher on any node (one element wakes one BLPOP)."""
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.lpush(self.doorbell, 1)
        pipe.ltrim(self.doorbell, 0, 0)
        pipe.execute()

    def step(self) -> Wait:
        """Dispatch once; say how to wait before the next step."""
        budget = self.capacity()
        if budget <= 0:
            return Wait(WaitOn.SLOT, MAX_SLEEP)
        if self.shared:
            result = self.store.dispatch(budget, ready=self.ready)
        else:
            result = self.store.dispatch(budget - int(self.broker.llen(self.ready)))
            if result.messages:
                # LPUSH in order: the first dispatched is the first a consumer's BRPOP takes.
                self.broker.lpush(self.ready, *result.messages)
        self.dispatched += result.count
        full = result.count >= budget
        if result.next_in == 0:  # more is due now
            if full:
                self.ring()  # another node may have room for it
                return Wait(WaitOn.SLOT, MAX_SLEEP)
            if result.count:
                self._idle_rounds = 0
                return Wait(WaitOn.NOTHING)
            # The ready queue still holds jobs no consumer has taken yet: give them a moment,
            # longer each time it stays so (a consumer that stopped must not make us spin).
            self._idle_rounds += 1
            return Wait(WaitOn.SLOT, min(0.2, 0.01 * 2 ** min(self._idle_rounds, 5)))
        self._idle_rounds = 0
        if full:
            timeout = MAX_SLEEP if result.next_in is None else min(MAX_SLEEP, result.next_in)
            return Wait(WaitOn.SLOT, timeout)
        if result.next_in is None:
            return Wait(WaitOn.DOORBELL, MAX_SLEEP)
        if result.next_in <= PRECISE:
            # Punctual. Work this node routes pokes it; a ring from another node (work routed
            # there) waits at most PRECISE, and the next step finds it.
            return Wait(WaitOn.SLOT, result.next_in)
        return Wait(WaitOn.DOORBELL, min(MAX_SLEEP, result.next_in - PRECISE))

    def wait(self, wait: Wait) -> None:
        if wait.on is WaitOn.SLOT:
            self._slot_freed.wait(wait.timeout)
        elif wait.on is WaitOn.DOORBELL and wait.timeout >= MIN_BLOCK:
            self.store.redis.blpop([self.doorbell], timeout=wait.timeout)

    def run(self, stop: threading.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            self._slot_freed.clear()  # a poke from here on wakes the wait below
            try:
                wait = self.step()
                self.wait(wait)
                backoff = 0.1
            except redis.RedisError as error:
                logger.warning("dispatcher: Redis unavailable (%s); retrying", type(error).__name__)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                logger.exception("dispatcher step failed; retrying")
                stop.wait(1.0)
