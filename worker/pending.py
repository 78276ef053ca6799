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

from worker.state import queue_script

# Lua functions, so a job's admission script (tasks/bookkeeping.py) can compose them.
# claim: 1 when `task_id` owns the key (now or already), else the owner's id.
CLAIM_LUA = """
local function claim(key, task_id, ttl)
  local owner = redis.call('GET', key)
  if not owner then
    redis.call('SET', key, task_id, 'EX', ttl)
    return 1
  end
  if owner == task_id then
    redis.call('EXPIRE', key, ttl)
    return 1
  end
  return owner
end
"""

# release: delete the key if `task_id` holds it (an empty key name: nothing to release).
RELEASE_LUA = """
local function release(key, task_id)
  if key ~= '' and redis.call('GET', key) == task_id then
    return redis.call('DEL', key)
  end
  return 0
end
"""

# A batch in one call: KEYS are the chats' keys, ARGV their task ids, then the TTL. A bulk
# enqueue claims 500 chats with one command instead of 500, and hears back only about the chats
# another job holds: {position, owner, position, owner, ...}.
_CLAIM_MANY = (
    CLAIM_LUA
    + """
local ttl, held = ARGV[#KEYS + 1], {}
for i = 1, #KEYS do
  local owner = claim(KEYS[i], ARGV[i], ttl)
  if owner ~= 1 then held[#held + 1] = i; held[#held + 1] = owner end
end
return held
"""
)
_RELEASE = RELEASE_LUA + "return release(KEYS[1], ARGV[1])"


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
        self._claim_many = client.register_script(_CLAIM_MANY)
        self._release = client.register_script(_RELEASE)

    def key(self, provider: str, account: str, chat_id: str) -> str:
        return f"{self._prefix}:pending:{provider}:{account}:{chat_id}"

    def claim_args(self, task_id: str) -> list[str | int]:
        """ARGV of ``claim`` after its key (for scripts that compose CLAIM_LUA)."""
        return [task_id, self._ttl]

    @staticmethod
    def claim_result(key: str, task_id: str, reply: object) -> Claim:
        return Claim(key, task_id, task_id if reply == 1 else str(reply))

    def claim(self, key: str, task_id: str) -> Claim:
        return self.claim_many([(key, task_id)])[0]

    def claim_many(self, wanted: Sequence[tuple[str, str]]) -> list[Claim]:
        """Claim (key, task id) pairs in one script call; a key given twice goes to the first."""
        if not wanted:
            return []
        keys = [key for key, _ in wanted]
        held = self._claim_many(keys=keys, args=[*(task_id for _, task_id in wanted), self._ttl])
        owners = dict(zip(held[::2], held[1::2], strict=True))  # 1-based positions
        return [
            Claim(key, task_id, str(owners.get(position, task_id)))
            for position, (key, task_id) in enumerate(wanted, start=1)
        ]

    def release_many(self, claims: Sequence[Claim]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for claim in claims:
            if claim.won:
                queue_script(pipe, self._release, [claim.key], [claim.task_id])
        pipe.execute()

    def owner(self, key: str) -> str | None:
        value = self._redis.get(key)
        return str(value) if value is not None else None
