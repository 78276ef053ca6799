"""Redis Sentinel: every Redis client of ours follows the master across a failover.

ARCHIVER_BROKER_URL and ARCHIVER_REDIS_URL may be kombu's ``sentinel://`` form
(config/sentinel.py), with ARCHIVER_SENTINEL_MASTER. Each library's own Sentinel support does the
work: kombu's transport for the broker, Celery's backend for results, RedBeat's client for the
schedule, redis-py's ``Sentinel.master_for`` for our state (worker/stores/client.py).

One thing is added for our clients and kombu's: a master that refuses writes for want of replicas
(``NOREPLICAS``, from ``min-replicas-to-write``) is treated as redis-py treats one that answers
``READONLY``: the connection is dropped and the Sentinels are asked for the master again. A
Sentinel failover promotes the replica while the old master runs on, and Sentinel makes the old
master a replica only some ten seconds later; with ``min-replicas-to-write`` it refuses writes in
that time (instead of taking writes the failover then throws away), and our clients move to the
new master at once instead of waiting out those seconds.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from redis.sentinel import Sentinel, SentinelManagedConnection

from config import Settings
from config.sentinel import SCHEME, is_sentinel_url, parse_sentinel_url

logger = logging.getLogger("chat_archiver.sentinel")

# The Sentinels answer at once or not at all: a hung one must not hold up asking the next.
SENTINEL_TIMEOUT = 2.0


class MasterConnection(SentinelManagedConnection):
    """A connection to the master Sentinel names, given up when that master refuses writes for
    want of replicas, and that asks the Sentinels again each time it reconnects."""

    _at_address = False  # connect_to is connecting it to the address the Sentinels gave

    def connect_to(self, address: tuple[str, int]) -> None:
        self._at_address = True
        try:
            super().connect_to(address)
        finally:
            self._at_address = False

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        # redis-py reconnects a retried command's connection here, to the address it had: the
        # demoted master, for the whole retry budget (redis/redis-py#3874). Ask the Sentinels.
        if self._sock or self._at_address or not self.connection_pool.is_master:
            super().connect_check_health(check_health, retry_socket_connect)
        else:
            self._connect_retry()

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as error:
            if self.connection_pool.is_master and str(error).startswith("NOREPLICAS"):
                self.disconnect()
                raise redis.ConnectionError(
                    "the master refuses writes for want of replicas in sync (NOREPLICAS): asking "
                    "the Sentinels for the master again"
                ) from error
            raise


class KombuSentinelChannel(kombu_redis.SentinelChannel):
    connection_class = MasterConnection


class KombuSentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport, its connections :class:`MasterConnection`."""

    Channel = KombuSentinelChannel


# The broker URL's scheme names this transport. Not Celery's broker_transport: when a connection
# fails, kombu moves to the URL's next part (Connection.switch) and takes the transport from that
# part's scheme again, whatever it was given.
TRANSPORT_ALIASES[SCHEME] = f"{__name__}:KombuSentinelTransport"


def sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """How every client reaches the Sentinels themselves."""
    options: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT,
        "socket_connect_timeout": SENTINEL_TIMEOUT,
    }
    if settings.sentinel_secret is not None:
        options["password"] = settings.sentinel_secret
    return options


def master_client(url: str, settings: Settings, **options: Any) -> redis.Redis:
    """A redis-py client of the master the Sentinels in ``url`` name (``options``: the client's
    own, as ``redis.Redis.from_url`` takes them)."""
    if settings.sentinel_master is None:
        raise ValueError("a sentinel:// URL needs the master's name (ARCHIVER_SENTINEL_MASTER)")
    address = parse_sentinel_url(url)
    sentinel = Sentinel(list(address.sentinels), sentinel_kwargs=sentinel_kwargs(settings))
    return sentinel.master_for(
        settings.sentinel_master,
        connection_class=MasterConnection,
        db=address.db,
        username=address.username,
        password=address.password,
        **options,
    )


def celery_options(settings: Settings) -> dict[str, Any]:
    """The Celery (and RedBeat) settings a Sentinel URL needs, to merge over the others."""
    found: dict[str, Any] = {}
    transport = {
        "master_name": settings.sentinel_master,
        "sentinel_kwargs": sentinel_kwargs(settings),
    }
    if is_sentinel_url(settings.broker_url):
        found["broker_url"] = parse_sentinel_url(settings.broker_url).url()
        found["broker_transport_options"] = transport
    if is_sentinel_url(settings.state_url):
        address = parse_sentinel_url(settings.state_url)
        # Celery's own sentinel:// backend (celery.backends.redis.SentinelBackend).
        found["result_backend"] = address.url()
        found["result_backend_transport_options"] = transport
        # RedBeat's Sentinel form: the URL only says "Sentinel", the options say where.
        found["redbeat_redis_url"] = "redis-sentinel://"
        found["redbeat_redis_options"] = {
            "sentinels": list(address.sentinels),
            "service_name": settings.sentinel_master,
            "db": address.db,
            "username": address.username,
            "password": address.password,
            "socket_timeout": 10,
            "sentinel_kwargs": sentinel_kwargs(settings),
            # Beat retries a lost connection (a failover) this long instead of exiting.
            "retry_period": settings.redis_outage_grace,
        }
    return found


def unfenced(min_replicas_to_write: int, replicas: int) -> str | None:
    """Why a master with these settings can lose acknowledged writes in a failover, or None.
    Sentinel promotes one replica while the old master runs on for some seconds; the old master
    refuses writes in that time only if it then has fewer replicas in sync than it requires."""
    if replicas and min_replicas_to_write < replicas:
        return (
            f"the master requires {min_replicas_to_write} of its {replicas} replicas in sync to "
            "take a write (min-replicas-to-write): in a failover it takes writes for seconds "
            "after its replica was promoted, and they are lost (jobs a producer was told were "
            "stored among them); set min-replicas-to-write to the number of replicas "
            "(docs/high-availability.md)"
        )
    return None


def check_fencing(url: str) -> None:
    """Say once, at a worker's start, if the Sentinels' master can lose acknowledged writes in a
    failover. A Redis that does not let us read its configuration (a managed service) is left
    alone."""
    from worker.stores.client import connect  # the client module builds on this one

    client = connect(url)
    try:
        configured = client.config_get("min-replicas-to-write")
        replicas = int(str(client.info("replication").get("connected_slaves", 0)))
    except redis.RedisError as error:
        logger.debug("could not read the master's min-replicas-to-write: %s", error)
        return
    finally:
        client.close()
    problem = unfenced(int(str(configured.get("min-replicas-to-write", 0))), replicas)
    if problem:
        logger.warning("Redis Sentinel: %s", problem)
