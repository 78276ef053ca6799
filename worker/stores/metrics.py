"""Operational counters, kept in Redis so that every worker process and host adds to the same
numbers, and read by one exporter (``chat-archiver metrics``) and by ``chat-archiver status``.

    {prefix}:metrics:outcomes   hash  "provider|account|outcome|reason" -> jobs
    {prefix}:metrics:latency    hash  "provider|account|le" -> calls in that bucket,
                                      "provider|account|sum" (the count is the buckets' sum)

Limiter figures (permits, waits, 429s) are the limiter's own stats (worker/stores/limiter.py); dead
letters are counted by their store; queues are Redis lists.
"""

from __future__ import annotations

from typing import Any

import redis

from worker.stores.keys import Keys

# Provider call latency buckets, seconds (upper bounds; +Inf is implied).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class MetricsRecorder:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self._keys = Keys(prefix)
        self.outcomes_key = self._keys.metrics_outcomes
        self.latency_key = self._keys.metrics_latency

    def queue_outcome(
        self, pipe: Any, provider: str, account: str, outcome: str, reason: str | None
    ) -> None:
        """Record a job's outcome in a pipeline (or worker/stores/writes.py's Writes)."""
        pipe.hincrby(self.outcomes_key, f"{provider}|{account}|{outcome}|{reason or ''}", 1)

    def queue_latency(self, pipe: Any, provider: str, account: str, seconds: float) -> None:
        """Record one provider call's duration in a pipeline (or Writes)."""
        bucket = next((f"{le:g}" for le in LATENCY_BUCKETS if seconds <= le), "+Inf")
        pipe.hincrby(self.latency_key, f"{provider}|{account}|{bucket}", 1)
        pipe.hincrbyfloat(self.latency_key, f"{provider}|{account}|sum", float(seconds))

    def outcomes(self) -> dict[tuple[str, str, str, str], int]:
        found: dict[tuple[str, str, str, str], int] = {}
        for field, value in self._redis.hgetall(self.outcomes_key).items():
            provider, account, outcome, reason = str(field).split("|", 3)
            found[(provider, account, outcome, reason)] = int(value)
        return found

    def latency(self) -> dict[tuple[str, str], dict[str, float]]:
        """(provider, account) -> {bucket or "sum": value}."""
        found: dict[tuple[str, str], dict[str, float]] = {}
        for field, value in self._redis.hgetall(self.latency_key).items():
            provider, account, name = str(field).split("|", 2)
            found.setdefault((provider, account), {})[name] = float(value)
        return found
