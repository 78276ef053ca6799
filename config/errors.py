"""Configuration errors: one line per problem, naming the setting or account and the field.

Every text a person wrote (a key, an id, a path) is shown through ``show``: escaped to ASCII and
cut short, so a value holding a newline, a terminal escape or a megabyte cannot turn an error
into several lines or a wall of text. Secrets are never passed to either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

SHOW_LIMIT = 60


def show(value: object, limit: int = SHOW_LIMIT) -> str:
    """A value a person wrote, quoted for an error message: ASCII only (``ascii()`` escapes
    control characters, non-ASCII and lone surrogates), at most about ``limit`` characters."""
    if not isinstance(value, str):
        return type(value).__name__
    if len(value) > limit:
        return ascii(value[:limit]) + "..."
    return ascii(value)


def one_line(text: str) -> str:
    """``text`` with every character that could break a line or a terminal escaped."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


class ArchiverError(Exception):
    """The base of every error chat-archiver raises on purpose. An exception that is not one is
    a bug: the CLI shows it as such, never as a person's mistake."""


class UserError(ArchiverError):
    """Something a person can put right (a setting, the accounts file, a job, an option), told
    in one line naming what is wrong. The CLI prints it as ``Error: <line>``."""


class ConfigError(UserError):
    """A setting or the accounts file is wrong.

    ``problems`` holds one line per problem; ``str(error)`` is those lines joined by newlines.
    The accounts file stops at its first problem (one line); settings report every wrong
    variable at once (one line each).
    """

    def __init__(self, *problems: str) -> None:
        lines = tuple(one_line(problem) for problem in problems) or ("configuration error",)
        super().__init__("\n".join(lines))
        self.problems = lines

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from the lines, not from the joined text (whose newlines one_line would escape).
        return (type(self), self.problems)


HIDDEN_KEY = "(a key shaped like a token, not shown)"


def location(parts: Sequence[Any], hide: Callable[[str], bool] | None = None) -> str:
    """A pydantic error location as dotted keys, each key a person wrote shown safely; keys
    ``hide`` says may be a secret (a token pasted as a key) are not shown at all."""
    shown = []
    for part in parts:
        if part == "__root__":
            continue
        text = str(part)
        if hide is not None and hide(text):
            shown.append(HIDDEN_KEY)
            continue
        # Plain keys read as written; anything else (spaces, dots, control characters) quoted.
        plain = text.replace("_", "a").replace("-", "a").isalnum() and text.isascii()
        shown.append(text if plain and len(text) <= SHOW_LIMIT else show(text))
    return ".".join(shown)


def first_pydantic_error(
    errors: Sequence[Any], prefix: str = "", hide: Callable[[str], bool] | None = None
) -> str:
    """One line from a pydantic ``ValidationError.errors()`` list: the first error, located."""
    error = errors[0]
    where_in = location(error.get("loc", ()), hide)
    message = str(error.get("msg", "invalid value"))
    # pydantic prefixes messages raised from our validators with "Value error, ".
    message = message.removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"{prefix}{where_in}: " if where_in else prefix
    return f"{where}{message}{more}"
