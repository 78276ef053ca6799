"""Task ``archive.probe``: look after an account whose circuit is open until it answers again.

A chain of tasks, each sending the next (worker/stores/circuit.py keeps the chain's token, so a lost
chain is replaced by the next job that parks and two chains never run side by side). Each turn:

- the circuit has closed: release whatever is still parked (a probe job that closed it could not
  release everything), and stop;
- nothing is parked: stop (a job that parks later starts a new chain);
- otherwise dead-letter the jobs parked longer than the maximum pause (with the account's
  reason, so they can be replayed once the account is fixed); if a probe is due and none is
  running, release the oldest parked job to the front of the account's wait list: that job is
  the probe. If the provider answers it with anything but an account problem, its run closes the
  circuit and releases every parked job (tasks/archive/pauses.py); if it answers the account
  problem again, the cooldown doubles. Then come back when the next probe is due, or after a
  cooldown if one is due now (the probe job has answered by then, or got lost and another is
  released). Each turn's task waits in the job store until its time.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from config import Account
from tasks.archive.pauses import AccountPauses
from tasks.archive.task import JobTask
from tasks.leased import run_leased
from worker import app
from worker.contract.tasks import PROBE_TASK
from worker.services import get_accounts, get_services
from worker.stores.circuit import ChainTurn
from worker.stores.endings import Endings


@app.task(name=PROBE_TASK, bind=True, base=JobTask)
def archive_probe(self: Task, provider: str, account: str, chain: str | None = None) -> Any:
    kwargs = {"provider": provider, "account": account, "chain": chain}
    return run_leased(
        self,
        kwargs,
        lambda: look_after(
            AccountPauses(get_services(), Endings(get_services())),
            get_accounts().get(provider, account),
            chain or self.request.id,  # a probe sent by hand starts its own chain
        ),
    )


def look_after(pauses: AccountPauses, target: Account, chain: str) -> dict[str, Any]:
    """One turn of the chain ``chain`` for the account ``target``."""
    services, circuit = pauses.services, pauses.circuit
    state = circuit.state(target)
    if state.state == "closed":
        released = pauses.resume(target) if state.parked else 0
        return {"account": target.key, "circuit": "closed", "released": released}

    next_turn = state.probe_in or services.settings.circuit_cooldown
    turn = circuit.chain_turn(target, chain, next_turn)
    if turn is not ChainTurn.CONTINUE:
        return {"account": target.key, "circuit": "open", "chain": str(turn)}
    dead_lettered = pauses.dead_letter_expired(target, state)
    probe = None
    if not state.probe_in and not state.probing:
        probe = pauses.release_probe(target)
    pauses.send_probe(target, chain, next_turn)
    return {
        "account": target.key,
        "circuit": "open",
        "probe": probe,
        "dead_lettered": len(dead_lettered),
        "next_turn_in": round(next_turn, 3),
    }
