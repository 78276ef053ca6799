"""``chat-archiver demo``: archive chats against the built-in simulator and show the outcomes."""

from __future__ import annotations

import click

from worker.cli.common import console, one_line_errors
from worker.demo import run_demo


@click.command()
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for outcomes.")
@one_line_errors
def demo(timeout: float) -> None:
    """Start the simulator and a worker, enqueue a mix of jobs, print every outcome.

    Exits 1 if any outcome disagrees with the simulator's state."""
    try:
        ok = run_demo(console, timeout=timeout)
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None
    if not ok:
        raise SystemExit(1)
