"""Settings from the environment (``ARCHIVER_*``), validated once, with one-line errors."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.errors import ConfigError, first_pydantic_error


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARCHIVER_", extra="ignore", frozen=True)

    broker_url: str = "redis://localhost:6379/0"
    # Limiter, dead letters, locks and counters. Defaults to the broker's Redis.
    redis_url: str | None = None
    accounts_file: Path = Path("accounts.toml")
    # Every key we write in Redis starts with this, so one Redis can hold several deployments.
    key_prefix: str = "chat-archiver"
    # The Celery queue producers publish to; workers also consume one queue per account.
    queue: str = "archive"

    http_connect_timeout: float = Field(5.0, gt=0)
    http_read_timeout: float = Field(20.0, gt=0)

    # Tenacity, inside the task, for transient errors: it holds a worker slot while it sleeps,
    # so it stays short (3 attempts, waits of at most a few seconds).
    transient_attempts: int = Field(3, ge=1, le=10)
    transient_wait_max: float = Field(4.0, ge=0)
    # Then Celery's retry with a countdown doubling from retry_countdown up to retry_countdown_max.
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
    # A job delivered this many times without finishing (it kills its worker) is dead-lettered.
    max_deliveries: int = Field(3, ge=1)
    # How long a chat's "job pending" mark outlives a crash that skipped its release.
    pending_ttl: int = Field(86400, gt=0)

    # An account that answers "unauthorized"/"unavailable"/"quota" is paused (worker/circuit.py):
    # probed after the cooldown, doubling up to the maximum; its jobs wait at most max_pause,
    # then go to the dead letters with the account's reason.
    circuit_cooldown: float = Field(30.0, gt=0)
    circuit_cooldown_max: float = Field(600.0, gt=0)
    circuit_max_pause: float = Field(86400.0, gt=0)

    # The limiter spaces calls this fraction wider than the provider's limit: the window
    # semantics are undocumented and a request reaches the provider a few ms after its permit.
    limiter_margin: float = Field(0.03, ge=0, lt=0.5)
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

    @property
    def state_url(self) -> str:
        return self.redis_url or self.broker_url

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        # kombu would give a running job's message back while it still runs (harmless: the
        # second delivery finds the job's lease held and ends quietly, but it costs a slot).
        for name in ("task_time_limit", "sweep_time_limit"):
            if getattr(self, name) >= self.visibility_timeout:
                raise ValueError(
                    f"ARCHIVER_{name.upper()}={getattr(self, name)} must be less than "
                    f"ARCHIVER_VISIBILITY_TIMEOUT={self.visibility_timeout}"
                )
        # Tenacity's attempts (each up to both HTTP timeouts) and its waits must fit in the task
        # time limit, or the limit, not the HTTP client, ends slow calls.
        worst_call = self.transient_attempts * (self.http_connect_timeout + self.http_read_timeout)
        worst = worst_call + (self.transient_attempts - 1) * self.transient_wait_max
        if worst > 0.9 * self.task_time_limit:
            raise ValueError(
                f"ARCHIVER_TASK_TIME_LIMIT={self.task_time_limit} is too short for "
                f"{self.transient_attempts} attempts with HTTP timeouts of "
                f"{self.http_connect_timeout:g}+{self.http_read_timeout:g}s "
                f"(needs {worst / 0.9:.0f})"
            )
        if self.retry_countdown > self.retry_countdown_max:
            raise ValueError(
                "ARCHIVER_RETRY_COUNTDOWN must not exceed ARCHIVER_RETRY_COUNTDOWN_MAX"
            )
        return self


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        # Name the environment variable the user sets, not the Python attribute.
        errors = [
            {**e, "loc": tuple(str(part).upper() for part in e.get("loc", ()))}
            for e in error.errors()
        ]
        raise ConfigError(first_pydantic_error(errors, prefix="ARCHIVER_")) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once. Tests that change the environment call cache_clear()."""
    return load_settings()
