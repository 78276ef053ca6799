"""The janitor: what no single run can do for itself, done by one node at a time, every few seconds.

- Jobs whose lease ran out (their node was killed, or their message was lost between the queue
  and a worker) go back to the front of their wait list: they run again within
  ARCHIVER_LEASE_TIMEOUT + ARCHIVER_JANITOR_INTERVAL of their last sign of life.
- A dead node's routing list (messages it took from the intake and had not stored yet) goes back
  to the intake.
- Jobs that have waited longer than ARCHIVER_UNKNOWN_ACCOUNT_GRACE for an account no worker knows
  go to the dead letters (``unknown_account``), to be replayed once the account is configured.
- Every paused account has a probe chain looking after it (a lost one is replaced).

Each turn takes a short Redis lock, so with many nodes the work is done once per interval.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from config import AccountRegistry
from worker.contract.outcomes import Reason
from worker.dispatch.probes import ensure_chain
from worker.dispatch.router import Router
from worker.services import Services
from worker.stores.endings import Endings
from worker.stores.writes import Writes

logger = logging.getLogger("chat_archiver.janitor")

# Unknown-account jobs dead-lettered per turn: bounds the time one turn takes.
EXPIRE_PER_TURN = 500


@dataclass
class Turn:
    requeued: list[str] = field(default_factory=list)
    nodes_recovered: dict[str, int] = field(default_factory=dict)  # node -> messages given back
    unknown_dead_lettered: int = 0
    chains_started: int = 0


class Janitor:
    def __init__(
        self,
        services: Services,
        router: Router,
        node: str,
        accounts: Callable[[], AccountRegistry],
        endings: Endings | None = None,
    ) -> None:
        self.services = services
        self.store = services.jobs
        self.router = router
        self.node = node
        self.accounts = accounts
        self.endings = endings or Endings(services)
        settings = services.settings
        self.interval = settings.janitor_interval
        # A node that has not renewed for two leases is gone (renewals come every third of one).
        self.node_timeout = 2 * settings.lease_timeout

    def tick(self, requeue: bool = True) -> Turn | None:
        """One turn, if no other node has taken this interval's; None if it was taken.
        ``requeue`` False: leave expired leases for a later turn (Redis was just away)."""
        lock_ms = max(100, int(self.interval * 1000 * 0.9))
        if not self.services.redis.set(self.services.keys.janitor, self.node, nx=True, px=lock_ms):
            return None
        turn = Turn()
        turn.requeued = self.store.requeue_expired() if requeue else []
        if turn.requeued:
            logger.warning(
                "gave back %d jobs whose lease ran out (their worker died?): %s",
                len(turn.requeued),
                ", ".join(turn.requeued[:5]) + (" ..." if len(turn.requeued) > 5 else ""),
            )
        for node in self.store.dead_nodes(self.node_timeout):
            if node == self.node:
                continue
            moved = self.router.give_back(self.services.keys.routing(node))
            self.store.forget_node(node)
            turn.nodes_recovered[node] = moved
            logger.warning(
                "node %s stopped: %d messages it held went back to the intake", node, moved
            )
        turn.unknown_dead_lettered = self._expire_unknown()
        turn.chains_started = self._look_after_paused()
        return turn

    def _expire_unknown(self) -> int:
        grace = self.services.settings.unknown_account_grace
        count = 0
        for account in self.store.unknown_accounts(older_than=grace):
            detail = (
                f"no worker's accounts file has named {account} for "
                f"{grace:g}s (replay once it is configured)"
            )
            wait_key = self.services.keys.wait(account)
            while count < EXPIRE_PER_TURN:
                ids = self.store.wait_head(account, 100)
                if not ids:
                    self.store.forget_unknown(account)
                    break
                for task_id in ids:
                    out = Writes().lrem(wait_key, 1, task_id)
                    entry = self.endings.dead_letter_stored(
                        task_id, Reason.UNKNOWN_ACCOUNT, detail, out
                    )
                    if entry is None:
                        self.services.redis.lrem(wait_key, 1, task_id)  # a leftover id
                    else:
                        count += 1
        if count:
            logger.warning("dead-lettered %d jobs for accounts no worker knows", count)
        return count

    def _look_after_paused(self) -> int:
        started = 0
        registry = self.accounts()
        circuit = self.services.circuit
        for key in circuit.paused_accounts():
            provider, _, account_id = key.partition(":")
            account = registry.find(provider, account_id)
            if account is None:
                continue
            if ensure_chain(circuit, account):
                started += 1
                logger.info("%s is paused and had no probe chain: started one", key)
        return started
