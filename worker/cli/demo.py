"""``chat-archiver demo``: archive chats against the built-in simulator and show the outcomes."""

from __future__ import annotations

import click

from worker.cli.common import OneLineCommand, console, fail, one_line_errors
from worker.sandbox.demo import run_demo


@click.command(cls=OneLineCommand)
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for outcomes.")
@click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    help="Run in this Redis (to watch the demo in your Flower, say) instead of a private "
    "redis-server; the demo removes everything it wrote there.",
)
@one_line_errors
def demo(timeout: float, redis_url: str | None) -> None:
    """Start the simulator and a worker, enqueue a mix of jobs, print every outcome.

    Runs a private redis-server when it is on the PATH (else the Redis at ARCHIVER_BROKER_URL)
    and leaves nothing behind. Exits 1 if any outcome disagrees with the simulator's state."""
    try:
        ok = run_demo(console, timeout=timeout, redis_url=redis_url)
    except RuntimeError as error:
        raise fail(str(error)) from None
    if not ok:
        raise SystemExit(1)
