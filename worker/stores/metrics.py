"""Operational counters, kept in Redis so that every worker process and host adds to the same
numbers, and read by one exporter (``chat-archiver metrics``) and by ``chat-archiver status``.

    {prefix}:metrics:outcomes   hash  "provider|account|outcome|reason" -> jobs
    {prefix}:metrics:latency    hash  "provider|account|le" -> calls in that bucket,
                                      "provider|account|sum" (the count is the buckets' sum)
    {prefix}:recent:{provider}:{account}   list, the account's last outcomes (JSON), newest first

Limiter figures (permits, waits, 429s) are the limiter's own stats (worker/stores/limiter.py); dead
letters are counted by their store; queues are Redis lists.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from worker.stores.keys import Keys

# Provider call latency buckets, seconds (upper bounds; +Inf is implied).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RECENT = 20  # outcomes kept per account for `status`


class MetricsRecorder:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self._keys = Keys(prefix)
        self.outcomes_key = self._keys.metrics_outcomes
        self.latency_key = self._keys.metrics_latency

    def recent_key(self, provider: str, account: str) -> str:
        return self._keys.recent(f"{provider}:{account}")

    def outcome_keys(self, provider: str, account: str) -> list[str]:
        return [self.outcomes_key, self.recent_key(provider, account)]

    @staticmethod
    def outcome_args(
        provider: str, account: str, outcome: str, reason: str | None, chat_id: str | None
    ) -> list[str | int]:
        """The outcomes field, the recent-outcomes entry and how many entries to keep."""
        entry = json.dumps(
            {"at": round(time.time(), 3), "outcome": outcome, "reason": reason, "chat_id": chat_id}
        )
        return [f"{provider}|{account}|{outcome}|{reason or ''}", entry, RECENT]

    @staticmethod
    def latency_args(provider: str, account: str, seconds: float) -> list[str | float]:
        """The bucket field, the sum field and the value."""
        bucket = next((f"{le:g}" for le in LATENCY_BUCKETS if seconds <= le), "+Inf")
        return [f"{provider}|{account}|{bucket}", f"{provider}|{account}|sum", seconds]

    def queue_outcome(
        self,
        pipe: Any,
        provider: str,
        account: str,
        outcome: str,
        reason: str | None,
        chat_id: str | None,
    ) -> None:
        """Record a job's outcome in a pipeline (or worker/stores/writes.py's Writes)."""
        field, entry, keep = self.outcome_args(provider, account, outcome, reason, chat_id)
        recent = self.recent_key(provider, account)
        pipe.hincrby(self.outcomes_key, str(field), 1)
        pipe.lpush(recent, entry)
        pipe.ltrim(recent, 0, int(keep) - 1)

    def queue_latency(self, pipe: Any, provider: str, account: str, seconds: float) -> None:
        """Record one provider call's duration in a pipeline (or Writes)."""
        bucket, total, value = self.latency_args(provider, account, seconds)
        pipe.hincrby(self.latency_key, str(bucket), 1)
        pipe.hincrbyfloat(self.latency_key, str(total), float(value))

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

    def recent(self, provider: str, account: str) -> list[dict[str, Any]]:
        return [
            json.loads(item)
            for item in self._redis.lrange(self.recent_key(provider, account), 0, RECENT - 1)
        ]
