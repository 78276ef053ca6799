"""An account's pauses: what runs and probes do around its circuit breaker
(worker/stores/circuit.py).

A run whose provider answers an account problem trips the circuit and parks its job; a run that
meets an open circuit parks its job; a probe that gets an answer closes the circuit and releases
every parked job; the probe chain (tasks/probe.py) releases one parked job per turn as the probe
and dead-letters jobs parked longer than the maximum pause. Shared by runs and probes, so neither
borrows the other.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from config import Account
from worker.contract.outcomes import Reason
from worker.dispatch.probes import ensure_chain, send_probe
from worker.services import Services
from worker.stores.circuit import CircuitState
from worker.stores.endings import Endings
from worker.stores.writes import Writes

logger = logging.getLogger("chat_archiver.jobs")


class AccountPauses:
    def __init__(
        self,
        services: Services,
        endings: Endings,
        probe_sender: Callable[[Account, str, float], None] = send_probe,
    ) -> None:
        self.services = services
        self.circuit = services.circuit
        self.store = services.jobs
        self.endings = endings
        self.send_probe = probe_sender

    def trip(self, account: Account, reason: str, detail: str, probing: bool) -> None:
        """Open the account's circuit (or keep it open after a failed probe, the cooldown
        doubled), and start its probe chain if it was closed."""
        chain = uuid.uuid4().hex
        probe_in = self.circuit.trip(account, reason, detail, probing, chain)
        if probe_in is not None:
            self.send_probe(account, chain, probe_in)

    def after_parking(self, account: Account) -> None:
        """A job was just parked. If the circuit closed meanwhile nobody would release it:
        resume now; otherwise make sure a probe chain runs."""
        if not self.circuit.is_open(account):
            self.resume_or_leave_it_to_the_probe(account)
        else:
            ensure_chain(self.circuit, account, self.send_probe)

    def describe(self, account: Account) -> tuple[str, str]:
        """(reason, why) of the account's pause, for a parked job's state."""
        state = self.circuit.state(account)
        reason = state.reason or str(Reason.ACCOUNT_UNAVAILABLE)
        return reason, f"{account.key} paused ({reason}): {state.detail or 'waiting for a probe'}"

    def resume_or_leave_it_to_the_probe(self, account: Account) -> None:
        try:
            self.resume(account)
        except Exception:
            # The run itself has its answer; failing it now would dead-letter a job that worked.
            # The probe chain's next turn finds the circuit closed and releases what is left.
            logger.exception("could not release the parked jobs of %s", account.key)

    def resume(self, account: Account) -> int:
        """Close the account's circuit and put every parked job back in its wait list; a later
        pause starts their clocks afresh."""
        self.circuit.close(account)
        released = self.store.release_parked(account.key, 0, afresh=True)
        logger.info(
            "%s answers again: circuit closed, %d parked jobs released", account.key, len(released)
        )
        return len(released)

    def release_probe(self, account: Account) -> str | None:
        """The oldest parked job goes to the front of the wait list: it is the probe. It keeps
        its parked time, so its maximum pause runs on if it is parked again."""
        released = self.store.release_parked(account.key, 1, afresh=False)
        return released[0] if released else None

    def dead_letter_expired(
        self, account: Account, state: CircuitState, now: float | None = None
    ) -> list[str]:
        """Dead-letter the jobs parked longer than the maximum pause (they are at the head), with
        the account's reason, so they can be replayed once the account is fixed."""
        now = self.circuit.clock.now(self.services.redis) if now is None else now
        settings = self.services.settings
        reason = Reason(state.reason or Reason.ACCOUNT_UNAVAILABLE)
        detail = (
            f"{account.key} paused longer than {settings.circuit_max_pause:g}s: "
            f"{state.detail or reason}"
        )
        parked_key = self.services.keys.parked(account.key)
        ended: list[str] = []
        while True:
            head = self.store.parked_head(account.key, 100)
            expired = [
                task_id
                for task_id, since in head
                if since is not None and now - since >= settings.circuit_max_pause
            ]
            for task_id in expired:
                # Out of the parked list in the same step as the dead letter.
                out = Writes().lrem(parked_key, 1, task_id)
                if self.endings.dead_letter_stored(task_id, reason, detail, out) is None:
                    self.services.redis.lrem(parked_key, 1, task_id)  # a leftover id
                ended.append(task_id)
            if len(expired) < len(head) or not head:
                return ended
