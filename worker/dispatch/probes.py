"""Probe chains: the task that looks after a paused account (tasks/probe.py) is sent from here, by
the run that trips an account's circuit and by the janitor when a paused account has lost its
chain (a chain's next turn waits in the job store like any delayed job)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from config import Account
from worker.contract.tasks import PROBE_TASK
from worker.producer import default_producer
from worker.stores.circuit import AccountCircuit

# Redis's clock and ours may differ a little: a probe task comes back a little after its turn.
PROBE_SLACK = 0.5


def send_probe(account: Account, chain: str, countdown: float) -> None:
    """Send the next turn of the account's probe chain ``chain`` in ``countdown`` seconds."""
    default_producer().send(
        PROBE_TASK,
        {"provider": account.provider, "account": account.id, "chain": chain},
        countdown=countdown + PROBE_SLACK,
    )


def ensure_chain(
    circuit: AccountCircuit,
    account: Account,
    sender: Callable[[Account, str, float], None] = send_probe,
) -> bool:
    """Start a probe chain for a paused account if none runs (a lost chain is replaced); True if
    one was started."""
    chain = uuid.uuid4().hex
    wait = circuit.chain_to_start(account, chain)
    if wait is None:
        return False
    sender(account, chain, wait)
    return True
