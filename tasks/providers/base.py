"""What every provider adapter shares: answer tables, the classifier, and one HTTP exchange.

An adapter builds requests; the table (data, walked row by row by the unit tests) decides what
each answer means. Nothing here raises on a provider answer, a network failure or a request that
cannot even be built: every exchange ends in a ``ProviderAnswer`` whose texts are already
redacted (listings raise ``ListingError`` carrying one).

An exception from the HTTP layer never leaves as itself: its text, its arguments or its repr can
carry the token (httpx raises ``UnicodeEncodeError`` holding a whole header value, h11 quotes an
illegal one, a URL holds GREEN-API's token), and an exception escaping the task would land in
the result backend and Flower as it is. ``failed_request`` maps it to an answer by its type:

    timeout                                   -> transient "timeout"
    connection, network or remote protocol    -> transient "connection error"
    a request the account's token or api_url  -> account_unavailable (the account pauses: every
      cannot make (UnicodeError, an illegal       job would fail the same way until its
      header, an invalid URL or scheme)            settings are fixed)
    an answer that cannot be decoded          -> unexpected_response
    anything else                             -> internal_error (a bug of ours: dead-lettered,
                                                 replayable once fixed)

The answer keeps the exception's type name and, for network failures, the operating system's
reason ("Connection refused"), never the exception's own text.

An answer that is account-level carries the redacted excerpt of what the provider said in its
``meaning``: the runner writes that meaning into the paused account's detail, which is what an
operator reads in ``chat-archiver status``. A row marked ``confirm`` is an answer that alone
cannot tell a job's problem from the account's (an undocumented 400: a bad request, or an
instance asleep?): the adapter then reads the account's state the way the provider documents it,
and pauses the account unless that state says it works (see ``ProviderAdapter.confirmed``).
"""

from __future__ import annotations

import logging
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from celery.exceptions import SoftTimeLimitExceeded

from config import Account, ArchiverError, excerpt
from worker.contract.outcomes import (
    ACCOUNT_UNAVAILABLE,
    TRANSIENT,
    UNEXPECTED_RESPONSE,
    Kind,
    Reason,
    Verdict,
)

logger = logging.getLogger("chat_archiver.providers")

INTERNAL_ERROR = Verdict(Kind.PERMANENT, reason=Reason.INTERNAL_ERROR)
# Raised into a request by Celery itself: the runner handles them, they are no provider answer.
PASS_THROUGH: tuple[type[BaseException], ...] = (SoftTimeLimitExceeded,)
# A Retry-After longer than this is not a wait anyone means (and inf would overflow a key).
MAX_RETRY_AFTER = 86400.0


@dataclass(frozen=True)
class Rule:
    """One row of a provider's answer table: HTTP status (a range, inclusive) and, optionally, a
    regular expression searched case-insensitively in the answer's text. ``confirm``: the row's
    verdict holds only if the account's state, read right after, says the account works."""

    statuses: tuple[int, int]
    verdict: Verdict
    meaning: str
    pattern: str | None = None
    confirm: bool = False
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


# Takes (and waits for) a permit of the account's limit for a method; False when none came soon.
Permits = Callable[[str], bool]


@dataclass(frozen=True)
class AccountCheck:
    """What the provider says of the account itself (GREEN-API getStateInstance, Wassenger's
    device record). ``usable`` is None when the state could not be read."""

    usable: bool | None
    state: str = ""  # the provider's words, e.g. "stateInstance sleepMode"; redacted


@dataclass(frozen=True)
class ProviderAnswer:
    verdict: Verdict
    meaning: str  # the table row that matched, or what failed on the network
    status: int | None = None  # None when no HTTP answer came (timeout, connection error)
    excerpt: str = ""  # short and redacted: safe for logs, results and dead letters
    retry_after: float | None = None
    elapsed: float = 0.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (a number or an HTTP date), or None when absent or unreadable;
    at most a day, never infinite or NaN."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = datetime.now(UTC).timestamp() if now is None else now
        seconds = when.timestamp() - current
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def _os_reason(error: BaseException) -> str | None:
    """The operating system's reason behind a network error ("Connection refused"), found in
    the exception's chain: words of the OS, never data of the request."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and isinstance(current.strerror, str):
            return current.strerror
        current = current.__cause__ or current.__context__
    return None


# What the account's token or api_url can make a request raise (chat ids are ASCII digits).
_SETTINGS_ERRORS = (
    UnicodeError,
    httpx.LocalProtocolError,
    httpx.UnsupportedProtocol,
    httpx.InvalidURL,
)


def failed_request(error: Exception, started: float) -> ProviderAnswer:
    """The answer for an exchange that raised instead of answering (see the module docstring):
    decided by the exception's type, keeping none of its text."""
    name = type(error).__name__
    elapsed = time.monotonic() - started
    if isinstance(error, httpx.TimeoutException):
        return ProviderAnswer(TRANSIENT, "timeout", excerpt=name, elapsed=elapsed)
    if isinstance(error, _SETTINGS_ERRORS):
        verdict, meaning = ACCOUNT_UNAVAILABLE, "request impossible with the account's settings"
    elif isinstance(error, httpx.DecodingError):
        verdict, meaning = UNEXPECTED_RESPONSE, "answer could not be decoded"
    elif isinstance(error, httpx.TransportError):
        reason = _os_reason(error)
        note = excerpt(f"{name}: {reason}") if reason else name
        return ProviderAnswer(TRANSIENT, "connection error", excerpt=note, elapsed=elapsed)
    else:
        verdict, meaning = INTERNAL_ERROR, "request failed inside chat-archiver"
    # The record is redacted where it is made (worker/logs.py), traceback included.
    logger.warning("%s: %s (%s)", meaning, name, verdict, exc_info=verdict is INTERNAL_ERROR)
    return ProviderAnswer(verdict, meaning, excerpt=name, elapsed=elapsed)


def parsed(method: str, items: Iterable[Any], started: float) -> Iterator[Any]:
    """The items of a streamed listing; an answer that is not the JSON it should be raises
    ListingError (unexpected_response) instead of the parser's error, whose text quotes the
    answer. Errors of the stream itself pass on to ``listing``."""
    iterator = iter(items)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except (httpx.TransportError, SoftTimeLimitExceeded):  # PASS_THROUGH, and the stream
            raise
        except Exception as error:
            raise ListingError(method, unreadable_answer(error, started)) from None
        yield item


def unreadable_answer(error: Exception, started: float) -> ProviderAnswer:
    """A 2xx listing answer we cannot read (not JSON, not the shape documented)."""
    return ProviderAnswer(
        UNEXPECTED_RESPONSE,
        "listing not in the documented shape",
        status=200,
        excerpt=type(error).__name__,
        elapsed=time.monotonic() - started,
    )


class ProviderAdapter(ABC):
    """Speaks one provider's HTTP API. Subclasses give the tables and build the requests."""

    provider: str
    archive_method: str  # rate-limit names (config/providers.py) of the calls below
    unarchive_method: str
    archived_state_method: str
    account_state_method: str
    archive_rules: tuple[Rule, ...]
    unarchive_rules: tuple[Rule, ...]
    # (HTTP method, route template) of the archive and unarchive calls: what a trace shows of
    # a call instead of its URL, which may hold the token (worker/tracing).
    archive_route: tuple[str, str]
    unarchive_route: tuple[str, str]

    @abstractmethod
    def archive_request(
        self, client: httpx.Client, account: Account, chat_id: str
    ) -> httpx.Request:
        """The HTTP request that archives one chat."""

    @abstractmethod
    def unarchive_request(
        self, client: httpx.Client, account: Account, chat_id: str
    ) -> httpx.Request:
        """The HTTP request that unarchives one chat."""

    @abstractmethod
    def account_state(self, client: httpx.Client, account: Account) -> AccountCheck:
        """The account's state as the provider documents it, for rows marked ``confirm``."""

    @abstractmethod
    def archived_state(self, client: httpx.Client, account: Account, chat_id: str) -> bool | None:
        """Whether the provider shows the chat archived; None when it cannot tell (for an
        account's optional ``verify``: GREEN-API has answered "already archived" for chats
        that were not, green-api/issues #488 and #744)."""

    def answer_text(self, response: httpx.Response) -> str:
        """The part of an answer the table's patterns are matched against."""
        return response.text

    def archive(
        self,
        client: httpx.Client,
        account: Account,
        chat_id: str,
        permit: Permits | None = None,
    ) -> ProviderAnswer:
        """``permit``: asked before any further call the answer needs (an account state read),
        so that call too goes through the account's rate limit."""
        rules = self.archive_rules
        return self._call(client, account, chat_id, self.archive_request, rules, permit)

    def unarchive(
        self,
        client: httpx.Client,
        account: Account,
        chat_id: str,
        permit: Permits | None = None,
    ) -> ProviderAnswer:
        rules = self.unarchive_rules
        return self._call(client, account, chat_id, self.unarchive_request, rules, permit)

    def _call(
        self,
        client: httpx.Client,
        account: Account,
        chat_id: str,
        build: Callable[[httpx.Client, Account, str], httpx.Request],
        rules: tuple[Rule, ...],
        permit: Permits | None = None,
    ) -> ProviderAnswer:
        started = time.monotonic()
        try:
            # Building the request can fail too: httpx encodes headers as it builds them.
            request = build(client, account, chat_id)
        except PASS_THROUGH:
            raise
        except Exception as error:
            return failed_request(error, started)
        try:
            response = client.send(request)
        except PASS_THROUGH:
            raise
        except Exception as error:
            return failed_request(error, started)
        answer, rule = self._classified(response, rules, started)
        if rule.confirm:
            return self.confirmed(client, account, answer, started, permit)
        return answer

    def confirmed(
        self,
        client: httpx.Client,
        account: Account,
        answer: ProviderAnswer,
        started: float,
        permit: Permits | None = None,
    ) -> ProviderAnswer:
        """``answer`` as its row says if the account's state says the account works; an
        account pause naming the state otherwise, and when the state cannot be read (no permit
        for the read soon enough included): a pause costs the account a probe, a wrong dead
        letter costs every job of a sleeping account."""
        if permit is not None and not permit(self.account_state_method):
            check = AccountCheck(None, f"no {self.account_state_method} permit soon enough")
        else:
            check = self.account_state(client, account)
        elapsed = time.monotonic() - started
        if check.usable:
            return replace(answer, elapsed=elapsed)
        shown = f"{answer.meaning}: {answer.excerpt}" if answer.excerpt else answer.meaning
        if check.usable is False:
            meaning = f"{check.state} ({shown})"
        else:
            meaning = f"{shown}; the account's state could not be read ({check.state})"
        return replace(answer, verdict=ACCOUNT_UNAVAILABLE, meaning=meaning, elapsed=elapsed)

    def read_json(
        self, client: httpx.Client, method: str, verb: str, url: str, **options: Any
    ) -> tuple[Any, ProviderAnswer | None]:
        """One small JSON read (a state, a chat): ``(payload, None)`` for a 2xx JSON answer,
        ``(None, answer)`` for anything else, the answer classified by the archive table. Never
        raises but what Celery raises into it."""
        started = time.monotonic()
        try:
            request = client.build_request(verb, url, **options)
            response = client.send(request)
        except PASS_THROUGH:
            raise
        except Exception as error:
            return None, failed_request(error, started)
        if not 200 <= response.status_code < 300:
            return None, self._classified(response, self.archive_rules, started)[0]
        try:
            return response.json(), None
        except (ValueError, RecursionError) as error:
            logger.info("%s: answer not JSON (%s)", method, type(error).__name__)
            return None, unreadable_answer(error, started)

    def build(
        self, client: httpx.Client, method: str, verb: str, url: str, **options: Any
    ) -> httpx.Request:
        """``client.build_request`` for a listing call: a request that cannot be built raises
        ListingError, as an answer would, instead of an exception quoting the token."""
        started = time.monotonic()
        try:
            return client.build_request(verb, url, **options)
        except PASS_THROUGH:
            raise
        except Exception as error:
            raise ListingError(method, failed_request(error, started)) from None

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
        except PASS_THROUGH:
            raise
        except Exception as error:
            raise ListingError(method, failed_request(error, started)) from None
        try:
            if not 200 <= response.status_code < 300:
                response.read()
                answer = self._classified(response, self.archive_rules, started)[0]
                raise ListingError(method, answer)
            yield response
        except httpx.TransportError as error:
            answer = failed_request(error, started)
            if answer.verdict is TRANSIENT:
                answer = ProviderAnswer(
                    TRANSIENT, "stream broken", excerpt=answer.excerpt, elapsed=answer.elapsed
                )
            raise ListingError(method, answer) from None
        finally:
            response.close()

    def exchange(
        self, client: httpx.Client, request: httpx.Request, rules: tuple[Rule, ...]
    ) -> ProviderAnswer:
        """Send one request and classify its answer by ``rules`` (no state is confirmed)."""
        started = time.monotonic()
        try:
            response = client.send(request)
        except PASS_THROUGH:
            raise
        except Exception as error:
            return failed_request(error, started)
        return self._classified(response, rules, started)[0]

    def _classified(
        self, response: httpx.Response, rules: tuple[Rule, ...], started: float
    ) -> tuple[ProviderAnswer, Rule]:
        rule = classify(rules, response.status_code, self.answer_text(response))
        shown = excerpt(response.text)
        meaning = rule.meaning
        if rule.verdict.kind is Kind.ACCOUNT and shown:
            # What the provider said goes into the paused account's detail (redacted).
            meaning = f"{meaning}: {shown}"
        answer = ProviderAnswer(
            rule.verdict,
            meaning=meaning,
            status=response.status_code,
            excerpt=shown,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            elapsed=time.monotonic() - started,
        )
        return answer, rule


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


class ListingError(ArchiverError):
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
