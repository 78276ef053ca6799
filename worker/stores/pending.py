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

from worker.stores.keys import Keys
from worker.stores.scripts import load


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
        self._keys = Keys(prefix)
        self._ttl = ttl

    def key(self, provider: str, account: str, chat_id: str) -> str:
        return self._keys.pending(f"{provider}:{account}", chat_id)

    def claim(self, key: str, task_id: str) -> Claim:
        return self.claim_many([(key, task_id)])[0]

    def claim_many(self, wanted: Sequence[tuple[str, str]]) -> list[Claim]:
        """Claim (key, task id) pairs in one script call; a key given twice goes to the first."""
        if not wanted:
            return []
        held = load("claim_many").run(
            self._redis,
            keys={"chats": [key for key, _ in wanted]},
            args={"ttl": self._ttl},
            rest=[task_id for _, task_id in wanted],
        )
        owners = dict(zip(held[::2], held[1::2], strict=True))  # 1-based positions
        return [
            Claim(key, task_id, str(owners.get(position, task_id)))
            for position, (key, task_id) in enumerate(wanted, start=1)
        ]

    def release_many(self, claims: Sequence[Claim]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for claim in claims:
            if claim.won:
                load("release").queue(pipe, keys={"chat": claim.key}, args={"id": claim.task_id})
        pipe.execute()

    def owner(self, key: str) -> str | None:
        value = self._redis.get(key)
        return str(value) if value is not None else None
