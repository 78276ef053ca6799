"""An account's pauses: what runs do around its circuit breaker (worker/stores/circuit.py).

A run whose provider answers an account problem trips the circuit and parks its job; a probe run
that gets any other answer closes the circuit, which releases every parked job.
"""

from __future__ import annotations

import logging

from config import Account
from worker.contract.outcomes import Reason
from worker.services import Services

logger = logging.getLogger("chat_archiver.jobs")


class AccountPauses:
    def __init__(self, services: Services) -> None:
        self.circuit = services.circuit

    def trip(self, account: Account, reason: str, detail: str, probing: bool) -> None:
        """Open the account's circuit (or keep it open after a failed probe, the cooldown
        doubled)."""
        probe_in = self.circuit.trip(account, reason, detail, probing)
        logger.warning(
            "%s paused (%s): %s; next probe in %.0fs", account.key, reason, detail, probe_in
        )

    def describe(self, account: Account) -> tuple[str, str]:
        """(reason, why) of the account's pause, for a parked job's state."""
        state = self.circuit.state(account)
        reason = state.reason or str(Reason.ACCOUNT_UNAVAILABLE)
        return reason, f"{account.key} paused ({reason}): {state.detail or 'waiting for a probe'}"

    def resume_or_leave_it(self, account: Account) -> None:
        """The probe got an answer: close the circuit and release the parked jobs. Should that
        fail, the run still has its answer; the account's next probe tries again."""
        try:
            released = self.circuit.resume(account)
        except Exception:
            logger.exception("could not release the parked jobs of %s", account.key)
            return
        logger.info(
            "%s answers again: circuit closed, %d parked jobs released", account.key, released
        )
