"""Sweeps and probes are jobs of the job store too: a run takes its job's lease first (a leftover
or duplicate delivery ends quietly), and ends the job whatever happens, so a sweep that fails is
not run again in a loop; a run whose node dies is given back by the janitor like any job.
A task applied in-process (``chat-archiver sweep`` uses Celery's ``apply``) is not in the store
and runs as it is."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from worker.contract.tasks import UNPACED
from worker.services import get_services
from worker.stores.endings import Endings, RunRef
from worker.stores.jobs import Lease

logger = logging.getLogger("chat_archiver.jobs")

DELIVERIES_TTL = 7 * 86400


def run_leased(task: Task, kwargs: Mapping[str, Any], body: Callable[[], Any]) -> Any:
    request = task.request
    if request.is_eager:
        return body()
    services = get_services()
    run = uuid.uuid4().hex
    lease, deliveries = services.jobs.take_lease(request.id, run, DELIVERIES_TTL)
    if lease is not Lease.OK:
        raise Ignore()
    ref = RunRef(request.id, run, UNPACED, dict(kwargs), task=task.name)
    try:
        if deliveries > services.settings.max_deliveries:
            logger.error(
                "%s %s began %d runs that never ended: given up", task.name, request.id, deliveries
            )
            return {"status": "given up", "runs": deliveries}
        return body()
    finally:
        Endings(services).final(ref)
