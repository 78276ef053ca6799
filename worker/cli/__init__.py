"""``chat-archiver``: the command for people. Each group lives in its own module.

Exit codes: 0 success; 1 with a one-line reason on error (click prints it as ``Error: ...``);
2 when a wrong ARCHIVER_* variable stops every command at start. ``status`` exits 1 when
the deployment is unhealthy (worker/cli/status.py).
"""

from __future__ import annotations

import click

from worker.cli.common import install_cli_logging
from worker.cli.demo import demo
from worker.cli.dlq import dlq
from worker.cli.enqueue import enqueue
from worker.cli.limits import limits
from worker.cli.metrics import metrics
from worker.cli.simulate import simulate
from worker.cli.status import status
from worker.cli.sweep import sweep
from worker.cli.unarchive import unarchive


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chat-archiver")
def main() -> None:
    """Archive WhatsApp chats through GREEN-API and Wassenger on Celery workers."""
    install_cli_logging()


main.add_command(enqueue)
main.add_command(unarchive)
main.add_command(dlq)
main.add_command(simulate)
main.add_command(demo)
main.add_command(limits)
main.add_command(metrics)
main.add_command(sweep)
main.add_command(status)

__all__ = ["main"]
