"""Every Redis key chat-archiver writes, named in one place.

Lua scripts never build a key name themselves: they get full names, or a prefix to which they
append an account key (``provider:id``), from here.

State Redis (``ARCHIVER_REDIS_URL``, by default the broker's), the job store
(worker/stores/jobs.py):

    {p}:jobs            hash   task id -> its record (lua/lib/record.lua): every job not yet ended
    {p}:wait:{account}  list   task ids waiting for their account's turn, oldest first
    {p}:due             zset   account -> when its next job may be dispatched (µs); and
                               "@delayed" -> when the delayed set's earliest job is due
    {p}:delayed         zset   "account|task id" -> not before (µs): retries, eta
    {p}:active          zset   "task id|token" -> lease deadline (µs): a dispatched or running run
    {p}:tokens          string a counter that makes every dispatch's run tokens unique
    {p}:unknown         zset   account -> first seen (µs): jobs for an account no worker knows
    {p}:accounts        hash   account -> JSON: its limits, and its next probe while paused
    {p}:parked:{account}       list  task ids behind an open circuit, oldest first
    {p}:parked-since    hash   task id -> first parked (µs)
    {p}:nodes           zset   worker node -> last heartbeat (µs)
    {p}:wake            channel  published when work becomes due: idle dispatchers look
    {p}:janitor         string the janitor's turn (a short lock)

Job results are Celery's keys, ``celery-task-meta-{task id}``, written by the job's ending
(lua/close.lua) in the same step.

The other stores' keys (limiter, circuit, pending marks, unarchivable chats, dead letters,
metrics, sweep runs) are named below too, each described in its store's module (pending marks:
at ``Keys.pending``).

Broker Redis: the intake queue (``ARCHIVER_QUEUE``, what raw producers publish to), each node's
ready queue ``{queue}.ready.{node}`` (the only queue its Celery consumer reads: the dispatcher's
jobs reach the consumer in memory, so it holds only messages pushed there by hand), and
``{p}:routing:{node}``, the messages a node took from the intake and has not yet stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.contract.tasks import ARCHIVE_TASK


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
    def tokens(self) -> str:
        return f"{self.prefix}:tokens"

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
    def wake(self) -> str:
        return f"{self.prefix}:wake"

    @property
    def janitor(self) -> str:
        return f"{self.prefix}:janitor"

    # -- broker --------------------------------------------------------------------------------
    def routing(self, node: str) -> str:
        return f"{self.prefix}:routing:{node}"

    # -- per account state -------------------------------------------------------------------
    @property
    def limiter_prefix(self) -> str:
        return f"{self.prefix}:limiter:"

    def limiter(self, account: str, method: str) -> str:
        """publish_accounts.lua builds the same name from ``limiter_prefix``, the account and the
        method."""
        return f"{self.limiter_prefix}{account}:{method}"

    def circuit(self, account: str) -> str:
        return f"{self.prefix}:circuit:{account}"

    @property
    def circuit_probe_prefix(self) -> str:
        return f"{self.prefix}:circuit-probe:"

    def circuit_probe(self, account: str) -> str:
        return self.circuit_probe_prefix + account

    @property
    def paused(self) -> str:
        """zset account -> when its circuit opened: the accounts the janitor looks after."""
        return f"{self.prefix}:paused"

    def sweep_lock(self, account: str) -> str:
        return f"{self.prefix}:sweep-lock:{account}"

    def journals(self, account: str) -> str:
        """hash: what sweeps saw of a GREEN-API instance's journal settings (tasks/sweep)."""
        return f"{self.prefix}:journals:{account}"

    # -- sweep runs (worker/stores/sweep_runs.py) ----------------------------------------------
    @property
    def sweep_runs(self) -> str:
        return f"{self.prefix}:sweep-runs"

    def sweep_run(self, run_id: str) -> str:
        return f"{self.prefix}:sweep-run:{run_id}"

    def sweep_run_chats(self, run_id: str, which: str) -> str:
        """set: the run's chats that were ``which`` (selected, enqueued, archived)."""
        return f"{self.prefix}:sweep-run:{run_id}:{which}"

    @property
    def sweeps_held(self) -> str:
        return f"{self.prefix}:sweeps-held"

    @property
    def sweep_problems(self) -> str:
        return f"{self.prefix}:sweep-problems"

    def pending(self, account: str, chat_id: str, task: str = ARCHIVE_TASK) -> str:
        """A chat's "job pending" mark, one per action (archiving and unarchiving a chat are
        separate jobs): each chat once, at most one pending or running job per chat and action,
        whoever asks (two sweeps, a sweep and a producer). It holds the id of the job that owns
        it:

        - a producer claims it in the same step as it stores the job (lua/submit.lua); if
          another job holds it, nothing is stored and the caller gets that job's id;
        - a job the router stored from a raw message (which never had it) claims it when it is
          handed out (lua/dispatch.lua): held by another job, its run ends as a duplicate
          without a call;
        - the job keeps it through retries and waits (same task id), and its final ending
          releases it (lua/close.lua); a later, separate request then finds no key: a new job.

        The TTL only bounds the damage of a crash that skipped the release: were it to expire
        under a job that is still pending, a second job could be enqueued, and the provider
        would answer it "already archived": harmless."""
        action = "" if task == ARCHIVE_TASK else f"{task.rpartition('.')[2]}:"
        return f"{self.prefix}:pending:{action}{account}:{chat_id}"

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

    @property
    def metrics_sweeps(self) -> str:
        return f"{self.prefix}:metrics:sweeps"


RESULT_PREFIX = "celery-task-meta-"


def result_key(task_id: str) -> str:
    """Where Celery's Redis result backend keeps a task's result (its ``get_key_for_task``)."""
    return RESULT_PREFIX + task_id


def ready_queue(intake: str, node: str) -> str:
    """The queue one node's Celery consumer reads: the jobs its dispatcher handed out."""
    return f"{intake}.ready.{node}"
