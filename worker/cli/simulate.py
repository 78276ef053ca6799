"""``chat-archiver simulate``: serve both provider APIs on loopback (worker/sandbox/simulator)."""

from __future__ import annotations

import click

from worker.sandbox.simulator import serve


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--scenario",
    type=click.Path(exists=True, dir_okay=False),
    help="A JSON or TOML file of accounts and chats to start with.",
)
@click.option("--access-log", is_flag=True, help="Log each request (tokens masked).")
def simulate(host: str, port: int, scenario: str | None, access_log: bool) -> None:
    """Serve a GREEN-API and Wassenger simulator until interrupted."""
    serve(host, port, scenario, access_log=access_log)
