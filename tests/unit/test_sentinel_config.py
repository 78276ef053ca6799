"""Redis Sentinel settings: the sentinel:// URL read once and strictly, the errors one line each
that never show a password, and what every library is given (kombu, Celery's backend, RedBeat,
our own client). The failovers themselves: tests/integration/test_sentinel.py."""

from __future__ import annotations

import pytest
from celery.app.utils import filter_hidden_settings
from kombu import Connection
from redis.sentinel import SentinelConnectionPool

from config import ConfigError, load_settings
from config.sentinel import parse_sentinel_url
from config.settings import Settings
from worker.celery_app import celery_config
from worker.sentinel import KombuSentinelTransport, MasterConnection, unfenced
from worker.stores.client import connect, safe_url

PASSWORD = "CANARYsentinelpw"


@pytest.mark.parametrize(
    ("url", "sentinels", "db"),
    [
        # kombu's documented form: the database once, at the end.
        ("sentinel://h1:26379;sentinel://h2:26379/0", (("h1", 26379), ("h2", 26379)), 0),
        ("sentinel://h1:26380;sentinel://h2:26381;sentinel://h3:26382/2", None, 2),
        ("sentinel://h1/3;sentinel://h2/3", (("h1", 26379), ("h2", 26379)), 3),
        ("sentinel://[::1]:5000", (("::1", 5000),), 0),
        ("SENTINEL://h1", (("h1", 26379),), 0),
    ],
)
def test_sentinel_urls_people_write_are_read_alike(
    url: str, sentinels: tuple[tuple[str, int], ...] | None, db: int
) -> None:
    address = parse_sentinel_url(url)
    if sentinels is not None:
        assert address.sentinels == sentinels
    assert address.db == db
    # The form handed to the libraries reads back the same.
    assert parse_sentinel_url(address.url()) == address


def test_the_url_password_is_the_redis_servers_and_given_on_the_first_part_only() -> None:
    address = parse_sentinel_url(f"sentinel://:{PASSWORD}@h1:26379;sentinel://h2:26379/1")
    assert (address.username, address.password) == (None, PASSWORD)
    # kombu and Celery read the first part's credentials; the others carry none.
    normal = address.url()
    assert normal.count(PASSWORD) == 1 and normal.startswith(f"sentinel://:{PASSWORD}@h1")
    encoded = parse_sentinel_url("sentinel://us%40er:p%3Bw@h1")
    assert (encoded.username, encoded.password) == ("us@er", "p;w")
    assert parse_sentinel_url(encoded.url()) == encoded


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("sentinel://h1;redis://h2:6379", "its sentinel #2 is not a sentinel:// URL"),
        ("sentinel://h1;", "its sentinel #2 is empty"),
        ("sentinel://:26379", "names no host"),
        ("sentinel://h1:notaport", "its port is not a number"),
        ("sentinel://h1:0", "its port is not a number"),
        (f"sentinel://:{PASSWORD}/x@h1:26379", "must be percent-encoded"),
        ("sentinel://h1/0;sentinel://h2/1", "name different databases"),
        ("sentinel://h1/zero", "the database (after the port) is not a number"),
        (f"sentinel://:{PASSWORD}@h1;sentinel://:other@h2", "different user:password@"),
        ("sentinel://h1?master=m", "?query"),
    ],
)
def test_a_wrong_sentinel_url_is_one_line_naming_the_variable_never_the_password(
    monkeypatch: pytest.MonkeyPatch, url: str, why: str
) -> None:
    monkeypatch.setenv("ARCHIVER_BROKER_URL", url)
    monkeypatch.setenv("ARCHIVER_SENTINEL_MASTER", "mymaster")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("ARCHIVER_BROKER_URL: ")
    assert why in str(caught.value)
    assert PASSWORD not in str(caught.value) and "(got" not in str(caught.value)


def test_a_sentinel_url_needs_the_master_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIVER_REDIS_URL", "sentinel://h1;sentinel://h2/0")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert list(caught.value.problems) == [
        "ARCHIVER_SENTINEL_MASTER: must be set, since ARCHIVER_REDIS_URL is a sentinel:// URL "
        "(the <name> in the Sentinels' 'sentinel monitor <name> ...')"
    ]


def test_sentinel_settings_nothing_would_use_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator who sets them believes the deployment follows failovers."""
    monkeypatch.setenv("ARCHIVER_SENTINEL_MASTER", "mymaster")
    monkeypatch.setenv("ARCHIVER_SENTINEL_PASSWORD", PASSWORD)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert [line.split(":")[0] for line in caught.value.problems] == [
        "ARCHIVER_SENTINEL_MASTER",
        "ARCHIVER_SENTINEL_PASSWORD",
    ]
    assert "neither ARCHIVER_BROKER_URL nor ARCHIVER_REDIS_URL is a sentinel://" in str(
        caught.value
    )
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("ARCHIVER_SENTINEL_MASTER", "my master", "without spaces"),
        ("ARCHIVER_SENTINEL_MASTER", "", "non-empty"),
        ("ARCHIVER_SENTINEL_PASSWORD", "", "is empty"),
        ("ARCHIVER_SENTINEL_PASSWORD", f"{PASSWORD}\n", "spaces or control characters"),
    ],
)
def test_a_wrong_master_name_or_sentinel_password_is_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, why: str
) -> None:
    monkeypatch.setenv("ARCHIVER_BROKER_URL", "sentinel://h1;sentinel://h2/0")
    monkeypatch.setenv("ARCHIVER_SENTINEL_MASTER", "mymaster")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(f"{name}: ")
    assert why in str(caught.value)
    assert PASSWORD not in str(caught.value)


def _settings(**values: str) -> Settings:
    return Settings(
        broker_url=f"sentinel://:{PASSWORD}@h1:26379;sentinel://h2:26380/4",
        sentinel_master="mymaster",
        **values,  # type: ignore[arg-type]
    )


def test_celery_kombu_and_redbeat_are_given_the_sentinels_the_master_and_both_passwords() -> None:
    settings = _settings(sentinel_password="sentinel-secret")
    config = celery_config(settings)
    normal = f"sentinel://:{PASSWORD}@h1:26379/4;sentinel://h2:26380/4"
    assert config["broker_url"] == normal
    assert config["result_backend"] == normal
    sentinels = {
        "password": "sentinel-secret",
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
    }
    transport = {"master_name": "mymaster", "sentinel_kwargs": sentinels}
    # The broker's other options are kept.
    assert config["broker_transport_options"] == {"polling_interval": 5, **transport}
    assert config["result_backend_transport_options"] == transport
    assert config["redbeat_redis_url"] == "redis-sentinel://"
    options = config["redbeat_redis_options"]
    assert options["sentinels"] == [("h1", 26379), ("h2", 26380)]
    assert (options["service_name"], options["db"], options["password"]) == (
        "mymaster",
        4,
        PASSWORD,
    )
    assert options["sentinel_kwargs"] == sentinels
    assert options["retry_period"] == settings.redis_outage_grace
    # A Redis URL leaves Celery's and RedBeat's defaults alone.
    plain = celery_config(Settings(broker_url="redis://h:6379/0"))
    assert plain["broker_transport_options"] == {"polling_interval": 5}
    assert plain["redbeat_redis_url"] == "redis://h:6379/0"
    assert "result_backend_transport_options" not in plain


def test_the_settings_celery_shows_mask_every_password() -> None:
    """Celery masks settings for `celery inspect conf` and Flower; a sentinel URL in the form
    kombu documents (database at the end) makes its sanitiser raise, ours does not."""
    config = celery_config(_settings(sentinel_password="sentinel-secret"))
    shown = str(filter_hidden_settings(config))
    assert PASSWORD not in shown and "sentinel-secret" not in shown
    with pytest.raises(ValueError, match="Port could not be cast"):
        filter_hidden_settings({"result_backend": "sentinel://:pw@h1:1;sentinel://h2:2/0"})


def test_our_logs_mask_the_password_in_every_part_of_a_sentinel_url() -> None:
    shown = safe_url(f"sentinel://:{PASSWORD}@h1:1/0;sentinel://:{PASSWORD}@h2:2/0")
    assert PASSWORD not in shown
    assert shown.count("sentinel://") == 2


def test_kombu_connects_through_our_transport_even_after_moving_to_the_next_sentinel() -> None:
    """kombu takes the transport from the URL's scheme again when a connection fails and it
    moves to the next part (Connection.switch): the scheme itself names our transport."""
    connection = Connection(_settings().broker_url)
    assert isinstance(connection.transport, KombuSentinelTransport)
    connection.switch(connection.alt[1])
    assert isinstance(connection.transport, KombuSentinelTransport)
    assert KombuSentinelTransport.Channel.connection_class is MasterConnection


def test_our_client_asks_the_sentinels_for_the_master_with_its_own_connections() -> None:
    settings = _settings(sentinel_password="sentinel-secret")
    client = connect(settings.broker_url, settings=settings)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster" and pool.is_master
    assert pool.connection_class is MasterConnection
    assert pool.connection_kwargs["db"] == 4
    assert pool.connection_kwargs["password"] == PASSWORD
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
    assert all(
        s.connection_pool.connection_kwargs["password"] == "sentinel-secret" for s in sentinels
    )
    # The outage grace's retries apply to the master's connections.
    assert pool.connection_kwargs["retry"] is not None


@pytest.mark.parametrize(
    ("required", "replicas", "fenced"),
    [(1, 1, True), (2, 2, True), (1, 2, False), (0, 1, False), (0, 0, True)],
)
def test_a_master_that_can_lose_acknowledged_writes_in_a_failover_is_named(
    required: int, replicas: int, fenced: bool
) -> None:
    """Measured (tests/integration/test_sentinel.py, README): one replica and
    min-replicas-to-write 0 lost 1,440 of 3,000 jobs; two replicas and 1 lost 180; 1 of 1 and
    2 of 2 lost none."""
    problem = unfenced(required, replicas)
    assert (problem is None) == fenced
    if problem:
        assert f"requires {required} of its {replicas} replicas" in problem
