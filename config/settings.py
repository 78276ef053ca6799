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

    # Redis redelivers a job not acknowledged within this many seconds. Every countdown and the
    # task time limit must stay well under it or jobs run twice (kombu#337, celery#5935).
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
    # A permit further away than this is not waited for in the worker slot: the job is
    # rescheduled instead.
    limiter_max_wait: float = Field(2.0, ge=0)

    log_format: Literal["text", "json"] = "text"

    @property
    def state_url(self) -> str:
        return self.redis_url or self.broker_url

    @model_validator(mode="after")
    def _countdowns_under_visibility_timeout(self) -> Settings:
        # Half the visibility timeout leaves room for the time a job waits in the queue.
        limit = self.visibility_timeout / 2
        for name in (
            "retry_countdown_max",
            "task_time_limit",
            "sweep_time_limit",
            "circuit_cooldown_max",
        ):
            if getattr(self, name) > limit:
                raise ValueError(
                    f"ARCHIVER_{name.upper()}={getattr(self, name):g} must be at most half of "
                    f"ARCHIVER_VISIBILITY_TIMEOUT={self.visibility_timeout} (jobs would run twice)"
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
