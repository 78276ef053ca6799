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
from kombu import pools
from pytest_redis import factories

import worker.producer
from config import AccountRegistry, Settings, get_settings
from config.accounts import _account_rates
from config.units import _parse_rate_text
from config.urls import _checked_url
from worker.celery_app import create_app
from worker.producer import ArchiveProducer
from worker.services import Services, get_accounts, get_services, reset_services
from worker.stores.keys import Keys
from worker.stores.scripts import LUA_DIR
from worker.stores.scripts import load as load_script

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``last_in_module`` run after the other tests of their module: they check
    what all the others left behind. A stable sort, so whatever order pytest-randomly chose for
    the rest (it shuffles before this hook runs) is kept, and a seed still repeats a run."""
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(item.nodeid.split("::")[0], index)
    items.sort(
        key=lambda item: (
            first_seen[item.nodeid.split("::")[0]],
            item.get_closest_marker("last_in_module") is not None,
        )
    )


def _restore_environment(saved: dict[str, str]) -> None:
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


@pytest.fixture(autouse=True, scope="module")
def _module_leaves_no_trace() -> Iterator[None]:
    """What a module's shared fixtures set in the environment (a cluster's token variables)
    ends with the module."""
    saved = dict(os.environ)
    yield
    _restore_environment(saved)


@pytest.fixture(autouse=True)
def _test_leaves_no_trace() -> Iterator[None]:
    """Environment variables a test set without monkeypatch are restored after it, and the
    settings and every per-process object built from them (Redis clients, the accounts registry,
    the default producer) are built afresh for the next test, whichever test that is."""
    saved = dict(os.environ)
    yield
    _restore_environment(saved)
    reset_services()


@pytest.fixture(autouse=True)
def _fresh_loader_caches() -> None:
    """The accounts loader's caches (config/urls.py, config/units.py, config/accounts.py) start
    empty in each test, so each test runs the checks it names: a mutation run forks every mutant
    from a process whose clean run filled them (docs/mutation.md)."""
    _checked_url.cache_clear()
    _parse_rate_text.cache_clear()
    _account_rates.cache_clear()


@pytest.fixture(scope="session")
def _lua_scripts_cached(redis_server: object) -> None:
    """Every Lua script is in the session Redis's script cache before the first test, as on a
    deployment that has run a while. Otherwise whichever test first runs a script pays redis-py's
    NOSCRIPT fallback (EVALSHA refused, the script loaded, sent again): a test that counts round
    trips, or that must reach a script within a permit's interval, would pass or fail by what ran
    before it. FLUSHALL leaves the script cache as it is."""
    client = redis.Redis(host=redis_server.host, port=redis_server.port)  # type: ignore[attr-defined]
    for path in sorted(LUA_DIR.glob("*.lua")):
        client.script_load(load_script(path.stem).source)
    client.close()


@pytest.fixture
def redis_url(redis_server: object, _lua_scripts_cached: None) -> Iterator[str]:
    url = f"redis://{redis_server.host}:{redis_server.port}/0"  # type: ignore[attr-defined]
    yield url
    # Our own server, started for this session: flushing it touches nobody else's data.
    redis.Redis.from_url(url).flushall()
    _close_kombu_pools(redis_server.host, int(redis_server.port), "0")  # type: ignore[attr-defined]


def _close_kombu_pools(host: str, port: int, db: str) -> None:
    """kombu keeps its connection pools for the whole process, one per broker, and a Celery app
    built in a test takes its connections from there: the next test's app on the same URL would
    get them already connected, still remembering which queues they declared in a Redis flushed
    since. Only pools on this database (a test's own) are closed: a module's shared cluster has
    its own database and keeps its connections."""
    for key, pool in list(pools.connections.items()):
        broker = pool.connection
        if (broker.hostname, broker.port, str(broker.virtual_host)) == (host, port, db):
            for producers_key, producers in list(pools.producers.items()):
                if producers.connections is pool:
                    producers.force_close_all()
                    dict.pop(pools.producers, producers_key)
            pool.force_close_all()
            dict.pop(pools.connections, key)


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
    """Counts what this process sends to Redis (a pipeline is one send), leaving out a new
    connection's handshake (HELLO, CLIENT SETINFO, ...): whether a client connects anew or
    reuses a connection depends on what ran before in the process, not on the code measured."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        connection = redis.connection.AbstractConnection
        send, connect = connection.send_packed_command, connection.connect_check_health
        counter = self

        def counting(self, command, check_health=True):  # type: ignore[no-untyped-def]
            if not getattr(self, "_handshake", False):
                counter.count += 1
            return send(self, command, check_health)

        def connecting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            self._handshake = True
            try:
                return connect(self, *args, **kwargs)
            finally:
                self._handshake = False

        monkeypatch.setattr(connection, "send_packed_command", counting)
        monkeypatch.setattr(connection, "connect_check_health", connecting)


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Callable[[], RoundTrips]:
    """Call it to start counting Redis round trips from that moment."""
    return lambda: RoundTrips(monkeypatch)
