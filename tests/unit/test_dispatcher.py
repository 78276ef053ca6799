"""How a dispatcher waits between steps: the doorbell (a Redis BLPOP, woken by work arriving
anywhere) for long waits, its own timer for the last stretch before a job is due, because Redis
times out a BLPOP only at its server cron (up to 1/hz = 100 ms late by default)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from worker.dispatch.dispatcher import MAX_SLEEP, PRECISE, Dispatcher, Wait, WaitOn
from worker.stores.jobs import Dispatched


@dataclass
class FakeKeys:
    doorbell: str = "doorbell"


@dataclass
class FakeStore:
    """A job store that answers each dispatch with what the test says is due."""

    answer: Dispatched
    keys: FakeKeys = field(default_factory=FakeKeys)
    asked: list[int] = field(default_factory=list)

    def dispatch(self, budget: int, *, ready: str = "") -> Dispatched:
        self.asked.append(budget)
        return self.answer


def step(answer: Dispatched, capacity: int = 4) -> Wait:
    store = FakeStore(answer)
    dispatcher = Dispatcher(
        store,  # type: ignore[arg-type]
        broker=None,  # type: ignore[arg-type]
        ready="archive.ready",
        capacity=lambda: capacity,
        shared=True,
    )
    return dispatcher.step()


@pytest.mark.parametrize("next_in", [0.001, 0.05, PRECISE])
def test_the_last_stretch_before_a_due_job_is_waited_on_a_punctual_timer(next_in: float) -> None:
    assert step(Dispatched(0, next_in, [])) == Wait(WaitOn.SLOT, next_in)


@pytest.mark.parametrize("next_in", [0.25, 0.7, 1.2, 30.0])
def test_a_longer_wait_blocks_on_the_doorbell_until_that_stretch_begins(next_in: float) -> None:
    wait = step(Dispatched(0, next_in, []))
    assert wait.on is WaitOn.DOORBELL
    assert wait.timeout == pytest.approx(min(MAX_SLEEP, next_in - PRECISE))


def test_nothing_waiting_blocks_on_the_doorbell_for_the_longest_sleep() -> None:
    assert step(Dispatched(0, None, [])) == Wait(WaitOn.DOORBELL, MAX_SLEEP)


def test_full_slots_wait_for_a_slot_to_free() -> None:
    assert step(Dispatched(4, 0.5, ["m"] * 4), capacity=4) == Wait(WaitOn.SLOT, 0.5)


def test_no_free_slot_asks_the_store_for_nothing() -> None:
    store = FakeStore(Dispatched(0, 0.0, []))
    dispatcher = Dispatcher(
        store,  # type: ignore[arg-type]
        broker=None,  # type: ignore[arg-type]
        ready="archive.ready",
        capacity=lambda: 0,
        shared=True,
    )
    assert dispatcher.step() == Wait(WaitOn.SLOT, MAX_SLEEP)
    assert store.asked == []
