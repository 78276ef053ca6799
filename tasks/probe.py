"""Task ``archive.probe``: find out whether a paused account answers again.

Scheduled when an account's circuit opens (and again after every failed probe, with a doubled
cooldown). It dead-letters the jobs that have been parked longer than the maximum pause (with
the account's reason, so they can be replayed once the account is fixed), then releases one
parked job to the account's queue: that job is the probe. If the provider answers it with
anything but an account problem, the job's run closes the circuit and releases every parked job
(tasks/archive.py). If the circuit closed meanwhile, this task releases the parked jobs itself.
"""

from __future__ import annotations

from typing import Any

from tasks.archive import PROBE_TASK, ArchiveRunner
from tasks.delivery import Delivery
from worker import app
from worker.outcomes import Reason
from worker.producer import default_producer
from worker.routing import account_queue
from worker.services import get_accounts, get_services


@app.task(name=PROBE_TASK, bind=True)
def archive_probe(self: Any, provider: str, account: str) -> dict[str, Any]:
    services = get_services()
    target = get_accounts().get(provider, account)
    circuit = services.circuit
    runner = ArchiveRunner(services, get_accounts())
    if not circuit.is_open(target):
        released = runner.resume(target) if circuit.parked_count(target) else 0
        return {"account": target.key, "circuit": "closed", "released": released}

    state = circuit.state(target)
    reason = Reason(state.reason or Reason.ACCOUNT_UNAVAILABLE)
    expired, probe = 0, []
    with circuit.releasing(target) as mine:
        if not mine:  # another release is under way: it will do
            return {"account": target.key, "circuit": "open", "probe": None, "dead_lettered": 0}
        for job in circuit.expired(target):
            delivery = Delivery.from_headers(job.task_id, self.request.hostname or "", job.headers)
            result = runner.dead_letter(
                job.kwargs,
                reason,
                f"{target.key} paused longer than {services.settings.circuit_max_pause:g}s: "
                f"{state.detail or reason}",
                delivery,
            )
            # The job's own result said PARKED: its run is over now.
            self.app.backend.mark_as_done(job.task_id, result)
            expired += 1
        probe = circuit.head(target, 1)
        if probe:
            home = account_queue(services.settings.queue, provider, account)
            default_producer().republish(probe, home)
            circuit.drop_head(target, len(probe))
    return {
        "account": target.key,
        "circuit": "open",
        "probe": probe[0].task_id if probe else None,
        "dead_lettered": expired,
    }
