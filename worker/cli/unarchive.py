"""``chat-archiver unarchive``: the undo of archiving. One chat, a file of them (as ``enqueue``
reads them), or every chat a sweep run archived (``--sweep RUN_ID``, from the run's record,
kept for ARCHIVER_SWEEP_RUN_RETENTION). Each is an ``archive.unarchive`` job, under the same
rate limits, outcomes and dead letters as archiving; "already unarchived" is success."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import click

from worker.cli.common import OneLineCommand, UsageProblem, one_line_errors
from worker.cli.enqueue import Row, job_options, run_jobs
from worker.contract.tasks import UNARCHIVE_TASK
from worker.services import get_services
from worker.stores.sweep_runs import SweepRuns


def sweep_rows(run_id: str, source: str) -> tuple[Iterator[Row], int]:
    """The chats the sweep run ``run_id`` archived, as rows to unarchive, and how many."""
    services = get_services()
    runs = SweepRuns(services.redis, services.keys, services.settings.sweep_run_retention)
    record = runs.record(run_id)
    if record is None:
        raise UsageProblem(
            f"--sweep {run_id}: no such sweep run (its record is kept "
            f"{services.settings.sweep_run_retention // 86400} days: chat-archiver sweep runs)"
        )
    provider, account = str(record["provider"]), str(record["account"])
    total = runs.count(run_id, "archived")

    def rows() -> Iterator[Row]:
        for line, chat in enumerate(sorted(runs.iter_chats(run_id, "archived")), start=1):
            job = {"provider": provider, "account": account, "chat_id": chat, "source": source}
            yield Row(line, job)

    return rows(), total


@click.command(cls=OneLineCommand)
@job_options("unarchive")
@click.option(
    "--sweep",
    "run_id",
    help="Every chat this sweep run archived (its id: chat-archiver sweep runs).",
)
@one_line_errors
def unarchive(run_id: str | None, **options: Any) -> None:
    """Restore archived chats: enqueue unarchive jobs, reported like enqueue's. Exits 1 when any
    row was refused or Redis refused writes for longer than --retry-for, 2 when the input cannot
    be read (then nothing is enqueued)."""
    if run_id is None:
        run_jobs(UNARCHIVE_TASK, **options)
        return
    source = options["source"] if options["source"] != "cli" else f"undo:{run_id}"
    rows, total = sweep_rows(run_id, source[:64])
    run_jobs(UNARCHIVE_TASK, **{**options, "source": source[:64]}, rows=rows, total=total)
