"""The shared limiter's arithmetic, on a real Redis: permits for calls no dispatch reserved (a
retry, a sweep's listing call), the idle gap, the push a late call gives the later slots, a 429's
penalty, and what an operator reads. (Its behaviour across worker processes and hosts is
measured by tests/benchmarks/bench_rate_limit.py.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from config import Account, parse_rate
from tasks.sweep.calls import ListingCalls
from tasks.sweep.policy import SweepSummary
from tests.conftest import GREEN_ID, Env, RoundTrips
from tests.support import JobDesk, published_accounts
from worker.dispatch.registry import dispatch_entry
from worker.stores.clock import MICROS, PinnedClock
from worker.stores.limiter import AccountLimiter, LimiterState, Permit


@pytest.fixture
def account(archiver_env: Env) -> Account:
    return archiver_env.accounts.get("green-api", GREEN_ID)  # 10/s


@pytest.fixture
def clock() -> PinnedClock:
    return PinnedClock()


@pytest.fixture
def limiter(archiver_env: Env) -> AccountLimiter:
    """No margin, no gap: the bare arithmetic of the slots, on Redis's clock."""
    return AccountLimiter(archiver_env.redis, "t", margin=0.0)


@pytest.fixture
def pinned(archiver_env: Env, clock: PinnedClock) -> AccountLimiter:
    """The default margin (2.5%: 102.5 ms at 10/s, an idle gap of 25 ms) on a pinned clock."""
    return AccountLimiter(archiver_env.redis, "t", margin=0.025, clock=clock)


def test_permits_are_spaced_one_interval_apart(limiter: AccountLimiter, account: Account) -> None:
    waits = [limiter.acquire(account, "archiveChat", max_wait=5).wait for _ in range(5)]
    # Reserved slots: 0, 0.1, 0.2 ... from the first call (less the time the calls took).
    for index, wait in enumerate(waits):
        assert index * 0.1 - 0.05 <= wait <= index * 0.1 + 0.001


def test_a_permit_names_its_slot_on_redis_clock(
    pinned: AccountLimiter, account: Account, clock: PinnedClock
) -> None:
    first = pinned.acquire(account, "archiveChat", max_wait=5)
    second = pinned.acquire(account, "archiveChat", max_wait=5)
    assert (first.granted, first.wait, first.slot) == (True, 0.0, clock.micros)
    assert second.slot == clock.micros + 127_500
    assert second.wait == pytest.approx(0.1275)


def test_an_idle_limit_gives_its_slot_now_and_the_next_a_gap_further(
    pinned: AccountLimiter, account: Account, clock: PinnedClock
) -> None:
    """The call that finds its limit idle travels to the provider after its slot was reserved,
    and may leave later still: the next slot keeps a whole interval behind it, plus the slack
    the margin leaves in a window (25 ms at 10/s)."""
    waits = [pinned.acquire(account, "archiveChat", max_wait=5).wait for _ in range(3)]
    assert waits == pytest.approx([0.0, 0.1275, 0.23])  # the gap once, then intervals
    clock.advance(0.332)  # the slot after the last (332.5 ms) is still to come: busy
    assert pinned.acquire(account, "archiveChat", max_wait=5).wait == pytest.approx(0.0005)
    clock.advance(0.5)  # the slot after that has come unused: idle again
    assert pinned.acquire(account, "archiveChat", max_wait=5).wait == 0
    assert pinned.acquire(account, "archiveChat", max_wait=5).wait == pytest.approx(0.1275)


def test_the_idle_gap_is_the_margins_slack_in_what_the_dispatcher_reads(
    archiver_env: Env, account: Account
) -> None:
    limiter = AccountLimiter(archiver_env.redis, "t", margin=0.025)
    assert limiter.keys(account, "archiveChat")[0] == f"t:limiter:{account.key}:archiveChat"
    assert limiter.spacing(account, "archiveChat") == (102_500, 25_000)
    services = archiver_env.services
    entry = dispatch_entry(account, services.limiter)
    assert entry["l"]["archive.chat"] == ["archiveChat", 102_500, 25_000]
    # Published, the limit is kept under the limiter's own key: the one dispatch.lua reads.
    services.jobs.publish_accounts({account.key: entry})
    [key, *_] = published_accounts(services.jobs)[account.key]["l"]["archive.chat"]
    assert key == services.limiter.keys(account, "archiveChat")[0]


def test_far_permit_is_refused_without_reserving(limiter: AccountLimiter, account: Account) -> None:
    for _ in range(10):
        assert limiter.acquire(account, "archiveChat", max_wait=5).granted
    refused = limiter.acquire(account, "archiveChat", max_wait=0.5)
    assert not refused.granted and 0.9 <= refused.wait <= 1.0
    state = limiter.state(account, "archiveChat")
    assert state.deferred == 1
    # The refusal reserved nothing: the next grantable slot did not move.
    assert 0.9 <= state.next_permit_in <= 1.0
    assert limiter.acquire(account, "archiveChat", max_wait=5).wait <= 1.0


def test_a_refused_permit_names_the_next_free_slot(
    pinned: AccountLimiter, account: Account, clock: PinnedClock
) -> None:
    pinned.acquire(account, "archiveChat", max_wait=5)
    refused = pinned.acquire(account, "archiveChat", max_wait=0.1)
    assert (refused.granted, refused.slot) == (False, clock.micros + 127_500)
    assert refused.wait == pytest.approx(0.1275)


def test_accounts_and_methods_do_not_share_a_limit(
    limiter: AccountLimiter, account: Account
) -> None:
    other = replace(account, id="7105000000")
    for _ in range(5):
        limiter.acquire(account, "archiveChat", max_wait=5)
    assert limiter.acquire(other, "archiveChat", max_wait=5).wait == 0
    assert limiter.acquire(account, "getChats", max_wait=5).wait == 0


def test_margin_widens_the_interval(archiver_env: Env, account: Account) -> None:
    limiter = AccountLimiter(archiver_env.redis, "t", margin=0.05)
    assert limiter.interval(parse_rate("10/s")) == pytest.approx(0.105)
    assert limiter.state(account, "archiveChat").target_per_second == pytest.approx(10 / 1.05)


def test_penalty_holds_off_every_caller(limiter: AccountLimiter, account: Account) -> None:
    assert limiter.penalize(account, "archiveChat", 2.0) == pytest.approx(2.0, abs=0.01)
    assert limiter.acquire(account, "archiveChat", max_wait=5).wait == pytest.approx(2.0, abs=0.05)
    # Without Retry-After: one window of the provider's rate (1 s for "10/s").
    other = replace(account, id="7105000000")
    assert limiter.penalize(other, "archiveChat", None) == pytest.approx(1.0, abs=0.01)
    state = limiter.state(account, "archiveChat")
    assert state.rate_limited == 1 and state.allowed_per_second == 10
    # A shorter 429 than the slots already booked says when the next slot really is.
    assert limiter.penalize(account, "archiveChat", 0.5) == pytest.approx(2.1, abs=0.05)


def test_a_penalty_is_counted_and_timed_on_redis_clock(
    pinned: AccountLimiter, account: Account, clock: PinnedClock, archiver_env: Env
) -> None:
    assert pinned.penalize(account, "archiveChat", 3.0) == 3.0
    tat_key = pinned.keys(account, "archiveChat")[0]
    assert int(archiver_env.redis.get(tat_key)) == clock.micros + 3 * MICROS
    stats = archiver_env.redis.hgetall(f"{tat_key}:stats")
    assert stats == {"rate_limited": "1", "last_rate_limited_at": str(clock.micros)}
    clock.advance(1)
    assert pinned.state(account, "archiveChat").next_permit_in == pytest.approx(2.0)


def test_a_penalty_holds_off_the_dispatcher_too(archiver_env: Env, account: Account) -> None:
    """The dispatcher reserves its permits on the limiter's own key: a 429 answered to a retry
    keeps the account's waiting jobs in the store."""
    services = archiver_env.services
    clock = PinnedClock()
    services.use_clock(clock)
    desk = JobDesk(services, archiver_env.accounts)
    desk.put({"provider": "green-api", "account": GREEN_ID, "chat_id": "79000000001@c.us"})
    services.limiter.penalize(account, "archiveChat", 5.0)
    result = services.jobs.dispatch(10)
    assert result.jobs == [] and result.next_in == pytest.approx(5.0 - 0.02)
    clock.advance(5)
    [handed] = services.jobs.dispatch(10).jobs
    assert handed.slot == clock.micros


def test_a_limits_state_reports_its_own_counts_and_times(
    pinned: AccountLimiter, account: Account, clock: PinnedClock
) -> None:
    fresh = pinned.state(account, "archiveChat")
    assert fresh == LimiterState(
        account=account.key,
        method="archiveChat",
        allowed_per_second=10,
        target_per_second=pytest.approx(10 / 1.025),  # type: ignore[arg-type]
        deferred=0,
        rate_limited=0,
        late=0,
        next_permit_in=0.0,
    )
    for _ in range(3):
        pinned.acquire(account, "archiveChat", max_wait=5)
    pinned.acquire(account, "archiveChat", max_wait=0.05)  # refused
    state = pinned.state(account, "archiveChat")
    assert state.deferred == 1
    assert state.next_permit_in == pytest.approx(0.025 + 3 * 0.1025)
    clock.advance(10)  # long past: nothing to wait for
    assert pinned.state(account, "archiveChat").next_permit_in == 0.0


def test_states_are_read_for_many_limits_in_order(
    pinned: AccountLimiter, account: Account, round_trips: Callable[[], RoundTrips]
) -> None:
    others = [replace(account, id=str(7105000000 + n)) for n in range(1_200)]
    pinned.penalize(others[700], "archiveChat", 2.0)
    sends = round_trips()
    states = pinned.states([(a, "archiveChat") for a in others])
    assert [s.account for s in states] == [a.key for a in others]
    assert states[700].rate_limited == 1 and states[700].next_permit_in == 2.0
    assert sum(s.rate_limited for s in states) == 1
    assert sends.count <= 3  # a pipeline per 500 limits


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

    def send(self, permit: Permit, late: float, local: float | None = None) -> float:
        """Send on ``permit`` ``late`` seconds after its slot on Redis's clock, this process
        believing it ``local`` seconds late (default: the same)."""
        self.clock.advance(late)
        return self.limiter.keep_distance(
            self.account, "archiveChat", late if local is None else local, permit.slot
        )

    def state(self) -> LimiterState:
        return self.limiter.state(self.account, "archiveChat")


@pytest.fixture
def late_calls(pinned: AccountLimiter, account: Account, clock: PinnedClock) -> LateCalls:
    return LateCalls(clock, pinned, account)


def test_a_call_later_than_its_allowance_pushes_the_later_slots_back(
    late_calls: LateCalls, archiver_env: Env
) -> None:
    """A call going out 50 ms after its slot at 10/s (Redis's clock): the slots after it move
    by the lateness beyond the 5 ms allowance, so the call a second later keeps a second away."""
    permit = late_calls.permit()
    assert permit.wait == 0
    pushed = late_calls.send(permit, 0.05)
    assert pushed == pytest.approx(0.045, abs=1e-6)
    state = late_calls.state()
    assert state.late == 1
    # The idle slot's next one (interval and gap) pushed by 45 ms, counted from now.
    assert state.next_permit_in == pytest.approx(0.1275 + 0.045 - 0.05, abs=1e-6)
    tat_key = late_calls.limiter.keys(late_calls.account, "archiveChat")[0]
    stats = archiver_env.redis.hgetall(f"{tat_key}:stats")
    assert stats["pushed_us"] == "45000"


def test_a_slot_that_had_passed_counts_towards_the_lateness(late_calls: LateCalls) -> None:
    """Handed a slot 30 ms gone (a dispatched run that reached its worker late), sent at once:
    Redis's clock measures 30 ms, whatever this process thinks."""
    permit = late_calls.permit()
    pushed = late_calls.send(permit, 0.03, local=0.01)
    assert pushed == pytest.approx(0.025, abs=1e-6)


def test_a_call_within_its_allowance_moves_nothing_and_costs_no_round_trip(
    late_calls: LateCalls, round_trips: Callable[[], RoundTrips]
) -> None:
    permit = late_calls.permit()
    sends = round_trips()
    assert late_calls.send(permit, 0.004) == 0
    assert sends.count == 0
    state = late_calls.state()
    assert state.late == 0 and state.next_permit_in == pytest.approx(0.1275 - 0.004)


def test_a_call_with_no_slot_moves_nothing(late_calls: LateCalls) -> None:
    """A job with no limit (slot 0) has no later slots to push."""
    assert late_calls.limiter.keep_distance(late_calls.account, "archiveChat", 5.0, 0) == 0
    assert late_calls.state().late == 0


def test_a_slow_permit_alone_pushes_nothing(late_calls: LateCalls) -> None:
    """The permit took 200 ms to come back (a busy Redis) but the call goes on its slot: this
    process's clock suspects lateness, Redis's clock clears it."""
    assert late_calls.send(late_calls.permit(), 0.0, local=0.2) == 0
    assert late_calls.state().late == 0


def test_a_push_is_at_most_one_interval(late_calls: LateCalls) -> None:
    # A worker stalled half a second after its permit.
    pushed = late_calls.send(late_calls.permit(), 0.5)
    assert pushed == pytest.approx(0.1025, abs=1e-6)


def test_a_push_on_a_limit_whose_slot_key_is_gone_starts_from_now(
    late_calls: LateCalls, archiver_env: Env
) -> None:
    permit = late_calls.permit()
    archiver_env.redis.delete(late_calls.limiter.keys(late_calls.account, "archiveChat")[0])
    late_calls.send(permit, 0.05)
    assert late_calls.permit().wait == pytest.approx(0.045)


def test_a_late_run_pushes_the_slots_the_dispatcher_reserves(
    archiver_env: Env, account: Account
) -> None:
    """A slot reserved by a dispatch, sent late: the account's next job is handed out later by
    the push (the dispatcher and the limiter share one TAT key)."""
    services = archiver_env.services
    clock = PinnedClock()
    services.use_clock(clock)
    desk = JobDesk(services, archiver_env.accounts)
    for n in (1, 2):
        desk.put({"provider": "green-api", "account": GREEN_ID, "chat_id": f"7900000000{n}@c.us"})
    [first] = services.jobs.dispatch(10).jobs
    clock.advance(0.05)
    pushed = services.limiter.keep_distance(account, "archiveChat", 0.05, first.slot)
    assert pushed == pytest.approx(0.045)
    clock.advance(0.1275 - 0.05 - 0.02)  # the unpushed slot is within the lead now
    assert services.jobs.dispatch(10).jobs == []
    clock.advance(0.045)
    [second] = services.jobs.dispatch(10).jobs
    assert second.slot == first.slot + 127_500 + 45_000


def test_a_sweeps_listing_call_measures_its_lateness(archiver_env: Env, account: Account) -> None:
    summary = SweepSummary("run", account.provider, account.id, True, time.time())
    calls = ListingCalls(
        archiver_env.services, account, summary, sleep=lambda s: time.sleep(s + 0.03)
    )
    assert calls.call("getChats", lambda: "listed") == "listed"
    assert archiver_env.services.limiter.state(account, "getChats").late == 1
    assert summary.calls["getChats"] == 1
