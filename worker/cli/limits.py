"""``chat-archiver limits``: the shared limiter's state, per account and method."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from worker.cli.common import OneLineCommand, cell, console, one_line_errors
from worker.services import get_accounts, get_services
from worker.stores.limiter import LimiterState
from worker.views.tables import print_table


def limiter_states(all_methods: bool = False) -> list[LimiterState]:
    """Every account's archive method, and each other method that has been used lately."""
    limiter = get_services().limiter
    states = []
    for account in get_accounts(secrets=False):
        for method in account.rates:
            state = limiter.state(account, method)
            used = state.next_permit_in or state.deferred or state.rate_limited or state.late
            if all_methods or method == account.spec.archive_method or used:
                states.append(state)
    return states


@click.command(cls=OneLineCommand)
@click.option("--all", "all_methods", is_flag=True, help="Also methods never called yet.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@one_line_errors
def limits(all_methods: bool, as_json: bool) -> None:
    """Allowed and target rate, refused permits, 429s, late calls and the next permit of every
    account's limiter."""
    states = limiter_states(all_methods)
    if as_json:
        click.echo(json.dumps([asdict(state) for state in states], indent=2))
        return
    print_limits(states)


def print_limits(states: list[LimiterState]) -> None:
    columns = [
        "account",
        "method",
        "allowed/s",
        "target/s",
        "deferred",
        "429s",
        "late",
        "next permit in",
    ]
    rows = [
        [
            cell(state.account),  # data: a Text, never parsed as rich markup
            cell(state.method),
            f"{state.allowed_per_second:g}",
            f"{state.target_per_second:.2f}",
            str(state.deferred),
            str(state.rate_limited),
            str(state.late),
            f"{state.next_permit_in:.2f}s",
        ]
        for state in states
    ]
    print_table(console, columns, rows)
