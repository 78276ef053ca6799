"""One run of an archive job, from admission to its ending; plain Python, tested without Celery.

    validate the job ─ invalid ──────────────────────────────► dead letter invalid_request
    find the account ─ unknown to this process ──────────────► wait (a reload may bring it)
    admission (one script, tasks/archive/admission.py):
        the job has ended, or a live run holds it ───────────► end quietly
        runs that began and never ended past the cap ────────► dead letter worker_lost
        another job holds the chat ──────────────────────────► duplicate
        the account's circuit is open ───────────────────────► park
        no permit within the max wait ───────────────────────► wait for the account's turn
    call the provider, every attempt behind a permit of the shared limiter:
        success ─────────────────────────────────────────────► archived / already_archived
        permanent answer ────────────────────────────────────► dead letter with its reason
        account-level answer (bad token, quota...) ──────────► trip the circuit, park
        429, or no permit soon ──────────────────────────────► slow the account, wait its turn
        transient ─ tenacity retries inside the run (a few seconds)
                  ─ then a countdown in the job store ──────► dead letter retries_exhausted

Every ending is written by worker/stores/endings.py in one atomic step. Nothing waits in a worker's
memory: a job that must run later goes back to the job store.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from celery.exceptions import SoftTimeLimitExceeded
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt

from config import Account, AccountRegistry, excerpt
from tasks.archive.admission import admit
from tasks.archive.pauses import AccountPauses
from tasks.providers import (
    ProviderAdapter,
    ProviderAnswer,
    adapter_for,
    shared_client,
    transient_backoff,
)
from worker.contract.history import Delivery
from worker.contract.jobs import ArchiveJob, InvalidJob, job_summary
from worker.contract.outcomes import DeadLettered, Kind, Outcome, Reason
from worker.contract.results import JobResult
from worker.services import Services
from worker.stores.circuit import Decision
from worker.stores.deadletters import DeadLetter
from worker.stores.endings import Endings, RunRef
from worker.stores.jobs import Lease
from worker.stores.limiter import Permit

logger = logging.getLogger("chat_archiver.jobs")

# A job for an account this process does not know yet (its accounts file is being changed) comes
# back after this long instead of being dead-lettered.
UNKNOWN_ACCOUNT_RETRY = 10.0


@dataclass(frozen=True)
class RunContext:
    """Who runs: the job's id, the worker, the message's headers (the job's history), and a
    token unique to this run (the job store's lease is held in its name)."""

    task_id: str
    worker: str
    headers: Mapping[str, Any] = field(default_factory=dict)
    run: str = field(default_factory=lambda: uuid.uuid4().hex)


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
    lease: Lease  # the job has ended (STALE) or a live run holds it (BUSY): nothing to do


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
    started: float = field(default_factory=time.monotonic)
    latencies: list[float] = field(default_factory=list)  # provider calls, written at the end
    # The permit taken at admission, and the monotonic times just before it was asked for and
    # when it came back.
    first_permit: tuple[float, float, Permit] | None = None


class ArchiveRunner:
    def __init__(
        self,
        services: Services,
        accounts: AccountRegistry,
        client_factory: Callable[[], httpx.Client] = shared_client,
        sleep: Callable[[float], None] = time.sleep,
        endings: Endings | None = None,
        pauses: AccountPauses | None = None,
        reload_accounts: Callable[[], AccountRegistry] | None = None,
    ) -> None:
        self.services = services
        self.settings = services.settings
        self.accounts = accounts
        self.client_factory = client_factory
        self.sleep = sleep
        self.endings = endings or Endings(services)
        self.pauses = pauses or AccountPauses(services, self.endings)
        self.reload_accounts = reload_accounts

    # -- the job ------------------------------------------------------------------------------

    def run(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], context: RunContext) -> RunEnd:
        delivery = Delivery.from_headers(context.task_id, context.worker, context.headers)
        try:
            if args:
                raise InvalidJob(
                    "archive.chat takes keyword arguments only (provider, account, chat_id)"
                )
            job = ArchiveJob.parse(kwargs)
        except InvalidJob as error:
            return self._malformed(context, delivery, args, kwargs, error)
        ref = RunRef(context.task_id, context.run, job.account_key, job.kwargs())
        run = _Run(context, delivery, ref)
        account = self._account(job)
        if account is None:
            return self._unknown_account(run)

        adapter = adapter_for(job.provider)
        asked = time.monotonic()
        admission = admit(
            self.services,
            account,
            adapter.archive_method,
            job.chat_id,
            context.task_id,
            context.run,
        )
        if admission.lease is not Lease.OK:
            return Quiet(admission.lease)
        if admission.deliveries > self.settings.max_deliveries:
            detail = f"began {admission.deliveries} runs that never ended (it stops its worker)"
            return self._dead_letter(run, Reason.WORKER_LOST, detail)
        if not admission.claim.won:
            # Another job for this chat is pending or running: it makes the one provider call.
            return self._finish(run, Outcome.DUPLICATE, duplicate_of=admission.claim.owner)
        if admission.decision is Decision.PARK:
            return self._park(run, account, probing=False)
        probing = admission.decision is Decision.PROBE
        if not admission.permit.granted or admission.permit.wait > self.settings.limiter_max_wait:
            if probing:
                self.services.circuit.release_probe(account)
            why = f"next {account.key} permit in {admission.permit.wait:.2f}s"
            return self._wait_turn(run, why)
        run.first_permit = (asked, time.monotonic(), admission.permit)
        try:
            answer = self._call_with_retries(job, account, adapter, run)
        except _RateLimited as limited:
            if probing:
                self.services.circuit.release_probe(account)
            return self._wait_turn(run, limited.why)
        except SoftTimeLimitExceeded:
            answer = None
        return self._conclude(run, account, answer, probing)

    def _account(self, job: ArchiveJob) -> Account | None:
        account = self.accounts.find(job.provider, job.account)
        if account is None and self.reload_accounts is not None:
            # Added to the file since this process last looked?
            self.accounts = self.reload_accounts()
            account = self.accounts.find(job.provider, job.account)
        return account

    def _conclude(
        self, run: _Run, account: Account, answer: ProviderAnswer | None, probing: bool
    ) -> RunEnd:
        kind = answer.verdict.kind if answer is not None else Kind.TRANSIENT
        circuit = self.services.circuit
        if kind is Kind.ACCOUNT:
            assert answer is not None and answer.verdict.reason is not None
            self.pauses.trip(account, str(answer.verdict.reason), self._describe(answer), probing)
            return self._park(run, account, probing=probing)
        if probing and kind is not Kind.TRANSIENT:
            # The account answered something other than an account problem: it works again.
            self.pauses.resume_or_leave_it_to_the_probe(account)
        if probing and kind is Kind.TRANSIENT:
            circuit.release_probe(account)  # could not tell: the next job probes
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
        countdown = self._jittered(countdown)
        self.endings.wait(
            run.ref, run.delivery, at=time.time() + countdown, latencies=run.latencies
        )
        return Waiting(f"{why}: again in {countdown:.0f}s")

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
        client = self.client_factory()
        limiter = self.services.limiter
        method = adapter.archive_method
        first, run.first_permit = run.first_permit, None
        if first is not None:
            asked, replied, permit = first
        else:  # a retry: its own permit
            asked = time.monotonic()
            permit = limiter.acquire(account, method, self.settings.limiter_max_wait)
            replied = time.monotonic()
            if not permit.granted:
                raise _RateLimited(permit.wait, f"next {account.key} permit in {permit.wait:.2f}s")
        # To the slot from when the permit came back, not from now: what the run did since (the
        # client, the admission's own steps) does not make the call late. Never early: Redis
        # read its clock before it replied.
        remaining = replied + permit.wait - time.monotonic()
        if remaining > 0:
            self.sleep(remaining)
        limiter.keep_distance(account, method, asked, permit)
        run.delivery = run.delivery.attempted(time.time())
        answer = adapter.archive(client, account, job.chat_id)
        run.latencies.append(answer.elapsed)
        if answer.verdict.kind is Kind.RATE_LIMITED:
            delay = limiter.penalize(account, method, answer.retry_after)
            raise _RateLimited(delay, f"{account.key} answered 429: next permit in {delay:.1f}s")
        return answer

    # -- endings ---------------------------------------------------------------------------------

    def _result(
        self,
        run: _Run,
        outcome: Outcome,
        *,
        duplicate_of: str | None = None,
        dead_letter: tuple[str, str, str] | None = None,  # reason, detail, dead letter id
    ) -> JobResult:
        delivery, job = run.delivery, run.ref.job
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

    def _finish(self, run: _Run, outcome: Outcome, *, duplicate_of: str | None = None) -> Done:
        result = self._result(run, outcome, duplicate_of=duplicate_of)
        self.endings.final(run.ref, outcome, latencies=run.latencies)
        self._log_outcome(result, run)
        return Done(result)

    def _dead_letter(
        self,
        run: _Run,
        reason: Reason,
        detail: str,
        answer: ProviderAnswer | None = None,
        given: str = "",
    ) -> Failed:
        now, delivery = time.time(), run.delivery
        entry = DeadLetter(
            reason=str(reason),
            job=dict(run.ref.job),
            detail=detail,
            http_status=answer.status if answer else None,
            excerpt=answer.excerpt if answer else given,
            attempts=delivery.attempts,
            first_attempt_at=delivery.first_attempt_at or now,
            last_attempt_at=delivery.last_attempt_at or now,
            worker=delivery.worker,
            task_id=delivery.task_id,
        )
        result = self._result(
            run, Outcome.DEAD_LETTERED, dead_letter=(str(reason), detail, entry.id)
        )
        self.endings.final(
            run.ref, Outcome.DEAD_LETTERED, reason=str(reason), entry=entry, latencies=run.latencies
        )
        self._log_outcome(result, run)
        return Failed(result, DeadLettered(str(reason), detail, entry.id))

    def _park(self, run: _Run, account: Account, *, probing: bool) -> Waiting:
        """Wait behind the account's open circuit; a probe that failed goes back to the head of
        the parked list and keeps its parked time (its maximum pause runs on)."""
        self.endings.park(run.ref, run.delivery, again=probing, latencies=run.latencies)
        self.pauses.after_parking(account)
        reason, why = self.pauses.describe(account)
        logger.info(
            "parked %s %s job=%s (%s)",
            account.key,
            run.ref.job.get("chat_id"),
            run.ref.task_id,
            reason,
        )
        return Waiting(why)

    def _wait_turn(self, run: _Run, why: str) -> Waiting:
        """The account's rate limit holds the job back: to the front of its wait list, for the
        dispatcher to hand out again when the account's next permit is near."""
        self.endings.wait(run.ref, run.delivery, front=True, latencies=run.latencies)
        return Waiting(why)

    def _malformed(
        self,
        context: RunContext,
        delivery: Delivery,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        error: InvalidJob,
    ) -> RunEnd:
        """A message that is not a job reached the task anyway (the router checks every message,
        so only one pushed past it onto the ready queue): dead-letter it as it came."""
        stored = self.services.jobs.record(context.task_id)
        account = stored.account if stored is not None else ""
        ref = RunRef(context.task_id, context.run, account, job_summary(kwargs))
        lease, _ = self.services.jobs.take_lease(context.task_id, context.run, 86400)
        if lease is not Lease.OK:
            return Quiet(lease)
        # The message as it came (redacted), fields job_summary leaves out included.
        given = excerpt(f"args={args!r} kwargs={dict(kwargs)!r}")
        return self._dead_letter(
            _Run(context, delivery, ref), Reason.INVALID_REQUEST, str(error), given=given
        )

    def _unknown_account(self, run: _Run) -> RunEnd:
        lease, _ = self.services.jobs.take_lease(run.ref.task_id, run.ref.run, 86400)
        if lease is not Lease.OK:
            return Quiet(lease)
        self.endings.wait(run.ref, run.delivery, at=time.time() + UNKNOWN_ACCOUNT_RETRY)
        return Waiting(f"{run.ref.account} is not in this worker's accounts file (yet)")

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _describe(answer: ProviderAnswer) -> str:
        status = f"HTTP {answer.status}" if answer.status is not None else "no answer"
        return f"{status}: {answer.meaning}"

    @staticmethod
    def _jittered(seconds: float) -> float:
        # Spread jobs that were stopped together so they do not come back together.
        return max(0.05, seconds * random.uniform(1.0, 1.2))

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
                "source": _shown(run.ref.job.get("source")) or None,
            },
        )
