"""The janitor: what no single run can do for itself, done by one node at a time, every few seconds.

Each node's housekeeping step (lua/tick.lua) tries to take the janitor's turn; the node that gets
it has, in that same step, given back the jobs whose lease ran out (their node was killed, or
their message was lost on its way to a worker: they run again within ARCHIVER_LEASE_TIMEOUT +
ARCHIVER_JANITOR_INTERVAL of their last sign of life), and then, here:

- gives a dead node's routing list (messages it took from the intake and had not stored) back to
  the intake, and deletes its ready queue (what its dispatcher handed out comes back through
  the leases);
- dead-letters the jobs that waited longer than ARCHIVER_UNKNOWN_ACCOUNT_GRACE for an account no
  worker knows (``unknown_account``), to be replayed once the account is configured;
- dead-letters jobs parked behind a paused account longer than ARCHIVER_CIRCUIT_MAX_PAUSE, with
  the account's reason.
"""

from __future__ import annotations

import logging

from worker.contract.outcomes import Reason
from worker.dispatch.router import Router
from worker.services import Services
from worker.stores.endings import Endings
from worker.stores.jobs import Tick
from worker.stores.keys import ready_queue

logger = logging.getLogger("chat_archiver.janitor")

# Jobs dead-lettered per turn: bounds the time one turn takes.
EXPIRE_PER_TURN = 500


class Janitor:
    def __init__(self, services: Services, router: Router, node: str, endings: Endings) -> None:
        self.services = services
        self.store = services.jobs
        self.router = router
        self.node = node
        self.endings = endings

    def after(self, tick: Tick) -> None:
        """The rest of a janitor's turn, after the tick that gave it to this node."""
        if tick.requeued:
            logger.warning(
                "gave back %d jobs whose lease ran out (their worker died?): %s",
                len(tick.requeued),
                ", ".join(tick.requeued[:5]) + (" ..." if len(tick.requeued) > 5 else ""),
            )
        for node in tick.dead_nodes:
            if node == self.node:
                continue
            moved = self.router.give_back(self.services.keys.routing(node))
            self.services.broker.delete(ready_queue(self.services.settings.queue, node))
            self.store.forget_node(node)
            logger.warning(
                "node %s stopped: %d messages it held went back to the intake", node, moved
            )
        budget = EXPIRE_PER_TURN
        for account in tick.unknown:
            budget -= self._expire_unknown(account, budget)
        unknown = EXPIRE_PER_TURN - budget
        for account in tick.paused:
            budget -= self._expire_parked(account, budget)
        if unknown:
            logger.warning("dead-lettered %d jobs for accounts no worker knows", unknown)

    def _expire_unknown(self, account: str, budget: int) -> int:
        grace = self.services.settings.unknown_account_grace
        detail = (
            f"no worker's accounts file has named {account} for "
            f"{grace:g}s (replay once it is configured)"
        )
        wait_key = self.services.keys.wait(account)
        count = 0
        while count < budget:
            ids = self.store.wait_head(account, 100)
            if not ids:
                self.store.forget_unknown(account)
                break
            for task_id in ids:
                if self.endings.dead_letter_stored(
                    task_id, Reason.UNKNOWN_ACCOUNT, detail, wait_key
                ):
                    count += 1
                else:
                    self.services.redis.lrem(wait_key, 1, task_id)  # a leftover id
        return count

    def _expire_parked(self, account: str, budget: int) -> int:
        """Dead-letter the jobs parked longer than the maximum pause (they are at the head), with
        the account's reason, so they can be replayed once the account is fixed."""
        circuit = self.services.circuit
        max_pause = circuit.max_pause
        now = circuit.clock.now(self.services.redis)
        reason_text, account_detail = self._pause_of(account)
        try:
            reason = Reason(reason_text or "")
        except ValueError:
            reason = Reason.ACCOUNT_UNAVAILABLE
        detail = f"{account} paused longer than {max_pause:g}s: {account_detail or reason}"
        parked_key = self.services.keys.parked(account)
        count = 0
        while count < budget:
            head = self.store.parked_head(account, 100)
            expired = [
                task_id for task_id, since in head if since is not None and now - since >= max_pause
            ]
            for task_id in expired:
                if self.endings.dead_letter_stored(task_id, reason, detail, parked_key):
                    count += 1
                else:
                    self.services.redis.lrem(parked_key, 1, task_id)  # a leftover id
            if len(expired) < len(head) or not head:
                break
        return count

    def _pause_of(self, account: str) -> tuple[str | None, str | None]:
        data = self.services.redis.hmget(self.services.keys.circuit(account), "reason", "detail")
        return (
            str(data[0]) if data[0] is not None else None,
            str(data[1]) if data[1] is not None else None,
        )
