"""One run of a chat job (archive or unarchive), from its ticket to its ending; plain Python, tested
without Celery.

    no ticket (not handed out by a dispatcher of ours) ──────────► dead letter invalid_request
    runs of it that began and never ended past the cap ──────────► dead letter worker_lost
    another job holds the chat ──────────────────────────────────► duplicate
    the account is unknown to this process ──────────────────────► wait (a reload may bring it)
    call the provider on the slot its dispatch reserved; retries each take a permit:
        success ─────────────────────────────────────────────────► archived / already_archived
                                                                     (unarchived / already_...)
        permanent answer ────────────────────────────────────────► dead letter with its reason
        account-level answer (bad token, instance asleep...) ────► trip the circuit, park
        429, or no permit soon for a retry ──────────────────────► slow the account, wait its turn
        transient ─ tenacity retries inside the run (a few seconds)
                  ─ then a countdown in the job store ──────────► dead letter retries_exhausted

The dispatcher checked the lease, the permit, the chat's pending mark and the account's circuit
in the step that handed the job out (lua/dispatch.lua): a run needs no Redis round trip before
its call. Every ending is written by worker/stores/endings.py in one atomic step, with the job's
result. Nothing waits in a worker's memory: a job that must run later goes back to the job store.
A probe run (the parked job its paused account's circuit lets through) that gets any answer but
an account problem closes the circuit (worker/stores/circuit.py), which releases every parked job.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import redis
from celery.exceptions import SoftTimeLimitExceeded
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt

from config import Account, AccountRegistry, excerpt
from tasks.providers import (
    ProviderAdapter,
    ProviderAnswer,
    adapter_for,
    shared_client,
    transient_backoff,
)
from worker import tracing
from worker.contract.history import Delivery, Ticket
from worker.contract.jobs import ArchiveJob, InvalidJob, job_summary
from worker.contract.outcomes import (
    ARCHIVED,
    TRANSIENT,
    DeadLettered,
    Kind,
    Outcome,
    Reason,
)
from worker.contract.results import JobResult
from worker.contract.tasks import ARCHIVE_TASK, UNARCHIVE_TASK
from worker.dispatch.registry import task_method
from worker.services import Services
from worker.stores.client import refuses_writes
from worker.stores.deadletters import DeadLetter
from worker.stores.endings import Endings, RunRef
from worker.stores.jobs import JobBody, StoredJob, lease_member

logger = logging.getLogger("chat_archiver.jobs")

# A job for an account this process does not know yet (its accounts file is being changed) comes
# back after this long instead of being dead-lettered.
UNKNOWN_ACCOUNT_RETRY = 10.0
# The longest a run waits for a permit for a further call (a state read, a read-back): such
# methods are limited to about 1/s.
STATE_READ_WAIT = 1.5


@dataclass(frozen=True)
class RunContext:
    """Who runs: the job's id and task, the worker, the message's headers (the job's history and
    its dispatch ticket)."""

    task_id: str
    worker: str
    headers: Mapping[str, Any] = field(default_factory=dict)
    task: str = ARCHIVE_TASK
    origin: str = ""


def _shown(value: object) -> str:
    """A job field as a result shows it: a malformed job's value may be anything (a megabyte, a
    list, a pasted token), so it is redacted and capped like a dead letter's excerpt."""
    if value is None:
        return ""
    return excerpt(value if isinstance(value, str) else repr(value))


# How a run ends, for the Celery glue (tasks/archive/task.py).
@dataclass(frozen=True)
class Done:
    result: JobResult  # SUCCESS


@dataclass(frozen=True)
class Failed:
    result: JobResult
    error: DeadLettered  # FAILURE: the job is in the dead letters


@dataclass(frozen=True)
class Waiting:
    why: str  # RETRY: the job waits in the job store


@dataclass(frozen=True)
class Quiet:
    why: str  # this run no longer holds its job (its lease was given to another run)


RunEnd = Done | Failed | Waiting | Quiet


class _RateLimited(Exception):
    """No permit soon enough, or the provider answered 429: leave tenacity, wait the turn."""

    def __init__(self, wait: float, why: str) -> None:
        super().__init__(why)
        self.wait = wait
        self.why = why


@dataclass
class _Run:
    """One run of a job: what it has learnt so far."""

    context: RunContext
    delivery: Delivery
    ref: RunRef
    ticket: Ticket
    started: float = field(default_factory=time.monotonic)
    latencies: list[float] = field(default_factory=list)  # provider calls, written at the end
    on_ticket: bool = True  # the first attempt calls on the slot its dispatch reserved


class ArchiveRunner:
    def __init__(
        self,
        services: Services,
        accounts: AccountRegistry,
        endings: Endings,
        client_factory: Callable[[], httpx.Client] = shared_client,
        sleep: Callable[[float], None] = time.sleep,
        reload_accounts: Callable[[], AccountRegistry] | None = None,
    ) -> None:
        self.services = services
        self.settings = services.settings
        self.accounts = accounts
        self.endings = endings
        self.client_factory = client_factory
        self.sleep = sleep
        self.reload_accounts = reload_accounts

    # -- the job ------------------------------------------------------------------------------

    def run(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], context: RunContext) -> RunEnd:
        delivery = Delivery.from_headers(context.task_id, context.worker, context.headers)
        ticket = Ticket.from_headers(context.headers)
        if ticket is None:
            return self._not_dispatched(context, delivery, args, kwargs)
        body = JobBody(dict(kwargs), delivery.headers(), context.origin)
        ref = self.ticket_ref(context.task_id, context.task, ticket, body, parked=ticket.probe)
        run = _Run(context, delivery, ref, ticket)
        try:
            return self._run(run, args, kwargs)
        except redis.ResponseError as error:
            if not refuses_writes(error):
                raise
            # A write of the run's own (a permit, a late call's push, a pause) was refused: the
            # fleet takes no new work while Redis is full, and this job waits its turn, its
            # ending held until Redis takes it (Endings). Archiving twice is harmless.
            why = f"Redis refuses writes ({str(error)[:40]}): the job waits its turn"
            return self._wait_turn(run, why)

    def _run(self, run: _Run, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> RunEnd:
        context, ticket = run.context, run.ticket
        account = self._account(kwargs)
        lost = ticket.lost >= self.settings.max_deliveries  # runs that died: worker_lost
        if ticket.probe and (account is None or ticket.holder or lost):
            # This run cannot tell whether the account answers again: the next job probes.
            self.services.circuit.release_probe(ticket.account)
        try:
            if args:
                raise InvalidJob(f"{context.task} takes keyword arguments only")
            job = ArchiveJob.parse(kwargs)
        except InvalidJob as error:  # stored by hand, past the router's checks
            given = excerpt(f"args={args!r} kwargs={dict(kwargs)!r}")
            return self._dead_letter(run, Reason.INVALID_REQUEST, str(error), given=given)
        if lost:
            detail = f"began {ticket.lost + 1} runs that never ended (it stops its worker)"
            return self._dead_letter(run, Reason.WORKER_LOST, detail)
        if ticket.holder:
            # Another job for this chat is pending or running: it makes the one provider call.
            return self._finish(run, Outcome.DUPLICATE, duplicate_of=ticket.holder)
        if account is None:
            why = f"{job.account_key} is not in this worker's accounts file (yet)"
            self.endings.wait(run.ref, run.delivery, why, delay=UNKNOWN_ACCOUNT_RETRY)
            return Waiting(why)
        adapter = adapter_for(job.provider)
        try:
            answer = self._call_with_retries(job, account, adapter, run)
        except _RateLimited as limited:
            if ticket.probe:
                self.services.circuit.release_probe(account.key)
            return self._wait_turn(run, limited.why)
        except SoftTimeLimitExceeded:
            answer = None
        return self._conclude(run, account, answer)

    def _account(self, kwargs: Mapping[str, Any]) -> Account | None:
        """The job's account in this process's registry, or None (unknown, or a job too
        malformed to name one)."""
        provider, account_id = kwargs.get("provider"), kwargs.get("account")
        if not (isinstance(provider, str) and isinstance(account_id, str)):
            return None
        account = self.accounts.find(provider, account_id)
        if account is None and self.reload_accounts is not None:
            # Added to the file since this process last looked?
            self.accounts = self.reload_accounts()
            account = self.accounts.find(provider, account_id)
        return account

    def _conclude(self, run: _Run, account: Account, answer: ProviderAnswer | None) -> RunEnd:
        kind = answer.verdict.kind if answer is not None else Kind.TRANSIENT
        probing = run.ticket.probe
        circuit = self.services.circuit
        if kind is Kind.ACCOUNT:
            assert answer is not None and answer.verdict.reason is not None
            reason, detail = str(answer.verdict.reason), self._describe(answer)
            # Open the account's circuit (or keep it open after a failed probe, the cooldown
            # doubled).
            probe_in = circuit.trip(account, reason, detail, probing)
            logger.warning(
                "%s paused (%s): %s; next probe in %.0fs", account.key, reason, detail, probe_in
            )
            return self._park(run, account)
        if probing and kind is Kind.TRANSIENT:
            circuit.release_probe(account.key)  # could not tell: the next probes
        elif probing:
            # The account answered something other than an account problem: it works again.
            # Close the circuit and release the parked jobs; should that fail, the run still has
            # its answer, and the account's next probe tries again.
            try:
                released = circuit.resume(account)
            except Exception:
                logger.exception("could not release the parked jobs of %s", account.key)
            else:
                logger.info(
                    "%s answers again: circuit closed, %d parked jobs released",
                    account.key,
                    released,
                )
        if answer is not None and answer.verdict.kind is Kind.SUCCESS:
            assert answer.verdict.outcome is not None
            return self._finish(run, answer.verdict.outcome)
        if answer is not None and answer.verdict.kind is Kind.PERMANENT:
            assert answer.verdict.reason is not None
            return self._dead_letter(run, answer.verdict.reason, self._describe(answer), answer)
        # Transient (or out of time): again after a countdown, within the retry budget.
        why = self._describe(answer) if answer else "soft time limit reached"
        delivery = run.delivery
        if delivery.transient_rounds >= self.settings.retry_budget:
            detail = f"still failing after {delivery.attempts} attempts: {why}"
            return self._dead_letter(run, Reason.RETRIES_EXHAUSTED, detail, answer)
        countdown = min(
            self.settings.retry_countdown * 2**delivery.transient_rounds,
            self.settings.retry_countdown_max,
        )
        run.delivery = replace(delivery, transient_rounds=delivery.transient_rounds + 1)
        # Spread jobs that were stopped together so they do not come back together.
        countdown = max(0.05, countdown * random.uniform(1.0, 1.2))
        waiting = f"{why}: again in {countdown:.0f}s"
        # The countdown runs on Redis's clock, which every host agrees on.
        self.endings.wait(run.ref, run.delivery, waiting, delay=countdown, latencies=run.latencies)
        return Waiting(waiting)

    # -- provider calls -------------------------------------------------------------------------

    def _call_with_retries(
        self, job: ArchiveJob, account: Account, adapter: ProviderAdapter, run: _Run
    ) -> ProviderAnswer:
        retrying = Retrying(
            stop=stop_after_attempt(self.settings.transient_attempts),
            wait=transient_backoff(self.settings),
            retry=retry_if_result(lambda answer: answer.verdict.kind is Kind.TRANSIENT),
            # Out of attempts: hand back the last answer, the caller decides what comes next.
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
            before_sleep=lambda state: self._log_transient(job, state),
            sleep=self.sleep,
        )
        return retrying(self._attempt, job, account, adapter, run)

    def _attempt(
        self, job: ArchiveJob, account: Account, adapter: ProviderAdapter, run: _Run
    ) -> ProviderAnswer:
        limiter = self.services.limiter
        method = task_method(account, run.context.task)
        if run.on_ticket:  # the permit its dispatch reserved
            run.on_ticket = False
            deadline, slot, idle = run.ticket.deadline, run.ticket.slot, run.ticket.idle
        else:  # a retry: its own permit
            permit = limiter.acquire(account, method, self.settings.limiter_max_wait)
            if not permit.granted:
                raise _RateLimited(permit.wait, f"next {account.key} permit in {permit.wait:.2f}s")
            # From when Redis's answer came: it read its clock before, so never early.
            deadline, slot, idle = time.monotonic() + permit.wait, permit.slot, permit.wait == 0
        client = self.client_factory()
        if slot:
            remaining = deadline - time.monotonic()
            if remaining > 0:
                self.sleep(remaining)
            limiter.keep_distance(account, method, time.monotonic() - deadline, slot, idle)
        run.delivery = run.delivery.attempted(time.time())
        tracer = tracing.active(self.settings)
        if tracer is None:
            answer = self._call(client, job, account, adapter, run)
        else:
            unarchive = run.context.task == UNARCHIVE_TASK
            route = adapter.unarchive_route if unarchive else adapter.archive_route
            attempt = run.delivery.attempts
            with tracer.provider_call(adapter.provider, account.id, method, route, attempt) as call:
                answer = self._call(client, job, account, adapter, run)
                call.answered(answer.status, answer.verdict)
        run.latencies.append(answer.elapsed)
        if answer.verdict.kind is Kind.RATE_LIMITED:
            delay = limiter.penalize(account, method, answer.retry_after)
            raise _RateLimited(delay, f"{account.key} answered 429: next permit in {delay:.1f}s")
        return answer

    def _call(
        self,
        client: httpx.Client,
        job: ArchiveJob,
        account: Account,
        adapter: ProviderAdapter,
        run: _Run,
    ) -> ProviderAnswer:
        further = self._permits(account)
        if run.context.task == UNARCHIVE_TASK:
            return adapter.unarchive(client, account, job.chat_id, further)
        answer = adapter.archive(client, account, job.chat_id, further)
        if account.verify and answer.verdict.kind is Kind.SUCCESS:
            answer = self._verified(client, account, adapter, job.chat_id, answer, further)
        return answer

    def _permits(self, account: Account) -> Callable[[str], bool]:
        """A permit for another call a run makes, waited for up to STATE_READ_WAIT."""
        limiter = self.services.limiter

        def permit(method: str) -> bool:
            granted = limiter.acquire(account, method, STATE_READ_WAIT)
            if granted.granted and granted.wait > 0:
                self.sleep(granted.wait)
            return granted.granted

        return permit

    def _verified(
        self,
        client: httpx.Client,
        account: Account,
        adapter: ProviderAdapter,
        chat_id: str,
        answer: ProviderAnswer,
        permit: Callable[[str], bool],
    ) -> ProviderAnswer:
        """``verify = true``: read the chat's archive flag back. Shown not archived after the
        provider said it was (GREEN-API has answered "already archived" for chats that were
        not), the chat is unarchived and archived again, once, and the second answer counts;
        still not archived, the job is transient (retried later). A read-back that cannot tell
        keeps the answer."""
        method = adapter.archived_state_method
        if not permit(method) or adapter.archived_state(client, account, chat_id) is not False:
            return answer
        logger.warning(
            "%s %s: answered %s but not archived when read back: archiving it again",
            account.key,
            chat_id,
            answer.verdict.outcome,
        )
        spec = account.spec
        if permit(spec.unarchive_method):
            adapter.unarchive(client, account, chat_id, permit)
        if not permit(spec.archive_method):
            return replace(answer, verdict=TRANSIENT, meaning="archived again: no permit soon")
        again = adapter.archive(client, account, chat_id, permit)
        if again.verdict.kind is not Kind.SUCCESS:
            return again
        if permit(method) and adapter.archived_state(client, account, chat_id) is False:
            return replace(again, verdict=TRANSIENT, meaning="still not archived when read back")
        return replace(again, verdict=ARCHIVED, meaning="archived again after a false answer")

    # -- endings ---------------------------------------------------------------------------------

    def _result(
        self,
        run: _Run,
        outcome: Outcome,
        *,
        duplicate_of: str | None = None,
        dead_letter: tuple[str, str, str] | None = None,  # reason, detail, dead letter id
    ) -> JobResult:
        delivery, job = run.delivery, run.ref.kwargs
        result = JobResult(
            outcome=str(outcome),
            provider=_shown(job.get("provider")),
            account=_shown(job.get("account")),
            chat_id=_shown(job.get("chat_id")),
            attempts=delivery.attempts,
        )
        if job.get("request_id"):
            result["request_id"] = _shown(job["request_id"])
        if duplicate_of is not None:
            result["duplicate_of"] = duplicate_of
        if dead_letter is not None:
            result["reason"], result["detail"], result["dead_letter_id"] = dead_letter
        return result

    def _finish(
        self, run: _Run, outcome: Outcome, *, duplicate_of: str | None = None
    ) -> Done | Quiet:
        result = self._result(run, outcome, duplicate_of=duplicate_of)
        if not self.endings.final(run.ref, outcome, result=result, latencies=run.latencies):
            return self._lost_hold(run)
        self._log_outcome(result, run)
        return Done(result)

    def _dead_letter(
        self,
        run: _Run,
        reason: Reason,
        detail: str,
        answer: ProviderAnswer | None = None,
        given: str = "",
    ) -> Failed | Quiet:
        entry = self._entry(run.delivery, reason, detail, run.ref.kwargs, answer, given)
        error = self.endings.dead_lettered(run.ref, entry, run.latencies)
        return self._failed(run, error) if error is not None else self._lost_hold(run)

    def _entry(
        self,
        delivery: Delivery,
        reason: Reason,
        detail: str,
        kwargs: Mapping[str, Any],
        answer: ProviderAnswer | None = None,
        given: str = "",
    ) -> DeadLetter:
        now = time.time()
        return DeadLetter(
            reason=str(reason),
            job=job_summary(kwargs),
            detail=detail,
            http_status=answer.status if answer else None,
            excerpt=answer.excerpt if answer else given,
            attempts=delivery.attempts,
            first_attempt_at=delivery.first_attempt_at or now,
            last_attempt_at=delivery.last_attempt_at or now,
            worker=delivery.worker,
            task_id=delivery.task_id,
            trace_id=tracing.current_trace_id(self.settings),
        )

    def _failed(self, run: _Run, error: DeadLettered) -> Failed:
        dead_letter = (error.reason, error.detail, error.dead_letter_id)
        result = self._result(run, Outcome.DEAD_LETTERED, dead_letter=dead_letter)
        self._log_outcome(result, run)
        return Failed(result, error)

    def _lost_hold(self, run: _Run) -> Quiet:
        """The run's lease was given to another run (this node looked dead: Redis away for a
        lease, the process stopped): that run ends the job; this one's answer is not recorded."""
        why = f"job {run.ref.task_id} is no longer this run's (its lease ran out): not recorded"
        logger.warning(why)
        return Quiet(why)

    def _park(self, run: _Run, account: Account) -> Waiting:
        """Wait behind the account's open circuit; a probe that failed goes back to the head of
        the parked list and keeps its parked time (its maximum pause runs on)."""
        state = self.services.circuit.state(account)
        reason = state.reason or str(Reason.ACCOUNT_UNAVAILABLE)
        why = f"{account.key} paused ({reason}): {state.detail or 'waiting for a probe'}"
        self.endings.wait(
            run.ref, run.delivery, why, park=True, front=run.ticket.probe, latencies=run.latencies
        )
        logger.info(
            "parked %s %s job=%s (%s)",
            account.key,
            run.ref.kwargs.get("chat_id"),
            run.ref.task_id,
            reason,
        )
        return Waiting(why)

    def _wait_turn(self, run: _Run, why: str) -> Waiting:
        """The account's rate limit holds the job back: to the front of its wait list, for the
        dispatcher to hand out again when the account's next permit is near."""
        self.endings.wait(run.ref, run.delivery, why, front=True, latencies=run.latencies)
        return Waiting(why)

    def _not_dispatched(
        self,
        context: RunContext,
        delivery: Delivery,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> Failed:
        """A message that no dispatcher of ours handed out reached a ready queue (pushed there
        by hand): it is not in the job store, so it is dead-lettered as it came, once."""
        given = excerpt(f"args={args!r} kwargs={dict(kwargs)!r}")
        detail = "not handed out by a chat-archiver dispatcher (publish to the intake queue)"
        # Its dead letter counts no attempt, whatever its headers say.
        unrun = Delivery(context.task_id, context.worker)
        entry = self._entry(unrun, Reason.INVALID_REQUEST, detail, kwargs, given=given)
        self.endings.dead_letter_unstored(entry)
        stored = StoredJob(context.task_id, "", context.task, "", 0, JobBody(dict(kwargs)))
        run = _Run(context, delivery, RunRef(stored, ""), Ticket("", "", "", 0))
        return self._failed(run, DeadLettered(entry.reason, detail, entry.id))

    @staticmethod
    def ticket_ref(
        task_id: str, task: str, ticket: Ticket, body: JobBody, parked: bool = False
    ) -> RunRef:
        """The stored job a dispatched run (or the task's on_failure) ends, under its lease."""
        stored = StoredJob(task_id, ticket.account, task, ticket.mark, ticket.lost, body)
        return RunRef(stored, lease_member(task_id, ticket.token), parked=parked)

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _describe(answer: ProviderAnswer) -> str:
        status = f"HTTP {answer.status}" if answer.status is not None else "no answer"
        return f"{status}: {answer.meaning}"

    def _log_transient(self, job: ArchiveJob, state: RetryCallState) -> None:
        answer = state.outcome.result() if state.outcome and not state.outcome.failed else None
        logger.info(
            "transient failure for %s %s (attempt %d): %s",
            job.account_key,
            job.chat_id,
            state.attempt_number,
            self._describe(answer) if answer else "error",
        )

    @staticmethod
    def _log_outcome(result: JobResult, run: _Run) -> None:
        # The result's fields, not the job's: a malformed job's values are redacted and capped
        # there, so no log line can carry a megabyte or a token.
        outcome, reason = result["outcome"], result.get("reason")
        delivery = run.delivery
        duration = time.monotonic() - run.started
        level = logging.WARNING if outcome == Outcome.DEAD_LETTERED else logging.INFO
        logger.log(
            level,
            "%s%s %s:%s %s job=%s attempts=%d duration=%.3fs",
            outcome,
            f" ({reason})" if reason else "",
            result["provider"],
            result["account"],
            result["chat_id"],
            delivery.task_id,
            delivery.attempts,
            duration,
            extra={
                "job_id": delivery.task_id,
                "provider": result["provider"],
                "account": result["account"],
                "chat_id": result["chat_id"],
                "outcome": outcome,
                "reason": reason,
                "attempts": delivery.attempts,
                "duration": round(duration, 3),
                "request_id": result.get("request_id"),
                "source": _shown(run.ref.kwargs.get("source")) or None,
            },
        )
