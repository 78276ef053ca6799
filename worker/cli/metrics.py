"""``chat-archiver metrics``: a Prometheus endpoint for the whole deployment."""

from __future__ import annotations

import logging
import signal
import threading

import click

from config import AccountRegistry
from worker.cli.common import OneLineCommand, UsageProblem, one_line_errors, say
from worker.services import get_accounts, get_services
from worker.stores.client import safe_url
from worker.views.exporter import UNAVAILABLE, serve

logger = logging.getLogger("chat_archiver.metrics")


def _accounts() -> AccountRegistry:
    return get_accounts(secrets=False)


@click.command(cls=OneLineCommand)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Where to listen (0.0.0.0 in a container; keep it off the public internet).",
)
@click.option("--port", default=9464, show_default=True, type=int)
@one_line_errors
def metrics(host: str, port: int) -> None:
    """Serve /metrics: outcomes, dead letters, queue depths, limiter waits, provider latency and
    paused accounts, read from Redis at each scrape (one exporter for any number of workers).
    While Redis does not answer, scrapes get HTTP 503 and the log one line."""
    services = get_services()
    # A wrong accounts file: exit 2 now; later changes are reread at a scrape. Tokens are not
    # read: the exporter calls no provider.
    get_accounts(secrets=False)
    try:
        services.redis.ping()
        services.broker.ping()
    except UNAVAILABLE as error:
        # Not fatal: Redis may start after us (a compose stack, a reboot). Scrapes say 503.
        logger.error(
            "Redis at %s does not answer yet (%s): scrapes get HTTP 503 until it does",
            safe_url(services.settings.state_url),
            " ".join(str(error).split()),
        )
    try:
        server, thread = serve(services, _accounts, host, port)
    except OSError as error:  # the port is taken, the host is not ours
        why = error.strerror or str(error)
        raise UsageProblem(f"--host {host} --port {port}: cannot listen ({why})") from None
    say(f"chat-archiver metrics on http://{host}:{server.server_port}/metrics", err=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    thread.join(5)
