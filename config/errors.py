"""Configuration errors: always one line that names the setting or account and the field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ConfigError(Exception):
    """A setting or the accounts file is wrong. ``str(error)`` is one line, fit for a terminal."""


def first_pydantic_error(errors: Sequence[Any], prefix: str = "") -> str:
    """One line from a pydantic ``ValidationError.errors()`` list: the first error, located."""
    error = errors[0]
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
    message = str(error.get("msg", "invalid value"))
    # pydantic prefixes messages raised from our validators with "Value error, ".
    message = message.removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"{prefix}{location}: " if location else prefix
    return f"{where}{message}{more}"
