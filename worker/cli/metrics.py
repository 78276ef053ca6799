"""``chat-archiver metrics``: a Prometheus endpoint for the whole deployment."""

from __future__ import annotations

import signal
import threading

import click
from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry

from worker.cli.common import err_console, one_line_errors
from worker.exporter import ArchiverCollector
from worker.services import get_accounts, get_services


@click.command()
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
    paused accounts, read from Redis at each scrape (one exporter for any number of workers)."""
    registry = CollectorRegistry()
    services, accounts = get_services(), get_accounts()
    services.redis.ping()  # fail now, in one line, rather than at the first scrape
    services.broker.ping()
    registry.register(ArchiverCollector(services, accounts))
    server, thread = start_http_server(port, addr=host, registry=registry)
    err_console.print(f"chat-archiver metrics on http://{host}:{server.server_port}/metrics")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    thread.join(5)
