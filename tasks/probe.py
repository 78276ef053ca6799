"""Task ``archive.probe``: look after an account whose circuit is open until it answers again.

A chain of tasks, each sending the next (worker/circuit.py keeps the chain's token, so a lost
chain is replaced by the next job that parks and two chains never run side by side). Each turn:

- the circuit has closed: release whatever is still parked (a probe job that closed it could not
  release everything), and stop;
- nothing is parked: stop (a job that parks later starts a new chain);
- otherwise dead-letter the jobs parked longer than the maximum pause (with the account's
  reason, so they can be replayed once the account is fixed); if a probe is due and none is
  running, release the oldest parked job to the account's queue: that job is the probe. If the
  provider answers it with anything but an account problem, its run closes the circuit and
  releases every parked job (tasks/archive.py); if it answers the account problem again, the
  cooldown doubles. Then come back when the next probe is due, or after a cooldown if one is
  due now (the probe job has answered by then, or got lost and another is released).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from config import Account
from tasks.archive import PROBE_TASK, ArchiveRunner
from tasks.delivery import Delivery
from worker import app
from worker.circuit import ChainTurn, CircuitState
from worker.outcomes import Reason
from worker.services import get_accounts, get_services


@app.task(name=PROBE_TASK, bind=True)
def archive_probe(
    self: Any, provider: str, account: str, chain: str | None = None
) -> dict[str, Any]:
    runner = ArchiveRunner(get_services(), get_accounts())
    return look_after(
        runner,
        get_accounts().get(provider, account),
        chain or self.request.id,  # a probe sent by hand starts its own chain
        self.request.hostname or "",
        self.app.backend.mark_as_done,
    )


def look_after(
    runner: ArchiveRunner,
    target: Account,
    chain: str,
    worker: str,
    mark_done: Callable[[str, dict[str, Any]], Any],
) -> dict[str, Any]:
    """One turn of the chain ``chain`` for the account ``target``. ``mark_done`` records the
    result of a job whose own run ended parked (Celery's result backend)."""
    services, circuit = runner.services, runner.services.circuit
    state = circuit.state(target)
    if state.state == "closed":
        released = runner.resume(target) if state.parked else 0
        return {"account": target.key, "circuit": "closed", "released": released}

    next_turn = state.probe_in or services.settings.circuit_cooldown
    turn = circuit.chain_turn(target, chain, next_turn)
    if turn is not ChainTurn.CONTINUE:
        return {"account": target.key, "circuit": "open", "chain": str(turn)}
    dead_lettered, probe = 0, None
    with circuit.releasing(target) as lock:
        if lock is not None:  # else another release is under way: the next turn will do
            dead_lettered = _dead_letter_expired(runner, target, state, worker, mark_done)
            if not state.probe_in and not state.probing:
                released = runner.release(target, 1, afresh=False)  # the probe
                probe = released[0].task_id if released else None
    runner.send_probe(target, chain, next_turn)
    return {
        "account": target.key,
        "circuit": "open",
        "probe": probe,
        "dead_lettered": dead_lettered,
        "next_turn_in": round(next_turn, 3),
    }


def _dead_letter_expired(
    runner: ArchiveRunner,
    target: Account,
    state: CircuitState,
    worker: str,
    mark_done: Callable[[str, dict[str, Any]], Any],
) -> int:
    settings = runner.settings
    reason = Reason(state.reason or Reason.ACCOUNT_UNAVAILABLE)
    detail = (
        f"{target.key} paused longer than {settings.circuit_max_pause:g}s: {state.detail or reason}"
    )
    count = 0
    for job in runner.services.circuit.expired(target):
        delivery = Delivery.from_headers(job.task_id, worker, job.headers)
        # The job's own result said PARKED: its run is over now.
        mark_done(job.task_id, runner.dead_letter(job.kwargs, reason, detail, delivery))
        count += 1
    return count
