"""Settings from the environment (``ARCHIVER_*``), validated once.

Every wrong variable is reported at once, one line each, under the name a person sets
(``ARCHIVER_VISIBILITY_TIMEOUT``): changing seven variables should not take seven restarts to
find out which of them are refused. Checks that relate several variables (time limits under the
visibility timeout, HTTP timeouts within the task time limit) run once each variable is valid,
and report every rule broken, one line each too.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.errors import ConfigError, location, show

ENV_PREFIX = "ARCHIVER_"


class SettingsProblems(ValueError):
    """Every cross-variable rule the settings break, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Settings(BaseSettings):
    # allow_inf_nan: "inf" or "nan" in a timeout would pass a "> 0" check (or fail every one).
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, allow_inf_nan=False
    )

    broker_url: str = "redis://localhost:6379/0"
    # Limiter, dead letters, locks and counters. Defaults to the broker's Redis.
    redis_url: str | None = None
    accounts_file: Path = Path("accounts.toml")
    # Every key we write in Redis starts with this, so one Redis can hold several deployments.
    key_prefix: str = "chat-archiver"
    # The intake queue producers publish to (workers' routers read it; their Celery consumers read
    # "{queue}.ready").
    queue: str = "archive"

    http_connect_timeout: float = Field(5.0, gt=0)
    http_read_timeout: float = Field(20.0, gt=0)

    # Tenacity, inside the task, for transient errors: it holds a worker slot while it sleeps,
    # so it stays short (3 attempts, waits of at most a few seconds).
    transient_attempts: int = Field(3, ge=1, le=10)
    transient_wait_max: float = Field(4.0, ge=0)
    # Then a countdown in the job store, doubling from retry_countdown up to retry_countdown_max.
    retry_budget: int = Field(5, ge=0)
    retry_countdown: float = Field(30.0, ge=0)
    retry_countdown_max: float = Field(600.0, ge=0)

    # kombu gives a message back to the queue when it has not been acknowledged within this many
    # seconds. Delayed work waits in the job store, not in worker memory, so this only has to
    # outlast one run of one job; a killed node's jobs come back through their leases (below).
    visibility_timeout: int = Field(3600, gt=0)
    task_time_limit: int = Field(300, gt=0)
    # A sweep lists an account at the provider's listing rate (about 1 call/s): minutes.
    sweep_time_limit: int = Field(1800, gt=0)
    result_expires: int = Field(86400, gt=0)
    # A job whose runs began this many times without ending (it kills its worker) is
    # dead-lettered worker_lost.
    max_deliveries: int = Field(3, ge=1)
    # How long a chat's "job pending" mark outlives a crash that skipped its release.
    pending_ttl: int = Field(86400, gt=0)

    # An account that answers "unauthorized"/"unavailable"/"quota" is paused
    # (worker/stores/circuit.py): probed after the cooldown, doubling up to the maximum; its jobs
    # wait at most max_pause, then go to the dead letters with the account's reason.
    circuit_cooldown: float = Field(30.0, gt=0)
    circuit_cooldown_max: float = Field(600.0, gt=0)
    circuit_max_pause: float = Field(86400.0, gt=0)

    # The limiter spaces calls this fraction wider than the provider's limit: the window
    # semantics are undocumented and a request reaches the provider some ms after its permit.
    # A fifth of the slack it leaves (25 ms a second) bounds how late a call may go before the
    # account's later slots are pushed back; the rest absorbs jitter after the send
    # (worker/stores/limiter.py). Its ceiling: 1 / 1.025 = 97.6% of the limit.
    limiter_margin: float = Field(0.025, ge=0, lt=0.5)
    # A permit further away than this is not waited for in the worker slot: the job waits in the
    # job store instead (dispatched jobs come with a permit at most DISPATCH_LEAD away).
    limiter_max_wait: float = Field(0.1, ge=0, le=5)

    # The job store (worker/stores/jobs.py). A running job's lease is renewed by its node every
    # third of this; a job whose lease runs out (its node was killed) runs again, so a killed
    # node's jobs are back within lease_timeout + janitor_interval.
    lease_timeout: float = Field(30.0, ge=3, le=600)
    janitor_interval: float = Field(5.0, gt=0, le=60)
    # Jobs for an account no worker's accounts file names wait this long for one that does (an
    # account being added), then go to the dead letters as unknown_account.
    unknown_account_grace: float = Field(3600.0, ge=0)
    # How often a worker looks at the accounts file for changes (reloaded without a restart).
    accounts_reload_interval: float = Field(10.0, gt=0, le=60)
    # The largest message the intake accepts, checked before anything is decoded.
    max_message_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # How long a worker keeps retrying Redis commands while Redis restarts (a job that has its
    # provider's answer waits to record it rather than losing it).
    redis_outage_grace: float = Field(60.0, ge=0, le=3600)

    log_format: Literal["text", "json"] = "text"

    @field_validator("broker_url", "redis_url")
    @classmethod
    def _a_redis_url(cls, value: str | None) -> str | None:
        problem = None if value is None else redis_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("queue", "key_prefix")
    @classmethod
    def _a_name(cls, value: str) -> str:
        # An empty or spaced name is accepted by Redis and kombu alike, and sends jobs where no
        # worker with the default looks.
        if not value or not value.isprintable() or any(char.isspace() for char in value):
            raise ValueError("must be a non-empty name without spaces or control characters")
        return value

    @property
    def state_url(self) -> str:
        return self.redis_url or self.broker_url

    @model_validator(mode="after")
    def _variables_agree(self) -> Settings:
        problems = cross_variable_problems(self)
        if problems:
            raise SettingsProblems(problems)
        return self


def variable(name: str) -> str:
    """The environment variable that sets the field ``name``."""
    return f"{ENV_PREFIX}{name.upper()}"


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` is no Redis URL redis-py and kombu can use, or None. Checked here, once, so a
    wrong URL is one line at start rather than a traceback from the first connection; the
    message never repeats the URL, which may hold a password."""
    if not url.isprintable() or any(char.isspace() for char in url):
        return "holds spaces or control characters"
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix") or "://" not in url:
        return "must start with redis://, rediss:// or unix://"
    if parts.scheme == "unix":
        return None if parts.path else "names no socket path (unix:///path/to/redis.sock)"
    try:
        parts.port  # noqa: B018 - urlsplit checks the port when it is read
    except ValueError:
        return (
            "its port is not a number from 0 to 65535 (a password holding / ? # or @ must be "
            "percent-encoded)"
        )
    if not parts.hostname:
        return "names no host (redis://host:6379/0)"
    database = parts.path.removeprefix("/")
    if database and not (database.isascii() and database.isdigit()):
        return "its database (the path after the host) is not a number"
    return None


def cross_variable_problems(settings: Settings) -> list[str]:
    """Every rule between variables the settings break, one line each, named by variable."""
    problems = []
    # kombu would give a running job's message back while it still runs (harmless: the second
    # delivery finds the job's lease held and ends quietly, but it costs a slot). Countdowns wait
    # in the job store, not in worker memory: the visibility timeout does not bound them.
    for name in ("task_time_limit", "sweep_time_limit"):
        if getattr(settings, name) >= settings.visibility_timeout:
            problems.append(
                f"{variable(name)}={getattr(settings, name):g} must be less than "
                f"{variable('visibility_timeout')}={settings.visibility_timeout}"
            )
    # Tenacity's attempts (each up to both HTTP timeouts) and its waits must fit in the task
    # time limit, or the limit, not the HTTP client, ends slow calls.
    attempts = settings.transient_attempts
    worst_call = attempts * (settings.http_connect_timeout + settings.http_read_timeout)
    worst = worst_call + (attempts - 1) * settings.transient_wait_max
    if worst > 0.9 * settings.task_time_limit:
        problems.append(
            f"{variable('task_time_limit')}={settings.task_time_limit} is too short for "
            f"{attempts} attempts with HTTP timeouts of "
            f"{settings.http_connect_timeout:g}+{settings.http_read_timeout:g}s "
            f"(needs {worst / 0.9:.0f})"
        )
    if settings.retry_countdown > settings.retry_countdown_max:
        problems.append(
            f"{variable('retry_countdown')}={settings.retry_countdown:g} must not exceed "
            f"{variable('retry_countdown_max')}={settings.retry_countdown_max:g}"
        )
    return problems


def _misspelt(environ: Mapping[str, str]) -> list[str]:
    """ARCHIVER_* variables that are no setting but nearly spell one: a typo would otherwise
    leave the default in force without a word. Names far from every setting are left alone
    (another tool may own them)."""
    known = {variable(name) for name in Settings.model_fields}
    problems = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            if close:
                problems.append(f"{location([name])}: not a setting (did you mean {close[0]}?)")
    return problems


def _describe(error: Mapping[str, Any]) -> list[str]:
    """The lines one pydantic error stands for, each naming the variable."""
    context = error.get("ctx") or {}
    if isinstance(context.get("error"), SettingsProblems):
        return list(context["error"].problems)
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    parts = [part for part in error.get("loc", ()) if part != "__root__"]
    if not parts:
        return [message]
    name = variable(location(parts))
    given = error.get("input")
    # The value given helps unless it may hold a password (a URL's user:password@).
    if isinstance(given, str) and not name.endswith("_URL"):
        return [f"{name}: {message} (got {show(given)})"]
    return [f"{name}: {message}"]


def load_settings() -> Settings:
    """The settings, or ConfigError with one line per wrong variable."""
    problems = _misspelt(os.environ)
    try:
        settings = Settings()
    except ValidationError as error:
        for line in error.errors():
            problems.extend(_describe(line))
        raise ConfigError(*problems) from None
    if problems:
        raise ConfigError(*problems)
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once. Tests that change the environment call cache_clear()."""
    return load_settings()
