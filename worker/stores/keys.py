"""Every Redis key chat-archiver writes, named in one place.

Lua scripts never build a key name themselves: they get full names, or a prefix to which they
append an account key (``provider:id``), from here.

State Redis (``ARCHIVER_REDIS_URL``, by default the broker's), the job store
(worker/stores/jobs.py):

    {p}:jobs            hash   task id -> "account\\nmessage": every job not yet ended
    {p}:wait:{account}  list   task ids waiting for their account's turn, oldest first
    {p}:due             zset   account -> when its next job may be dispatched (µs)
    {p}:delayed         zset   "account|task id" -> not before (µs): retries, eta
    {p}:active          zset   task id -> lease deadline (µs): dispatched or running
    {p}:runs            hash   task id -> token of the run that holds it
    {p}:permits         hash   task id -> the rate-limit slot its dispatch reserved (µs)
    {p}:deliveries:{id} hash   run token -> 1, for runs that began and never ended
    {p}:unknown         zset   account -> first seen (µs): jobs for an account no worker knows
    {p}:accounts        hash   account -> JSON: its limit and key names, for the dispatcher
    {p}:parked:{account}       list  task ids behind an open circuit, oldest first
    {p}:parked-since    hash   task id -> first parked (µs)
    {p}:nodes           zset   worker node -> last heartbeat (µs)
    {p}:doorbell        list   wakes one idle dispatcher when work arrives
    {p}:janitor         string the janitor's turn (a short lock)

The other stores' keys (limiter, circuit, pending marks, unarchivable chats, dead letters,
metrics) are named below too, each described in its store's module.

Broker Redis: the intake queue (``ARCHIVER_QUEUE``, what producers publish to), the ready queue
``{queue}.ready`` (the only queue a worker's Celery consumer reads), and
``{p}:routing:{node}``, the messages a node took from the intake and has not yet stored.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    # -- the job store -----------------------------------------------------------------------
    @property
    def jobs(self) -> str:
        return f"{self.prefix}:jobs"

    @property
    def wait_prefix(self) -> str:
        return f"{self.prefix}:wait:"

    def wait(self, account: str) -> str:
        return self.wait_prefix + account

    @property
    def due(self) -> str:
        return f"{self.prefix}:due"

    @property
    def delayed(self) -> str:
        return f"{self.prefix}:delayed"

    @property
    def active(self) -> str:
        return f"{self.prefix}:active"

    @property
    def runs(self) -> str:
        return f"{self.prefix}:runs"

    @property
    def permits(self) -> str:
        return f"{self.prefix}:permits"

    def deliveries(self, task_id: str) -> str:
        return f"{self.prefix}:deliveries:{task_id}"

    @property
    def unknown(self) -> str:
        return f"{self.prefix}:unknown"

    @property
    def accounts(self) -> str:
        return f"{self.prefix}:accounts"

    def parked(self, account: str) -> str:
        return f"{self.prefix}:parked:{account}"

    @property
    def parked_since(self) -> str:
        return f"{self.prefix}:parked-since"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}:nodes"

    @property
    def doorbell(self) -> str:
        return f"{self.prefix}:doorbell"

    @property
    def janitor(self) -> str:
        return f"{self.prefix}:janitor"

    # -- broker --------------------------------------------------------------------------------
    def routing(self, node: str) -> str:
        return f"{self.prefix}:routing:{node}"

    @property
    def routing_prefix(self) -> str:
        return f"{self.prefix}:routing:"

    # -- per account state -------------------------------------------------------------------
    def limiter(self, account: str, method: str) -> str:
        return f"{self.prefix}:limiter:{account}:{method}"

    def circuit(self, account: str) -> str:
        return f"{self.prefix}:circuit:{account}"

    def circuit_probe(self, account: str) -> str:
        return f"{self.prefix}:circuit-probe:{account}"

    def probe_chain(self, account: str) -> str:
        return f"{self.prefix}:probe-scheduled:{account}"

    @property
    def paused(self) -> str:
        """zset account -> when its circuit opened: the accounts the janitor looks after."""
        return f"{self.prefix}:paused"

    def sweep_lock(self, account: str) -> str:
        return f"{self.prefix}:sweep-lock:{account}"

    def pending(self, account: str, chat_id: str) -> str:
        return f"{self.prefix}:pending:{account}:{chat_id}"

    def unarchivable(self, account: str) -> str:
        """zset chat id -> when the provider refused it for having no incoming message."""
        return f"{self.prefix}:unarchivable:{account}"

    # -- dead letters (worker/stores/deadletters.py) -------------------------------------------
    @property
    def dlq_entries(self) -> str:
        return f"{self.prefix}:dlq:entries"

    @property
    def dlq_index(self) -> str:
        return f"{self.prefix}:dlq:index"

    @property
    def dlq_ids(self) -> str:
        return f"{self.prefix}:dlq:ids"

    @property
    def dlq_counts(self) -> str:
        return f"{self.prefix}:dlq:counts"

    # -- metrics (worker/stores/metrics.py) ----------------------------------------------------
    @property
    def metrics_outcomes(self) -> str:
        return f"{self.prefix}:metrics:outcomes"

    @property
    def metrics_latency(self) -> str:
        return f"{self.prefix}:metrics:latency"

    def recent(self, account: str) -> str:
        """list: the account's last outcomes (JSON), newest first."""
        return f"{self.prefix}:recent:{account}"


# kombu's Redis transport keeps messages delivered and not yet acknowledged in this hash (its
# name is kombu's default, ``unacked_key``; we never write it, status and the exporter count it).
KOMBU_UNACKED = "unacked"


def ready_queue(intake: str) -> str:
    """The queue a worker's Celery consumer reads: jobs the dispatcher released, nothing else."""
    return f"{intake}.ready"
