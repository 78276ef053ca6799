"""Each chat once: at most one pending or running archive job per (provider, account, chat).

Two sweeps, or a sweep and a producer, may ask for the same chat while a job for it waits in a
queue. One key per chat, ``{prefix}:pending:{provider}:{account}:{chat}``, holds the id of the
job that owns it:

- producers claim it (SET NX) before publishing; if another job holds it, they publish nothing
  and hand back that job's id;
- the task claims it again when it starts (jobs sent with raw ``send_task`` never had it), keeps
  it through retries (same task id), and releases it at its final outcome;
- a later, separate request after the first finished finds no key: it is a new job.

The TTL only bounds the damage of a crash that skipped the release; the worker refreshes it on
every delivery. Were it to expire under a job that is still pending, a second job could be
enqueued, and the provider would answer it "already archived": harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

# Returns 1 when `task_id` owns the key (now or already), else the owner's id.
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
if owner == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
return owner
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Claim:
    key: str
    task_id: str
    owner: str  # == task_id when the claim succeeded

    @property
    def won(self) -> bool:
        return self.owner == self.task_id


class PendingJobs:
    def __init__(self, client: redis.Redis, prefix: str, ttl: int) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl = ttl
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    def key(self, provider: str, account: str, chat_id: str) -> str:
        return f"{self._prefix}:pending:{provider}:{account}:{chat_id}"

    def claim(self, key: str, task_id: str) -> Claim:
        result = self._claim(keys=[key], args=[task_id, self._ttl])
        return Claim(key, task_id, task_id if result == 1 else str(result))

    def claim_many(self, wanted: Sequence[tuple[str, str]]) -> list[Claim]:
        """Claim (key, task id) pairs in one round trip; a key given twice goes to the first."""
        pipe = self._redis.pipeline(transaction=False)
        for key, task_id in wanted:
            self._claim(keys=[key], args=[task_id, self._ttl], client=pipe)
        results = pipe.execute()
        return [
            Claim(key, task_id, task_id if result == 1 else str(result))
            for (key, task_id), result in zip(wanted, results, strict=True)
        ]

    def release(self, key: str, task_id: str) -> bool:
        return bool(self._release(keys=[key], args=[task_id]))

    def release_many(self, claims: Sequence[Claim]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for claim in claims:
            if claim.won:
                self._release(keys=[claim.key], args=[claim.task_id], client=pipe)
        pipe.execute()

    def owner(self, key: str) -> str | None:
        value = self._redis.get(key)
        return str(value) if value is not None else None
