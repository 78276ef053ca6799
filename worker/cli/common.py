"""What every command shares: one-line errors, settings and Redis checks, output helpers.

Exit codes, the same for every command (README, "Exit codes"):

    0  done
    1  understood, but not everything succeeded or something needs a person: rows or entries
       refused, nothing found under a given id, Redis unreachable, ``status`` unhealthy
    2  not understood: an option or argument is wrong (unknown value, malformed filter, an id
       prefix too short or ambiguous, a file that cannot be opened or read), or the
       configuration is (an ARCHIVER_* variable, the accounts file)

Data never reaches the terminal as rich markup: a chat id or a file's field may hold ``[/]``.
Everything printed from data goes through ``say`` (no markup, no highlighting) or ``cell``
(a ``Text``, which rich never parses), after ``printable``: control characters (a newline in a
field name must not forge a ``line N:`` line), lone surrogates (which no UTF-8 terminal accepts)
and bidirectional overrides are written as escapes, and a value too long for one line is cut
with the count of what was left out.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import kombu.exceptions
import redis
from rich.console import Console
from rich.text import Text

from config import ConfigError, UserError, get_settings
from worker.logs import install_redaction
from worker.stores.client import safe_url

F = TypeVar("F", bound=Callable[..., Any])

# soft_wrap: a line of text stays one line (scripts read them); tables still fit the width,
# which for a pipe or a log file (80 columns by default) would crush them.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
for _console in (console, err_console):
    if not _console.is_terminal:
        _console.width = max(_console.width, 160)

# C0 and C1 controls, DEL, line and paragraph separators, bidirectional embeddings, overrides
# and isolates (they reorder what follows on screen), and surrogates (only lone ones survive
# into a str, and no UTF-8 stream accepts them).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
VALUE_LIMIT = 300


def printable(text: object, limit: int | None = VALUE_LIMIT) -> str:
    """One line fit for a terminal or a log: what ``_UNPRINTABLE`` matches written as its Python
    escape (``\\n``, ``\\x00``, ``\\ud800``), then cut at ``limit`` characters, saying how many
    were left out."""
    value = text if isinstance(text, str) else str(text)
    if limit is not None and len(value) > limit:
        rest = len(value) - limit
        value = _UNPRINTABLE.sub(_escape, value[:limit])
        return f"{value}… ({rest} more characters)"
    return _UNPRINTABLE.sub(_escape, value)


def _escape(match: re.Match[str]) -> str:
    return repr(match.group(0))[1:-1]


def say(text: object, *, err: bool = False, limit: int | None = None) -> None:
    """Print one line of plain text: no markup, no highlighting, no emoji codes."""
    (err_console if err else console).out(printable(text, limit), highlight=False)


def cell(value: object, limit: int | None = VALUE_LIMIT) -> Text:
    """A table cell from data: a Text (never parsed as markup), printable, capped."""
    return Text("-" if value is None or value == "" else printable(value, limit))


class UsageProblem(click.ClickException):
    """A wrong option, argument or configuration: ``Error: <one line>``, exit code 2.

    click's own UsageError prints the usage text and a hint before its error line; ours stays
    one line, naming the option and the problem."""

    exit_code = 2

    def __init__(self, message: str, *more: str) -> None:
        # Several problems at once (every wrong setting): one ``Error:`` line each.
        lines = [printable(line, limit=1000) for line in (message, *more)]
        super().__init__("\nError: ".join(lines))


class OneLineCommand(click.Command):
    """A command whose usage errors (a missing argument, an unknown option, a value click's
    types refuse) are one line, like ours: click would print the usage text and a hint first."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            raise UsageProblem(error.format_message()) from None


class OneLineGroup(click.Group):
    """A group whose usage errors, and its commands', are one line (see OneLineCommand)."""

    command_class = OneLineCommand

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            raise UsageProblem(error.format_message()) from None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as error:
            raise UsageProblem(error.format_message()) from None


def fail(message: str) -> click.ClickException:
    """``Error: <one line>``, exit code 1 (see the module docstring)."""
    return click.ClickException(printable(message, limit=1000))


def install_cli_logging() -> None:
    install_redaction()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def one_line_errors(command: F) -> F:
    """Turn the errors a person can fix into ``Error: <one line>``: a wrong configuration exits
    2, any other UserError (an invalid job, an unknown account) and an unreachable Redis or
    broker exit 1. Anything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as error:
            raise UsageProblem(*error.problems) from None
        except UserError as error:  # an invalid job, an unknown account...: not a bug of ours
            raise fail(str(error)) from None
        except (redis.ConnectionError, redis.TimeoutError) as error:
            url = safe_url(get_settings().state_url)
            raise fail(f"cannot reach Redis at {url}: {error}") from None
        except redis.RedisError as error:
            url = safe_url(get_settings().state_url)
            raise fail(f"Redis at {url} answered: {error}") from None
        except kombu.exceptions.OperationalError as error:
            url = safe_url(get_settings().broker_url)
            raise fail(f"cannot reach the broker at {url}: {error}") from None

    return wrapper  # type: ignore[return-value]


def when(timestamp: float | None) -> str:
    if not timestamp or not isinstance(timestamp, int | float):
        return "-"
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # a stored time out of any calendar
        return str(timestamp)
