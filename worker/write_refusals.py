"""When Redis refuses writes while it still answers reads, and why.

Three states do that, each with its own error reply:

- ``OOM``: used memory is above ``maxmemory`` and the policy cannot evict (``noeviction``, as
  the compose file runs it): every command that may grow the data set is refused;
- ``READONLY``: the server is a read-only replica (a failover demoted it under us);
- ``MISCONF``: an RDB snapshot failed and ``stop-writes-on-bgsave-error`` is on.

Sources: redis.io/docs/latest/develop/reference/eviction/ ("noeviction: new values aren't saved
when memory limit is reached"), redis.io/docs/latest/operate/oss_and_stack/management/replication/
(``replica-read-only``) and the ``stop-writes-on-bgsave-error`` entry of redis.conf.

:func:`refusal_of` names the state from an error reply; :func:`read_refusal` tells it from
``INFO`` (and ``CONFIG GET`` where allowed) without writing anything, so ``status`` can say it
while writes fail.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import redis

MAXMEMORY = "maxmemory"
READ_ONLY = "read-only replica"
MISCONF = "MISCONF"
MIN_REPLICAS = "min-replicas-to-write"
REFUSALS = (MAXMEMORY, READ_ONLY, MISCONF, MIN_REPLICAS)

# How status says each, and what to do about it, for one-line messages.
HEADLINES = {
    MAXMEMORY: "Redis is full",
    READ_ONLY: "Redis is a read-only replica",
    MISCONF: "Redis stopped writes (MISCONF)",
    MIN_REPLICAS: "Redis stopped writes (too few replicas)",
}
REMEDIES = {
    MAXMEMORY: "free memory in Redis or raise its maxmemory",
    READ_ONLY: "point ARCHIVER_BROKER_URL / ARCHIVER_REDIS_URL at the primary",
    MISCONF: "fix Redis's RDB snapshots (its log says why they fail)",
    MIN_REPLICAS: "bring Redis's replicas back",
}


def refusal_of(error: BaseException) -> str | None:
    """Which refusal an error reply is (one of ``REFUSALS``), or None for any other error."""
    if isinstance(error, redis.exceptions.OutOfMemoryError):
        return MAXMEMORY
    if isinstance(error, redis.exceptions.ReadOnlyError):
        return READ_ONLY
    if isinstance(error, redis.exceptions.ResponseError):
        # redis-py has no class for these two: the reply's first word says it (after the
        # "Command # N (...) of pipeline caused error: " a raising pipeline puts before it).
        text = str(error).rpartition("of pipeline caused error: ")[2]
        if text.startswith("MISCONF"):
            return MISCONF
        if text.startswith("NOREPLICAS"):
            return MIN_REPLICAS
    return None


@dataclass(frozen=True)
class WriteRefusal:
    """Redis refuses writes now: ``reason`` is one of ``REFUSALS``, ``detail`` one line of
    figures."""

    reason: str
    detail: str
    used_memory: int | None = None
    maxmemory: int | None = None
    maxmemory_policy: str | None = None

    def line(self) -> str:
        """What, with the figures, for a person."""
        return f"{HEADLINES[self.reason]}: {self.detail}"

    @property
    def remedy(self) -> str:
        return REMEDIES[self.reason]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def megabytes(count: int) -> str:
    return f"{count / 1_048_576:.1f} MB"


def _config(client: redis.Redis, name: str) -> str | None:
    """One setting, or None where CONFIG is not allowed (managed Redis often renames it)."""
    try:
        value = client.config_get(name).get(name)
    except redis.ResponseError:
        return None
    return None if value is None else str(value)


def read_refusal(client: redis.Redis) -> WriteRefusal | None:
    """Whether ``client``'s Redis refuses writes now, read from INFO without writing.

    Memory is compared as Redis compares it before each command: used memory less what it does
    not count for eviction (replication and AOF buffers), against ``maxmemory``.
    """
    info = client.info("memory")
    maxmemory = int(info.get("maxmemory", 0))
    used = int(info.get("used_memory", 0))
    counted = used - int(info.get("mem_not_counted_for_evict", 0))
    policy = str(info.get("maxmemory_policy", ""))
    if maxmemory and counted > maxmemory:
        return full(used, maxmemory, policy)
    replication = client.info("replication")
    if replication.get("role") in ("slave", "replica") and (
        _config(client, "replica-read-only") != "no"
    ):
        return WriteRefusal(READ_ONLY, "writes go to its primary (did a failover demote it?)")
    good = replication.get("min_slaves_good_slaves")
    wanted = _config(client, "min-replicas-to-write") if good is not None else None
    if good is not None and wanted and int(good) < int(wanted):
        return WriteRefusal(
            MIN_REPLICAS, f"{good} replicas answer, min-replicas-to-write is {wanted}"
        )
    persistence = client.info("persistence")
    if (
        persistence.get("rdb_last_bgsave_status") == "err"
        and _config(client, "stop-writes-on-bgsave-error") != "no"
        and _config(client, "save") != ""
    ):
        return WriteRefusal(
            MISCONF, "its last RDB snapshot failed and stop-writes-on-bgsave-error is on"
        )
    return None


def full(used: int, maxmemory: int, policy: str) -> WriteRefusal:
    return WriteRefusal(
        MAXMEMORY,
        f"used {megabytes(used)} of maxmemory {megabytes(maxmemory)}, policy {policy}",
        used,
        maxmemory,
        policy,
    )


def memory(client: redis.Redis) -> dict[str, Any]:
    """Used memory against maxmemory (0: no limit) and the policy, as INFO says."""
    info = client.info("memory")
    return {
        "used_memory": int(info.get("used_memory", 0)),
        "maxmemory": int(info.get("maxmemory", 0)),
        "maxmemory_policy": str(info.get("maxmemory_policy", "")),
    }
