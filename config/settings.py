"""Settings from the environment (``ARCHIVER_*``), validated once.

Every wrong variable is reported at once, one line each, under the name a person sets
(``ARCHIVER_TASK_TIME_LIMIT``): changing seven variables should not take seven restarts to
find out which of them are refused. Checks that relate several variables (HTTP timeouts within
the task time limit, a countdown under its cap) run once each variable is valid,
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

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.errors import ConfigError, location, show
from config.sentinel import is_sentinel_url, sentinel_url_problem

ENV_PREFIX = "ARCHIVER_"
# ARCHIVER_WORKER_MAX_MEMORY_PER_CHILD's bounds, in KiB (0 turns it off).
MIN_MEMORY_PER_CHILD = 100_000
MAX_MEMORY_PER_CHILD = 16 * 1024 * 1024


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

    # The Celery broker: redis://, rediss://, unix://, or kombu's sentinel:// form.
    broker_url: str = "redis://localhost:6379/0"
    # Our state (job store, limiter, dead letters, results): another Redis, or the broker's.
    redis_url: str | None = None
    # With a sentinel:// URL: the master's name in the Sentinels' "sentinel monitor <name> ...".
    sentinel_master: str | None = None
    # The Sentinels' own password, if they have one (the URL's password is the Redis servers').
    sentinel_password: SecretStr | None = None
    # Replicas that must have an enqueue before it answers (Redis WAIT, 2 s): unset, 1 with a
    # sentinel:// state URL, else 0 (off). A master with no replica needs 0.
    enqueue_replicas: int | None = Field(None, ge=0, le=16)
    # The accounts file (TOML; see config/accounts.example.toml).
    accounts_file: Path = Path("accounts.toml")
    # Every key we write in Redis starts with this, so one Redis can hold several deployments.
    key_prefix: str = "chat-archiver"
    # The intake queue raw Celery producers publish to (each node's router reads it).
    queue: str = "archive"

    # Seconds to connect to a provider.
    http_connect_timeout: float = Field(5.0, gt=0)
    # Seconds to wait for a provider's answer.
    http_read_timeout: float = Field(20.0, gt=0)

    # Tenacity's attempts inside one run, for transient errors (it holds a worker slot).
    transient_attempts: int = Field(3, ge=1, le=10)
    # Tenacity's longest wait between attempts (exponential with jitter, from 0.5 s).
    transient_wait_max: float = Field(4.0, ge=0)
    # Runs again after tenacity gives up, each after a countdown in the job store, before the
    # job is dead-lettered retries_exhausted.
    retry_budget: int = Field(5, ge=0)
    # The first such countdown in seconds, doubled each time.
    retry_countdown: float = Field(30.0, ge=0)
    # The longest countdown; it also caps a 429's Retry-After wait.
    retry_countdown_max: float = Field(600.0, ge=0)

    # A run's hard time limit in seconds; the soft limit is a tenth earlier (at most 30 s).
    task_time_limit: int = Field(300, gt=0)
    # A sweep's time limit: it lists at the provider's listing rate (about 1 call/s), so minutes.
    sweep_time_limit: int = Field(1800, gt=0)
    # How long a sweep run's record (what it enqueued, held and archived) is kept, for
    # `chat-archiver unarchive --sweep`.
    sweep_run_retention: int = Field(30 * 86400, ge=3600, le=3650 * 86400)
    # How long a job's result stays readable (AsyncResult, celery-task-meta-<id>).
    result_expires: int = Field(86400, gt=0)
    # A job whose runs began this many times without ending (it kills its worker) is
    # dead-lettered worker_lost.
    max_deliveries: int = Field(3, ge=1)
    # How long a chat's "job pending" mark outlives a crash that skipped its release.
    pending_ttl: int = Field(86400, gt=0)

    # A paused account (it answered unauthorized, unavailable or over quota) is probed after
    # this many seconds.
    circuit_cooldown: float = Field(30.0, gt=0)
    # The cooldown doubles after each failed probe, up to this.
    circuit_cooldown_max: float = Field(600.0, gt=0)
    # A job parked behind a paused account longer than this is dead-lettered with the account's
    # reason.
    circuit_max_pause: float = Field(86400.0, gt=0)

    # The limiter spaces calls this fraction wider than the provider's limit (ceiling: 97.6% of
    # it at 0.025); a fifth of the slack it leaves bounds how late a call may go before the
    # account's later slots are pushed back (docs/design.md, Rate limits).
    limiter_margin: float = Field(0.025, ge=0, lt=0.5)
    # A permit further away than this is not waited for in a worker slot: the job waits its
    # turn in the job store.
    limiter_max_wait: float = Field(0.1, ge=0, le=5)

    # A dispatched or running job's lease, renewed by its node every third of it: a killed
    # node's jobs run again once it runs out.
    lease_timeout: float = Field(30.0, ge=3, le=600)
    # How often one node looks for expired leases, dead nodes, unknown accounts and jobs parked
    # too long.
    janitor_interval: float = Field(5.0, gt=0, le=60)
    # Jobs for an account no worker's accounts file names wait this long for one that does,
    # then are dead-lettered unknown_account.
    unknown_account_grace: float = Field(3600.0, ge=0)
    # How often a worker looks at the accounts file for changes (reloaded without a restart).
    accounts_reload_interval: float = Field(10.0, gt=0, le=60)
    # The largest intake message accepted, checked before anything is decoded; a larger one is
    # dead-lettered invalid_request.
    max_message_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # How long a worker retries Redis commands while Redis restarts or refuses writes, so a run
    # that has its provider's answer records it.
    redis_outage_grace: float = Field(60.0, ge=0, le=3600)

    # A pool process whose peak resident memory (KiB) passes this is replaced once its job
    # ends (Celery's worker_max_memory_per_child); 0 never. A backstop for a leak.
    worker_max_memory_per_child: int = Field(200_000, ge=0, le=MAX_MEMORY_PER_CHILD)

    # "json": one JSON object per log line (or `celery -A worker worker --log-format json`).
    log_format: Literal["text", "json"] = "text"
    # OpenTelemetry traces of each job across its hops (worker/tracing): off (nothing of
    # OpenTelemetry is imported), otlp (OTLP over HTTP, configured by the SDK's own OTEL_*
    # variables) or console (each span printed on stdout). Needs the `tracing` extra.
    tracing: Literal["off", "otlp", "console"] = "off"

    @field_validator("broker_url", "redis_url")
    @classmethod
    def _a_redis_url(cls, value: str | None) -> str | None:
        problem = None if value is None else redis_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("worker_max_memory_per_child")
    @classmethod
    def _a_sane_recycle_limit(cls, value: int) -> int:
        # A pool process starts close to this size: a lower limit would replace it after
        # nearly every job, paying its start-up each time.
        if 0 < value < MIN_MEMORY_PER_CHILD:
            raise ValueError(
                f"must be 0 (never replace a pool process) or at least {MIN_MEMORY_PER_CHILD} "
                "(KiB): a pool process starts close to that size"
            )
        return value

    @field_validator("queue", "key_prefix", "sentinel_master")
    @classmethod
    def _a_name(cls, value: str | None) -> str | None:
        # An empty or spaced name is accepted by Redis and kombu alike, and sends jobs where no
        # worker with the default looks.
        if value is None:
            return value
        if not value or not value.isprintable() or any(char.isspace() for char in value):
            raise ValueError("must be a non-empty name without spaces or control characters")
        return value

    @field_validator("sentinel_password")
    @classmethod
    def _a_password(cls, value: SecretStr | None) -> SecretStr | None:
        secret = None if value is None else value.get_secret_value()
        if secret is not None and not secret:
            raise ValueError("is empty: unset it when the Sentinels need no password")
        if secret and (not secret.isprintable() or any(char.isspace() for char in secret)):
            raise ValueError("holds spaces or control characters (a line break from a paste?)")
        return value

    @property
    def state_url(self) -> str:
        return self.redis_url or self.broker_url

    @property
    def sentinel_secret(self) -> str | None:
        """The Sentinels' own password, for the clients that need it in clear."""
        return None if self.sentinel_password is None else self.sentinel_password.get_secret_value()

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
    if is_sentinel_url(url):
        return sentinel_url_problem(url)
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix") or "://" not in url:
        return "must start with redis://, rediss://, unix:// or sentinel://"
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
    problems.extend(sentinel_problems(settings))
    if settings.retry_countdown > settings.retry_countdown_max:
        problems.append(
            f"{variable('retry_countdown')}={settings.retry_countdown:g} must not exceed "
            f"{variable('retry_countdown_max')}={settings.retry_countdown_max:g}"
        )
    return problems


def sentinel_problems(settings: Settings) -> list[str]:
    """A sentinel:// URL with no master name, or Sentinel settings that nothing would use (an
    operator who set them believes the deployment follows failovers)."""
    sentinel_urls = [
        name
        for name, url in (("broker_url", settings.broker_url), ("redis_url", settings.redis_url))
        if url is not None and is_sentinel_url(url)
    ]
    if sentinel_urls and settings.sentinel_master is None:
        return [
            f"{variable('sentinel_master')}: must be set, since {variable(sentinel_urls[0])} is a "
            "sentinel:// URL (the <name> in the Sentinels' 'sentinel monitor <name> ...')"
        ]
    if not sentinel_urls:
        return [
            f"{variable(name)}: is set, but neither {variable('broker_url')} nor "
            f"{variable('redis_url')} is a sentinel:// URL"
            for name in ("sentinel_master", "sentinel_password")
            if getattr(settings, name) is not None
        ]
    return []


# Settings an earlier version had, and why they are gone: set, they would do nothing.
RETIRED = {
    "ARCHIVER_VISIBILITY_TIMEOUT": (
        "no longer a setting: a killed node's jobs come back through their leases "
        "(ARCHIVER_LEASE_TIMEOUT); remove it"
    ),
}


def _misspelt(environ: Mapping[str, str]) -> list[str]:
    """ARCHIVER_* variables that are no setting but nearly spell one (a typo would otherwise
    leave the default in force without a word), or that name a retired one. Names far from
    every setting are left alone (another tool may own them)."""
    known = {variable(name) for name in Settings.model_fields}
    problems = []
    for name in sorted(environ):
        if name in RETIRED:
            problems.append(f"{name}: {RETIRED[name]}")
        elif name.startswith(ENV_PREFIX) and name not in known:
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
    if isinstance(given, str) and not name.endswith(("_URL", "_PASSWORD")):
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
