"""The shared limiter's arithmetic, on a real Redis. (Its behaviour across worker processes and
hosts is measured by tests/benchmarks/bench_rate_limit.py.)"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import pytest

from config import Account, parse_rate
from tasks.sweep.calls import ListingCalls
from tasks.sweep.policy import SweepSummary
from tests.conftest import GREEN_ID, Env
from worker.stores.clock import PinnedClock
from worker.stores.limiter import RECENT_WINDOW, AccountLimiter, LimiterState, Permit


@pytest.fixture
def limiter(archiver_env: Env) -> AccountLimiter:
    return AccountLimiter(archiver_env.redis, "t", margin=0.0)


def test_permits_are_spaced_one_interval_apart(limiter: AccountLimiter, archiver_env: Env) -> None:
    account = archiver_env.accounts.get("green-api", GREEN_ID)  # 10/s: 100 ms apart
    waits = [limiter.acquire(account, "archiveChat", max_wait=5).wait for _ in range(5)]
    # Reserved slots: 0, 0.1, 0.2 ... from the first call (less the time the calls took).
    for index, wait in enumerate(waits):
        assert index * 0.1 - 0.05 <= wait <= index * 0.1 + 0.001


def test_far_permit_is_refused_without_reserving(
    limiter: AccountLimiter, archiver_env: Env
) -> None:
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    for _ in range(10):
        assert limiter.acquire(account, "archiveChat", max_wait=5).granted
    refused = limiter.acquire(account, "archiveChat", max_wait=0.5)
    assert not refused.granted and 0.9 <= refused.wait <= 1.0
    state = limiter.state(account, "archiveChat")
    assert state.granted == 10 and state.deferred == 1
    # The refusal reserved nothing: the next grantable slot did not move.
    assert 0.9 <= state.next_permit_in <= 1.0


def test_accounts_and_methods_do_not_share_a_limit(
    limiter: AccountLimiter, archiver_env: Env
) -> None:
    green = archiver_env.accounts.get("green-api", GREEN_ID)
    other = replace(green, id="7105000000")
    for _ in range(5):
        limiter.acquire(green, "archiveChat", max_wait=5)
    assert limiter.acquire(other, "archiveChat", max_wait=5).wait == 0
    assert limiter.acquire(green, "getChats", max_wait=5).wait == 0


def test_margin_widens_the_interval(archiver_env: Env) -> None:
    limiter = AccountLimiter(archiver_env.redis, "t", margin=0.05)
    assert limiter.interval(parse_rate("10/s")) == pytest.approx(0.105)
    state_account = archiver_env.accounts.get("green-api", GREEN_ID)
    assert limiter.state(state_account, "archiveChat").target_per_second == pytest.approx(10 / 1.05)


def test_penalty_holds_off_every_caller(limiter: AccountLimiter, archiver_env: Env) -> None:
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    assert limiter.penalize(account, "archiveChat", 2.0) == pytest.approx(2.0, abs=0.01)
    assert limiter.acquire(account, "archiveChat", max_wait=5).wait == pytest.approx(2.0, abs=0.05)
    # Without Retry-After: one window of the provider's rate (1 s for "10/s").
    other = replace(account, id="7105000000")
    assert limiter.penalize(other, "archiveChat", None) == pytest.approx(1.0, abs=0.01)
    state = limiter.state(account, "archiveChat")
    assert state.rate_limited == 1 and state.allowed_per_second == 10
    # A shorter 429 than the slots already booked says when the next slot really is.
    assert limiter.penalize(account, "archiveChat", 0.5) == pytest.approx(2.1, abs=0.05)


def test_recent_rate_counts_granted_slots(limiter: AccountLimiter, archiver_env: Env) -> None:
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    for _ in range(3):
        limiter.acquire(account, "archiveChat", max_wait=5)
    # Slots at 0, 0.1, 0.2 s: only the one already due counts as "recent" right now.
    state = limiter.state(account, "archiveChat")
    assert 0.1 <= state.recent_per_second <= 0.3
    assert state.granted == 3


def test_recent_rate_counts_slots_taken_not_slots_reserved_ahead(
    limiter: AccountLimiter, archiver_env: Env
) -> None:
    """Ten permits at 10/s reserve slots over the next second: only the one already due counts
    as a call in the recent rate (the others are future slots nobody has used yet)."""
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    for _ in range(10):
        assert limiter.acquire(account, "archiveChat", max_wait=5).granted
    state = limiter.state(account, "archiveChat")
    assert state.granted == 10
    assert state.recent_per_second == pytest.approx(1 / 10)  # one call in the 10 s window


def test_a_limits_state_reports_its_own_counts_and_times(archiver_env: Env) -> None:
    clock = PinnedClock()
    limiter = AccountLimiter(archiver_env.redis, "t", margin=0.0, clock=clock)
    account = archiver_env.accounts.get("green-api", GREEN_ID)  # 10/s: 100 ms apart
    fresh = limiter.state(account, "archiveChat")
    assert (fresh.granted, fresh.deferred, fresh.rate_limited) == (0, 0, 0)
    assert (fresh.waited_seconds, fresh.next_permit_in, fresh.recent_per_second) == (0, 0, 0)

    waits = [limiter.acquire(account, "archiveChat", max_wait=5).wait for _ in range(3)]
    assert waits == pytest.approx([0.0, 0.1, 0.2])
    state = limiter.state(account, "archiveChat")
    assert (state.account, state.method) == (account.key, "archiveChat")
    assert state.granted == 3
    assert state.waited_seconds == pytest.approx(0.3)  # 0 + 0.1 + 0.2
    assert state.next_permit_in == pytest.approx(0.3)
    # Recent permits are counted by their slot, up to now inclusive, over the last window.
    assert state.recent_per_second == pytest.approx(1 / RECENT_WINDOW)
    clock.advance(0.2)  # the last slot is now
    assert limiter.state(account, "archiveChat").recent_per_second == pytest.approx(
        3 / RECENT_WINDOW
    )
    clock.advance(RECENT_WINDOW - 0.2)  # the first slot is the window's start: out
    assert limiter.state(account, "archiveChat").recent_per_second == pytest.approx(
        2 / RECENT_WINDOW
    )


def test_late_allowance_is_a_fifth_of_the_margins_slack(archiver_env: Env) -> None:
    limiter = AccountLimiter(archiver_env.redis, "t", margin=0.025)
    assert limiter.late_allowance(parse_rate("10/s")) == pytest.approx(0.005)  # 25 ms / 5
    assert limiter.late_allowance(parse_rate("600/m")) == pytest.approx(0.3)  # 1.5 s / 5


@dataclass
class LateCalls:
    """A 10/s limit at the default margin on a pinned Redis clock, and calls sent late on it."""

    clock: PinnedClock
    limiter: AccountLimiter
    account: Account

    def permit(self) -> Permit:
        return self.limiter.acquire(self.account, "archiveChat", max_wait=5)

    def send(self, permit: Permit, late: float, asked_ago: float | None = None) -> float:
        """Send on ``permit`` ``late`` seconds after its slot on Redis's clock, the permit
        having been asked for ``asked_ago`` seconds ago by this process's (default: ``late``)."""
        self.clock.advance(late)
        asked = time.monotonic() - (late if asked_ago is None else asked_ago)
        return self.limiter.keep_distance(self.account, "archiveChat", asked, permit)

    def state(self) -> LimiterState:
        return self.limiter.state(self.account, "archiveChat")


@pytest.fixture
def late_calls(archiver_env: Env) -> LateCalls:
    clock = PinnedClock()
    limiter = AccountLimiter(archiver_env.redis, "t", margin=0.025, clock=clock)
    return LateCalls(clock, limiter, archiver_env.accounts.get("green-api", GREEN_ID))


def test_a_call_later_than_its_allowance_pushes_the_later_slots_back(
    late_calls: LateCalls,
) -> None:
    """A call going out 50 ms after its slot at 10/s (Redis's clock): the slots after it move
    by the lateness beyond the 5 ms allowance, so the call a second later keeps a second away."""
    permit = late_calls.permit()
    assert permit.wait == 0
    pushed = late_calls.send(permit, 0.05)
    assert pushed == pytest.approx(0.045, abs=1e-6)
    state = late_calls.state()
    assert state.late == 1
    assert state.next_permit_in == pytest.approx(0.1025 + 0.045 - 0.05, abs=1e-6)


def test_a_slot_that_had_passed_counts_towards_the_lateness(late_calls: LateCalls) -> None:
    slot = late_calls.permit().slot
    # Handed a slot 30 ms gone (a dispatched run admitted late), sent at once.
    passed = Permit(granted=True, wait=0.0, late=0.03, slot=slot)
    pushed = late_calls.send(passed, 0.03, asked_ago=0.0)
    assert pushed == pytest.approx(0.025, abs=1e-6)


def test_a_call_within_its_allowance_moves_nothing(late_calls: LateCalls) -> None:
    assert late_calls.send(late_calls.permit(), 0.004) == 0
    state = late_calls.state()
    assert state.late == 0 and state.next_permit_in == pytest.approx(0.1025 - 0.004)


def test_a_slow_permit_alone_pushes_nothing(late_calls: LateCalls) -> None:
    """The permit took 200 ms to come back (a busy Redis) but the call goes on its slot: this
    process's clock suspects lateness, Redis's clock clears it."""
    assert late_calls.send(late_calls.permit(), 0.0, asked_ago=0.2) == 0
    assert late_calls.state().late == 0


def test_a_push_is_at_most_one_interval(late_calls: LateCalls) -> None:
    # A worker stalled half a second after its permit.
    pushed = late_calls.send(late_calls.permit(), 0.5)
    assert pushed == pytest.approx(0.1025, abs=1e-6)


def test_a_push_on_a_limit_whose_slot_key_is_gone_starts_from_now(
    late_calls: LateCalls, archiver_env: Env
) -> None:
    permit = late_calls.permit()
    archiver_env.redis.delete(late_calls.limiter.acquire_keys(late_calls.account, "archiveChat")[0])
    late_calls.send(permit, 0.05)
    assert late_calls.permit().wait == pytest.approx(0.045)


def test_a_sweeps_listing_call_measures_its_lateness(archiver_env: Env) -> None:
    account = archiver_env.accounts.get("green-api", GREEN_ID)
    summary = SweepSummary(account.key, dry_run=True)
    calls = ListingCalls(
        archiver_env.services, account, summary, sleep=lambda s: time.sleep(s + 0.03)
    )
    assert calls.call("getChats", lambda: "listed") == "listed"
    assert archiver_env.services.limiter.state(account, "getChats").late == 1
