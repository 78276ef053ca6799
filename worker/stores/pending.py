"""Each chat once: at most one pending or running job per (provider, account, chat) and action.

Two sweeps, or a sweep and a producer, may ask for the same chat while a job for it waits. One
key per chat and action, ``{prefix}:pending[:unarchive]:{provider}:{account}:{chat}``, holds the
id of the job that owns it:

- a producer claims it in the same step as it stores the job (lua/submit.lua); if another job
  holds it, nothing is stored and the caller gets that job's id;
- a job the router stored from a raw message (which never had it) claims it when it is handed
  out (lua/dispatch.lua): held by another job, its run ends as a duplicate without a call;
- the job keeps it through retries and waits (same task id), and its final ending releases it
  (lua/close.lua); a later, separate request then finds no key: it is a new job.

The TTL only bounds the damage of a crash that skipped the release: were it to expire under a
job that is still pending, a second job could be enqueued, and the provider would answer it
"already archived": harmless.
"""

from __future__ import annotations

import redis

from worker.contract.tasks import ARCHIVE_TASK
from worker.stores.keys import Keys


class PendingJobs:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self._keys = Keys(prefix)

    def key(self, provider: str, account: str, chat_id: str, task: str = ARCHIVE_TASK) -> str:
        return self._keys.pending(f"{provider}:{account}", chat_id, task)

    def owner(self, key: str) -> str | None:
        value = self._redis.get(key)
        return str(value) if value is not None else None
