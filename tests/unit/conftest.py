"""Redis refusing writes, for the unit tests that need it: full at maxmemory, a read-only
replica, MISCONF. Real redis-server processes (the session's, or private ones)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
import redis

from tests.conftest import Env
from worker.sandbox.local import PrivateRedis


class Fill(Protocol):
    def __call__(self, room: int | None = None) -> None: ...


@pytest.fixture
def fill(archiver_env: Env) -> Iterator[Fill]:
    """``fill(room)``: maxmemory at Redis's used memory plus ``room`` bytes; ``fill()``: full
    now, maxmemory 1 byte, below any used memory (a limit just under the memory used now does
    not stay under it: Redis shrinks idle clients' query buffers a while later, earlier tests'
    included). Policy noeviction, as the compose file runs it; back to no limit afterwards."""
    client = archiver_env.redis
    client.config_set("maxmemory-policy", "noeviction")

    def set_room(room: int | None = None) -> None:
        if room is None:
            client.config_set("maxmemory", 1)
            return
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", max(1, used + room))

    yield set_room
    client.config_set("maxmemory", 0)


@pytest.fixture
def replica() -> Iterator[tuple[PrivateRedis, PrivateRedis]]:
    """A primary and its read-only replica, as a failover leaves an old primary."""
    with PrivateRedis() as primary, PrivateRedis() as copy:
        client = redis.Redis.from_url(copy.url, decode_responses=True)
        client.replicaof("127.0.0.1", primary.port)
        deadline = time.monotonic() + 20
        while client.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica never caught up"
            time.sleep(0.05)
        yield primary, copy


@pytest.fixture
def misconf(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis whose RDB snapshot failed (its directory is gone), with stop-writes-on-bgsave-error
    on (the default): it refuses writes with MISCONF."""
    snapshots = tmp_path / "rdb"
    snapshots.mkdir()
    with PrivateRedis(options=["--save", "3600 1", "--dir", str(snapshots)]) as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        shutil.rmtree(snapshots)
        client.bgsave()
        deadline = time.monotonic() + 20
        while client.info("persistence")["rdb_last_bgsave_status"] != "err":
            assert time.monotonic() < deadline, "the snapshot did not fail"
            time.sleep(0.05)
        yield server
