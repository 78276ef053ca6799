"""What every command shares: one-line errors, settings and Redis checks, output helpers."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import kombu.exceptions
import redis
from rich.console import Console

from config import ConfigError, get_settings
from worker.jobs import InvalidJob
from worker.logs import install_redaction
from worker.state import safe_url

F = TypeVar("F", bound=Callable[..., Any])

# soft_wrap: a line of text stays one line (scripts read them); tables still fit the width,
# which for a pipe or a log file (80 columns by default) would crush them.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)
for _console in (console, err_console):
    if not _console.is_terminal:
        _console.width = max(_console.width, 160)


def install_cli_logging() -> None:
    install_redaction()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def one_line_errors(command: F) -> F:
    """Turn the errors a person can fix into ``Error: <one line>`` and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ConfigError, InvalidJob) as error:
            raise click.ClickException(str(error)) from None
        except redis.ConnectionError as error:
            url = safe_url(get_settings().state_url)
            raise click.ClickException(f"cannot reach Redis at {url}: {error}") from None
        except kombu.exceptions.OperationalError as error:
            url = safe_url(get_settings().broker_url)
            raise click.ClickException(f"cannot reach the broker at {url}: {error}") from None

    return wrapper  # type: ignore[return-value]


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
