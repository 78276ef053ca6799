"""Fixtures every test may use: a Redis of our own, settings and an accounts file.

Tests never touch a Redis they did not start: pytest-redis runs a private ``redis-server`` on a
free port for the session, and each test gets that server flushed after it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.connection
from pytest_redis import factories

import worker.producer
from config import AccountRegistry, Settings, get_settings
from config.units import _parse_rate_text
from config.urls import _checked_url
from worker.celery_app import create_app
from worker.producer import ArchiveProducer
from worker.services import Services, get_accounts, get_services, reset_services
from worker.stores.keys import Keys

# A fake token shaped like a real one. Tests assert it never shows anywhere it must not.
# The keys under the default ARCHIVER_KEY_PREFIX, for tests that look into Redis directly.
KEYS = Keys("chat-archiver")

CANARY = "CANARYc4n4ry7f3a9e1d5b2"
WASSENGER_CANARY = "CANARYw4ss3ng3r9d8c7b6a"
GREEN_ID = "7105187566"
WASSENGER_ID = "61b37a069cba0c15d6c81c8e"

redis_server = factories.redis_proc(port=None)


def pytest_configure(config: pytest.Config) -> None:
    """Before any test runs: the app's default broker is a port where nothing listens, so no test
    can ever publish to the machine's shared Redis by accident. (Importing our modules reads no
    setting; the app reads them when it first configures.) Tests that need a broker build their
    own app or set the variables themselves."""
    os.environ["ARCHIVER_BROKER_URL"] = "redis://127.0.0.1:1/15"
    os.environ.pop("ARCHIVER_REDIS_URL", None)


@pytest.fixture(autouse=True)
def _fresh_loader_caches() -> None:
    """The accounts loader's caches (config/urls.py, config/units.py) start empty in each test,
    so each test runs the checks it names: a mutation run forks every mutant from a process
    whose clean run filled them (tests/MUTATION.md)."""
    _checked_url.cache_clear()
    _parse_rate_text.cache_clear()


@pytest.fixture
def redis_url(redis_server: object) -> Iterator[str]:
    url = f"redis://{redis_server.host}:{redis_server.port}/0"  # type: ignore[attr-defined]
    yield url
    # Our own server, started for this session: flushing it touches nobody else's data.
    redis.Redis.from_url(url).flushall()


def accounts_toml(
    api_url: str,
    green_id: str = GREEN_ID,
    wassenger_id: str = WASSENGER_ID,
    green_rate: str = "10/s",
    wassenger_rate: str = "10/s",
    wassenger_sweep: str | None = None,
) -> str:
    sweep = f"[accounts.sweep]\n{wassenger_sweep}\n" if wassenger_sweep is not None else ""
    return f"""
[[accounts]]
provider = "green-api"
id = "{green_id}"
api_url = "{api_url}"
token_env = "TEST_GREEN_TOKEN"
rate_limit = "{green_rate}"

[[accounts]]
provider = "wassenger"
id = "{wassenger_id}"
api_url = "{api_url}"
token_env = "TEST_WASSENGER_TOKEN"
rate_limit = "{wassenger_rate}"
{sweep}"""


def green_accounts_toml(first_id: int, count: int, api_url: str = "http://provider.test") -> str:
    """``count`` GREEN-API accounts with consecutive ids from ``first_id`` (token: the canary)."""
    return "".join(
        f'[[accounts]]\nprovider = "green-api"\nid = "{first_id + n}"\n'
        f'api_url = "{api_url}"\ntoken_env = "TEST_GREEN_TOKEN"\n'
        for n in range(count)
    )


@dataclass
class Env:
    settings: Settings
    services: Services
    accounts_file: Path
    redis: redis.Redis

    @property
    def accounts(self) -> AccountRegistry:
        return get_accounts()


def use_environment(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, accounts_file: Path, **settings: str
) -> Env:
    """Point this process's settings at the test Redis and an accounts file (tokens: the
    canaries), and rebuild what was built from the old ones."""
    monkeypatch.setenv("TEST_GREEN_TOKEN", CANARY)
    monkeypatch.setenv("TEST_WASSENGER_TOKEN", WASSENGER_CANARY)
    monkeypatch.setenv("ARCHIVER_BROKER_URL", redis_url)
    monkeypatch.setenv("ARCHIVER_ACCOUNTS_FILE", str(accounts_file))
    for name, value in settings.items():
        monkeypatch.setenv(f"ARCHIVER_{name.upper()}", value)
    reset_services()
    services = get_services()
    get_accounts()  # as a worker does at start: loads (and registers for redaction) the secrets
    return Env(get_settings(), services, accounts_file, services.redis)


@pytest.fixture
def archiver_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path) -> Iterator[Env]:
    """Settings pointing at the test Redis and an accounts file for a fake provider URL."""
    accounts_file = tmp_path / "accounts.toml"
    accounts_file.write_text(accounts_toml("http://provider.test"))
    yield use_environment(monkeypatch, redis_url, accounts_file)
    reset_services()


@pytest.fixture
def producer(archiver_env: Env) -> Iterator[ArchiveProducer]:
    """A producer on a Celery app built for the test Redis, also installed as this process's
    default producer (what the CLI's commands and enqueue_archive use when run in-process)."""
    celery = create_app(archiver_env.settings)
    made = ArchiveProducer(celery, archiver_env.settings, archiver_env.redis)
    worker.producer._default.install(made)
    yield made
    worker.producer._default.forget()
    celery.close()


class RoundTrips:
    """Counts what this process sends to Redis (a pipeline is one send)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = redis.connection.AbstractConnection.send_packed_command
        counter = self

        def counting(self, command, check_health=True):  # type: ignore[no-untyped-def]
            counter.count += 1
            return original(self, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Callable[[], RoundTrips]:
    """Call it to start counting Redis round trips from that moment."""
    return lambda: RoundTrips(monkeypatch)
