"""A local stand-in for GREEN-API and Wassenger: both APIs on one loopback port, with per-account
state, every documented error, sliding-window rate limits, fault injection and call counters."""

from worker.sandbox.simulator.client import SimulatorClient, SimulatorError
from worker.sandbox.simulator.server import SimulatorHandle, mask_path, serve, start_in_thread
from worker.sandbox.simulator.state import (
    DEFAULT_RATE_LIMITS,
    GREEN_API,
    WASSENGER,
    Account,
    Chat,
    Faults,
    SimulatorState,
    SpecError,
    generate_chats,
    load_scenario,
)

__all__ = [
    "DEFAULT_RATE_LIMITS",
    "GREEN_API",
    "WASSENGER",
    "Account",
    "Chat",
    "Faults",
    "SimulatorClient",
    "SimulatorError",
    "SimulatorHandle",
    "SimulatorState",
    "SpecError",
    "generate_chats",
    "load_scenario",
    "mask_path",
    "serve",
    "start_in_thread",
]
