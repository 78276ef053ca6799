"""Task ``archive.sweep``: sweep one account, or fan out one sweep per account whose sweep is
enabled (what beat sends: worker/beat.py)."""

from __future__ import annotations

from typing import Any

from celery import Task

from config import Account, AccountRegistry
from tasks.archive.task import JobTask
from tasks.leased import run_leased
from tasks.sweep.policy import SweepError
from tasks.sweep.sweeper import Sweeper
from worker import app
from worker.contract.tasks import SWEEP_TASK
from worker.producer import default_producer
from worker.services import get_accounts, get_services
from worker.stores.sweep_runs import SweepRuns


def sweep_accounts(
    accounts: AccountRegistry, provider: str | None, account_id: str | None
) -> list[Account]:
    if provider and account_id:
        return [accounts.get(provider, account_id)]
    if provider or account_id:
        raise SweepError("give both provider and account, or neither (every swept account)")
    return [a for a in accounts if a.sweep is not None and a.sweep.enabled]


# A sweep is one long sequential task (listing calls at about 1/s): its own time limits, set when
# the app configures (worker/celery_app.py task_annotations), not read here at import.
@app.task(name=SWEEP_TASK, bind=True, base=JobTask)
def archive_sweep(
    self: Task,
    provider: str | None = None,
    account: str | None = None,
    dry_run: bool = False,
    list_chats: bool = False,
    confirm: str | None = None,
) -> Any:
    """``confirm``: the id of a held run to confirm instead (an operator's `chat-archiver sweep
    --confirm`, applied in that process; the intake takes no such message)."""
    kwargs = {
        "provider": provider,
        "account": account,
        "dry_run": dry_run,
        "list_chats": list_chats,
    }
    if confirm is not None:
        return run_leased(self, {**kwargs, "confirm": confirm}, lambda: _confirm(confirm))
    return run_leased(self, kwargs, lambda: _sweep(provider, account, dry_run, list_chats))


def _confirm(run_id: str) -> dict[str, Any]:
    services = get_services()
    runs = SweepRuns(services.redis, services.keys, services.settings.sweep_run_retention)
    record = runs.record(run_id)
    if record is None:
        days = services.settings.sweep_run_retention / 86400
        raise SweepError(f"no sweep run {run_id} (runs are kept {days:g} days)")
    target = get_accounts().get(record["provider"], record["account"])
    return Sweeper(services).confirm(target, run_id).as_dict()


def _sweep(
    provider: str | None, account: str | None, dry_run: bool, list_chats: bool
) -> dict[str, Any]:
    accounts = sweep_accounts(get_accounts(), provider, account)
    if provider is None:
        for target in accounts:
            default_producer().send(
                SWEEP_TASK, {"provider": target.provider, "account": target.id, "dry_run": dry_run}
            )
        return {"scheduled": [target.key for target in accounts]}
    [target] = accounts
    return Sweeper(get_services()).sweep(target, dry_run=dry_run, list_chats=list_chats).as_dict()
