"""Sweeps are jobs of the job store too: a run ends its job whatever happens, with its result, so
a sweep that fails is not run again in a loop; a run whose node dies is given back by the janitor
like any job, and one that keeps dying is given up. A task applied in-process (``chat-archiver
sweep`` uses Celery's ``apply``) is not in the store and runs as it is."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from worker import app
from worker.contract.history import Ticket
from worker.services import get_services
from worker.stores.endings import Endings, RunRef
from worker.stores.jobs import JobBody, StoredJob, lease_member

logger = logging.getLogger("chat_archiver.jobs")


def run_leased(task: Task, kwargs: Mapping[str, Any], body: Callable[[], Any]) -> Any:
    request = task.request
    if request.is_eager:
        return body()
    ticket = Ticket.from_headers(request.headers or {})
    if ticket is None:
        logger.error("%s %s was not handed out by a dispatcher: ignored", task.name, request.id)
        raise Ignore()
    services = get_services()
    stored = StoredJob(
        request.id, ticket.account, task.name, "", ticket.lost, JobBody(dict(kwargs))
    )
    ref = RunRef(stored, lease_member(request.id, ticket.token))
    result: Any = None
    try:
        if ticket.lost >= services.settings.max_deliveries:
            logger.error(
                "%s %s began %d runs that never ended: given up",
                task.name,
                request.id,
                ticket.lost + 1,
            )
            result = {"status": "given up", "runs": ticket.lost + 1}
        else:
            result = body()
        return result
    finally:
        Endings(services, app.backend).final(ref, result=result)
