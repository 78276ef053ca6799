"""What finding a dead letter by an id prefix costs, against a scan of every id.

    python -m benchmarks.bench_dlq_prefix [--entries 100000] [--lookups 500] [--json]

A private redis-server holds ``--entries`` dead letters. ``DeadLetterStore.find`` looks a prefix
up in the ids zset (every score 0) with ZLEXCOUNT and ZRANGEBYLEX: O(log N) on the server and
one round trip. The baseline is what a store without that key must do: read every id of the
index and compare in Python. Also measured: rebuilding the ids zset of a store written before it
existed (one ZUNIONSTORE), what the key costs in memory, and the unique prefix length
``dlq list`` prints for a page of entries.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

import redis

from worker.sandbox.local import PrivateRedis
from worker.stores.deadletters import DeadLetter, DeadLetterStore

PREFIX = "bench"


def fill(client: redis.Redis, store: DeadLetterStore, entries: int) -> list[str]:
    ids = []
    for start in range(0, entries, 1000):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(start + 1000, entries)):
            entry = DeadLetter(
                reason="chat_not_found",
                job={
                    "provider": "green-api",
                    "account": "7105187566",
                    "chat_id": f"7{n:010d}@c.us",
                },
                detail="HTTP 400: chat not found",
                created_at=float(n),
            )
            ids.append(store.queue_add(pipe, entry))
        pipe.execute()
    return ids


def timed(call: Any, repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()

    with PrivateRedis() as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        store = DeadLetterStore(client, PREFIX)
        started = time.perf_counter()
        ids = fill(client, store, options.entries)
        fill_seconds = time.perf_counter() - started
        rng = random.Random(7)

        def find_random() -> None:
            count, found = store.find(rng.choice(ids)[:8])
            assert count >= 1 and found

        def scan_random() -> None:
            prefix = rng.choice(ids)[:8]
            found = [i for i in client.zrange(f"{PREFIX}:dlq:index", 0, -1) if i.startswith(prefix)]
            assert found

        find_seconds = timed(find_random, options.lookups)
        scan_seconds = timed(scan_random, max(5, options.lookups // 50))
        client.delete(f"{PREFIX}:dlq:ids")  # as a store written before the key existed
        rebuild_seconds = timed(lambda: store.find("0000"), 1)[0]
        memory = client.memory_usage(f"{PREFIX}:dlq:ids") or 0
        page = rng.sample(ids, min(50, len(ids)))
        length_seconds = timed(lambda: store.unique_prefix_length(page), 20)
        unique_all = store.unique_prefix_length(ids)
        server_info = client.info("server")

    figures = {
        "entries": options.entries,
        "fill_seconds": round(fill_seconds, 2),
        "find_median_ms": round(statistics.median(find_seconds) * 1000, 3),
        "find_p99_ms": round(sorted(find_seconds)[int(len(find_seconds) * 0.99) - 1] * 1000, 3),
        "scan_median_ms": round(statistics.median(scan_seconds) * 1000, 1),
        "rebuild_ms": round(rebuild_seconds * 1000, 1),
        "ids_zset_bytes_per_entry": round(memory / options.entries, 1),
        "unique_prefix_for_50_ids_median_ms": round(statistics.median(length_seconds) * 1000, 2),
        "unique_prefix_length_whole_store": unique_all,
        "redis_version": server_info.get("redis_version"),
    }
    if options.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{options.entries:,} dead letters (filled in {figures['fill_seconds']} s)")
    print(
        f"find(prefix), ids zset:        median {figures['find_median_ms']} ms, "
        f"p99 {figures['find_p99_ms']} ms (one round trip)"
    )
    print(f"scan of every id (baseline):   median {figures['scan_median_ms']} ms")
    print(f"rebuild of the ids zset:       {figures['rebuild_ms']} ms (once, one ZUNIONSTORE)")
    print(f"ids zset memory:               {figures['ids_zset_bytes_per_entry']} bytes per entry")
    print(
        f"unique prefix of a 50-id page: median {figures['unique_prefix_for_50_ids_median_ms']} "
        f"ms; unique length over the whole store: {unique_all} characters"
    )


if __name__ == "__main__":
    main()
