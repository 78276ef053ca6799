"""A sweep's listing calls: each behind a permit of the account's shared limiter (GREEN-API
allows about 1 listing call per second), transient failures and 429s retried with the same
backoff as archive calls. A sweep is one long sequential task, so it waits for its permits inline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt

from config import Account
from tasks.providers import ListingError, transient_backoff
from tasks.sweep.policy import SweepSummary
from worker.contract.outcomes import Kind
from worker.services import Services

# A listing call waits inline for its permit; a longer pause (the provider's 429) is slept in
# steps of this size.
LISTING_MAX_WAIT = 60.0

T = TypeVar("T")


class ListingCalls:
    def __init__(
        self,
        services: Services,
        account: Account,
        summary: SweepSummary,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.services = services
        self.account = account
        self.summary = summary
        self.sleep = sleep

    def _permit(self, method: str) -> None:
        limiter = self.services.limiter
        while True:
            permit = limiter.acquire(self.account, method, LISTING_MAX_WAIT)
            if permit.granted:
                # From when Redis's answer came: it read its clock before, so never early.
                deadline = time.monotonic() + permit.wait
                self.sleep(permit.wait)
                late = time.monotonic() - deadline
                limiter.keep_distance(self.account, method, late, permit.slot)
                self.summary.calls[method] += 1
                return
            self.sleep(min(permit.wait, LISTING_MAX_WAIT))

    def call(self, method: str, call: Callable[[], T]) -> T:
        def retryable(error: BaseException) -> bool:
            if not isinstance(error, ListingError):
                return False
            if error.answer.verdict.kind is Kind.RATE_LIMITED:
                self.services.limiter.penalize(self.account, method, error.answer.retry_after)
                return True
            return error.answer.verdict.kind is Kind.TRANSIENT

        settings = self.services.settings
        retrying = Retrying(
            stop=stop_after_attempt(settings.transient_attempts),
            wait=transient_backoff(settings),
            retry=retry_if_exception(retryable),
            sleep=self.sleep,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                self._permit(method)
                return call()
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def stream(self, method: str, call: Callable[[], Iterator[T]]) -> Iterator[T]:
        """A streamed listing: its opening (status, first item) is retried like any call; once
        items flow, a broken stream fails the sweep (the next tick starts over)."""
        first, rest = self.call(method, lambda: _prime(call()))
        yield from first
        yield from rest


def _prime(iterator: Iterator[T]) -> tuple[list[T], Iterator[T]]:
    """Pull the first item now, so an error answered at the start surfaces inside the retry."""
    try:
        return [next(iterator)], iterator
    except StopIteration:
        return [], iter(())
