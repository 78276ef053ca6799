"""What every provider adapter shares: answer tables, the classifier, and one HTTP exchange.

An adapter builds requests; the table (data, walked row by row by the unit tests) decides what
each answer means. Nothing here raises on a provider answer or a network failure: every exchange
ends in a ``ProviderAnswer`` whose texts are already redacted.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from config import Account, excerpt
from worker.outcomes import TRANSIENT, Verdict


@dataclass(frozen=True)
class Rule:
    """One row of a provider's answer table: HTTP status (a range, inclusive) and, optionally, a
    regular expression searched case-insensitively in the answer's text."""

    statuses: tuple[int, int]
    verdict: Verdict
    meaning: str
    pattern: str | None = None
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.pattern is not None:
            object.__setattr__(self, "_regex", re.compile(self.pattern, re.IGNORECASE))

    def matches(self, status: int, text: str) -> bool:
        low, high = self.statuses
        if not low <= status <= high:
            return False
        return self._regex is None or self._regex.search(text) is not None


def status(code: int) -> tuple[int, int]:
    return (code, code)


def statuses(low: int, high: int) -> tuple[int, int]:
    return (low, high)


ANY_STATUS = statuses(100, 599)


def classify(rules: tuple[Rule, ...], status_code: int, text: str) -> Rule:
    """The first row that matches. Tables end with a catch-all row, so there always is one."""
    for rule in rules:
        if rule.matches(status_code, text):
            return rule
    raise LookupError(f"no rule for HTTP {status_code}: the table lacks its catch-all row")


@dataclass(frozen=True)
class ProviderAnswer:
    verdict: Verdict
    meaning: str  # the table row that matched, or what failed on the network
    status: int | None = None  # None when no HTTP answer came (timeout, connection error)
    excerpt: str = ""  # short and redacted: safe for logs, results and dead letters
    retry_after: float | None = None
    elapsed: float = 0.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (a number or an HTTP date), or None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


class ProviderAdapter(ABC):
    """Speaks one provider's HTTP API. Subclasses give the table and build the requests."""

    provider: str
    archive_method: str
    archive_rules: tuple[Rule, ...]

    @abstractmethod
    def archive_request(
        self, client: httpx.Client, account: Account, chat_id: str
    ) -> httpx.Request:
        """The HTTP request that archives one chat."""

    def answer_text(self, response: httpx.Response) -> str:
        """The part of an answer the table's patterns are matched against."""
        return response.text

    def archive(self, client: httpx.Client, account: Account, chat_id: str) -> ProviderAnswer:
        request = self.archive_request(client, account, chat_id)
        return self.exchange(client, request, self.archive_rules)

    @contextmanager
    def listing(
        self, client: httpx.Client, method: str, request: httpx.Request
    ) -> Iterator[httpx.Response]:
        """Send a listing request and yield its streamed 2xx response; anything else raises
        ListingError with the answer classified by the provider's table (its rows for account
        problems, 429 and 5xx hold for every method)."""
        started = time.monotonic()
        try:
            response = client.send(request, stream=True)
        except httpx.TransportError as error:
            meaning = "timeout" if isinstance(error, httpx.TimeoutException) else "connection error"
            raise ListingError(
                method,
                ProviderAnswer(
                    TRANSIENT,
                    meaning,
                    excerpt=excerpt(f"{type(error).__name__}: {error}"),
                    elapsed=time.monotonic() - started,
                ),
            ) from None
        try:
            if not 200 <= response.status_code < 300:
                response.read()
                raise ListingError(method, self._answer(response, self.archive_rules, started))
            yield response
        except httpx.TransportError as error:
            raise ListingError(
                method,
                ProviderAnswer(
                    TRANSIENT,
                    "stream broken",
                    excerpt=excerpt(f"{type(error).__name__}: {error}"),
                    elapsed=time.monotonic() - started,
                ),
            ) from None
        finally:
            response.close()

    def exchange(
        self, client: httpx.Client, request: httpx.Request, rules: tuple[Rule, ...]
    ) -> ProviderAnswer:
        started = time.monotonic()
        try:
            response = client.send(request)
        except httpx.TimeoutException as error:
            # Never str(error) alone from here on without redact(): some carry the URL.
            return ProviderAnswer(
                TRANSIENT,
                meaning="timeout",
                excerpt=excerpt(f"{type(error).__name__}: {error}"),
                elapsed=time.monotonic() - started,
            )
        except httpx.TransportError as error:
            return ProviderAnswer(
                TRANSIENT,
                meaning="connection error",
                excerpt=excerpt(f"{type(error).__name__}: {error}"),
                elapsed=time.monotonic() - started,
            )
        return self._answer(response, rules, started)

    def _answer(
        self, response: httpx.Response, rules: tuple[Rule, ...], started: float
    ) -> ProviderAnswer:
        rule = classify(rules, response.status_code, self.answer_text(response))
        return ProviderAnswer(
            rule.verdict,
            meaning=rule.meaning,
            status=response.status_code,
            excerpt=excerpt(response.text),
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            elapsed=time.monotonic() - started,
        )


# -- listings, for sweeps ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatInfo:
    """One chat as a listing shows it, in the same shape for both providers."""

    id: str
    kind: str  # "user" | "group" | "channel"
    archived: bool
    last_activity: float | None = None  # unix time of the newest message, when the listing says
    unread: int | None = None  # None: the provider does not say
    status: str | None = None  # Wassenger's platform status
    labels: tuple[str, ...] = ()


def kind_of(chat_id: str) -> str:
    """What a chat is, from its id (the same in both APIs and never ambiguous)."""
    if chat_id.endswith("@g.us"):
        return "group"
    if chat_id.endswith("@newsletter"):
        return "channel"
    return "user"


class ListingError(Exception):
    """A listing call did not answer 2xx (or failed on the network): the answer says why."""

    def __init__(self, method: str, answer: ProviderAnswer) -> None:
        status = f"HTTP {answer.status}" if answer.status is not None else "no answer"
        super().__init__(f"{method}: {status}: {answer.meaning}")
        self.method = method
        self.answer = answer


class ResponseReader:
    """A file-like view of a streamed httpx response, for ijson's incremental parser."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.iter_bytes()
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                break
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data
