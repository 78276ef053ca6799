"""Task ``archive.chat``: archive one chat and end in exactly one outcome.

    validate the job ─ invalid ──────────────────────────────► dead letter invalid_request
    find the account ─ unknown ──────────────────────────────► dead letter unknown_account
    call the provider, every attempt behind a permit of the shared limiter:
        success ─────────────────────────────────────────────► archived / already_archived
        permanent answer ────────────────────────────────────► dead letter with its reason
        account-level answer (bad token, quota...) ──────────► open the account's circuit, park
        429, or no permit soon ──────────────────────────────► slow the account, run again later
        transient ─ tenacity retries inside the task (a few seconds)
                  ─ then Celery retries with a countdown ───► dead letter retries_exhausted

While an account's circuit is open (worker/circuit.py), its jobs are parked without calling the
provider, and one probe at a time finds out whether it answers again.

The logic lives in ``ArchiveRunner`` (plain Python, tested without Celery); the Celery task only
turns its endings (tasks/delivery.py) into ``self.retry`` or a parked state. A run talks to
Redis twice besides the permits of its retries (tasks/bookkeeping.py): once to be admitted (its
delivery count, so a job that kills its worker every time ends in the dead letters instead of
looping; the claim on its chat; the account's circuit; its first permit), once when it ends.
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
from celery import Task, signals
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt

from config import Account, AccountRegistry, excerpt
from tasks import bookkeeping
from tasks.delivery import FIRST_PARKED_HEADER, Delivery, Parked, Reschedule
from tasks.providers import (
    ProviderAdapter,
    ProviderAnswer,
    adapter_for,
    shared_client,
    transient_backoff,
)
from worker import app
from worker.circuit import Decision, ParkedJob
from worker.deadletters import DeadLetter
from worker.jobs import TASK_NAME, ArchiveJob, InvalidJob, job_summary
from worker.limiter import Permit
from worker.outcomes import Kind, Outcome, Reason
from worker.producer import ArchiveProducer, default_producer
from worker.routing import account_queue
from worker.services import Services, get_accounts, get_services

logger = logging.getLogger("chat_archiver.jobs")

PROBE_TASK = "archive.probe"
PARKED_STATE = "PARKED"


class _Forward(Exception):
    """A job from the intake queue whose account has no permit free: move it to its queue."""


class _RateLimited(Exception):
    """No permit soon enough, or the provider answered 429: leave tenacity, reschedule."""

    def __init__(self, wait: float, why: str) -> None:
        super().__init__(why)
        self.wait = wait
        self.why = why


# A job that arrived on the intake queue runs at once only if its account has a permit this
# close; otherwise it moves to its account's queue, where it waits its turn without standing in
# front of other accounts' jobs.
INTAKE_MAX_WAIT = 0.1


@dataclass
class _Run:
    """One run of a job: what it has learnt so far and what it writes when it ends."""

    job: Mapping[str, Any]  # the keyword arguments, valid or not
    delivery: Delivery
    started: float = field(default_factory=time.monotonic)
    latencies: list[float] = field(default_factory=list)  # provider calls, written at the end
    # The permit taken with the admission, for the first attempt; forward instead when it was
    # refused and the job came from the intake queue.
    first_permit: Permit | None = None
    may_forward: bool = False


class ArchiveRunner:
    def __init__(
        self,
        services: Services,
        accounts: AccountRegistry,
        client_factory: Callable[[], httpx.Client] = shared_client,
        sleep: Callable[[float], None] = time.sleep,
        producer: Callable[[], ArchiveProducer] = default_producer,
    ) -> None:
        self.services = services
        self.settings = services.settings
        self.accounts = accounts
        self.client_factory = client_factory
        self.sleep = sleep
        self.producer = producer

    # -- the job ------------------------------------------------------------------------------

    def run(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any], delivery: Delivery
    ) -> dict[str, Any] | Reschedule | Parked:
        run = _Run(kwargs, delivery)
        try:
            if args:
                raise InvalidJob(
                    "archive.chat takes keyword arguments only (provider, account, chat_id)"
                )
            job = ArchiveJob.parse(kwargs)
        except InvalidJob as error:
            run.job = job_summary(kwargs)
            # The message as it came (redacted), fields job_summary leaves out included.
            given = excerpt(f"args={args!r} kwargs={dict(kwargs)!r}")
            return self._dead_letter(run, Reason.INVALID_REQUEST, str(error), given=given)
        run.job = job.kwargs()
        account = self.accounts.find(job.provider, job.account)
        if account is None:
            detail = f"no {job.provider} account {job.account} in the accounts file"
            return self._dead_letter(run, Reason.UNKNOWN_ACCOUNT, detail)

        adapter = adapter_for(job.provider)
        home = account_queue(self.settings.queue, account.provider, account.id)
        run.may_forward = delivery.queue != home
        max_wait = INTAKE_MAX_WAIT if run.may_forward else self.settings.limiter_max_wait
        admission = bookkeeping.admit(
            self.services, account, adapter.archive_method, job.chat_id, delivery.task_id, max_wait
        )
        if admission.deliveries > self.settings.max_deliveries:
            detail = (
                f"delivered {admission.deliveries} times without finishing (it stops its worker)"
            )
            return self._dead_letter(run, Reason.WORKER_LOST, detail)
        if not admission.claim.won:
            # Another job for this chat is pending or running: it makes the one provider call.
            return self._finish(run, Outcome.DUPLICATE, duplicate_of=admission.claim.owner)
        if admission.decision is Decision.PARK:
            return self.park(run, job, account, None)
        probing = admission.decision is Decision.PROBE
        run.may_forward = run.may_forward and not probing
        run.first_permit = admission.permit
        circuit = self.services.circuit
        try:
            answer = self._call_with_retries(job, account, adapter, run)
        except _Forward:
            return self._reschedule(run, 0, "forwarded to the account's queue", home)
        except _RateLimited as wait:
            if probing:
                circuit.release_probe(account)
            return self._reschedule(run, self._jittered(wait.wait), wait.why, home)
        except SoftTimeLimitExceeded:
            answer = None
        return self._conclude(run, job, account, answer, home, probing)

    def _conclude(
        self,
        run: _Run,
        job: ArchiveJob,
        account: Account,
        answer: ProviderAnswer | None,
        home: str,
        probing: bool,
    ) -> dict[str, Any] | Reschedule | Parked:
        kind = answer.verdict.kind if answer is not None else Kind.TRANSIENT
        if kind is Kind.ACCOUNT:
            assert answer is not None and answer.verdict.reason is not None
            chain = uuid.uuid4().hex
            probe_in = self.services.circuit.trip(
                account, str(answer.verdict.reason), self._describe(answer), probing, chain
            )
            started = (chain, probe_in) if probe_in is not None else None
            return self.park(run, job, account, answer, started)
        if probing and kind is not Kind.TRANSIENT:
            # The account answered something other than an account problem: it works again.
            self._resume_or_leave_it_to_the_probe(account)
        if probing and kind is Kind.TRANSIENT:
            self.services.circuit.release_probe(account)  # could not tell: the next job probes
        if answer is not None and answer.verdict.kind is Kind.SUCCESS:
            assert answer.verdict.outcome is not None
            return self._finish(run, answer.verdict.outcome)
        if answer is not None and answer.verdict.kind is Kind.PERMANENT:
            assert answer.verdict.reason is not None
            return self._dead_letter(run, answer.verdict.reason, self._describe(answer), answer)
        # Transient (or out of time): Celery retries, with a countdown, within the budget.
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
        return self._reschedule(run, self._jittered(countdown), why, home)

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
        # The client first: building it (its SSL context) takes tens of milliseconds, which
        # would land the call that late after its permit, too close to the next window.
        client = self.client_factory()
        limiter = self.services.limiter
        method = adapter.archive_method
        permit, run.first_permit = run.first_permit, None
        if permit is None:  # a retry: its own permit
            permit = limiter.acquire(account, method, self.settings.limiter_max_wait)
        if not permit.granted:
            if run.may_forward:
                raise _Forward
            raise _RateLimited(permit.wait, f"next {account.key} permit in {permit.wait:.1f}s")
        run.may_forward = False
        if permit.wait > 0:
            self.sleep(permit.wait)
        run.delivery = run.delivery.attempted(time.time())
        answer = adapter.archive(client, account, job.chat_id)
        run.latencies.append(answer.elapsed)
        if answer.verdict.kind is Kind.RATE_LIMITED:
            delay = limiter.penalize(account, method, answer.retry_after)
            raise _RateLimited(delay, f"{account.key} answered 429")
        return answer

    # -- endings: each writes what the run leaves behind in one round trip ---------------------

    def _close(
        self,
        run: _Run,
        *,
        outcome: Outcome | None = None,
        reason: str | None = None,
        entry: DeadLetter | None = None,
    ) -> None:
        bookkeeping.close(
            self.services,
            run.job,
            run.delivery.task_id,
            run.latencies,
            outcome=str(outcome) if outcome is not None else None,
            reason=reason,
            entry=entry,
        )

    def _finish(
        self, run: _Run, outcome: Outcome, entry: DeadLetter | None = None, **extra: Any
    ) -> dict[str, Any]:
        delivery, job = run.delivery, run.job
        result: dict[str, Any] = {
            "outcome": str(outcome),
            "provider": job.get("provider"),
            "account": job.get("account"),
            "chat_id": job.get("chat_id"),
            "attempts": delivery.attempts,
            **{key: value for key, value in extra.items() if value is not None},
        }
        if job.get("request_id"):
            result["request_id"] = job["request_id"]
        self._close(run, outcome=outcome, reason=result.get("reason"), entry=entry)
        self._log_outcome(result, job, delivery, time.monotonic() - run.started)
        return result

    def _dead_letter(
        self,
        run: _Run,
        reason: Reason,
        detail: str,
        answer: ProviderAnswer | None = None,
        given: str = "",
    ) -> dict[str, Any]:
        now, delivery = time.time(), run.delivery
        entry = DeadLetter(
            reason=str(reason),
            job=dict(run.job),
            detail=detail,
            http_status=answer.status if answer else None,
            excerpt=answer.excerpt if answer else given,
            attempts=delivery.attempts,
            first_attempt_at=delivery.first_attempt_at or now,
            last_attempt_at=delivery.last_attempt_at or now,
            worker=delivery.worker,
            task_id=delivery.task_id,
        )
        return self._finish(
            run,
            Outcome.DEAD_LETTERED,
            reason=str(reason),
            detail=detail,
            dead_letter_id=entry.id,
            entry=entry,
        )

    def dead_letter(
        self, job: Mapping[str, Any], reason: Reason, detail: str, delivery: Delivery
    ) -> dict[str, Any]:
        """Dead-letter a job from outside a run (a hard time limit, a job parked too long)."""
        return self._dead_letter(_Run(job, delivery), reason, detail)

    def _reschedule(self, run: _Run, countdown: float, why: str, queue: str) -> Reschedule:
        self._close(run)
        # A long Retry-After or a far permit must not become a countdown longer than the broker
        # keeps an unacknowledged message (the job would run twice): it comes back sooner and,
        # if the account is still held off, waits again.
        countdown = min(countdown, self.settings.retry_countdown_max)
        return Reschedule(countdown, run.delivery, why, queue)

    def park(
        self,
        run: _Run,
        job: ArchiveJob,
        account: Account,
        answer: ProviderAnswer | None,
        chain: tuple[str, float] | None = None,
    ) -> Parked:
        """Keep the job in the account's parked list until the account answers again; make
        sure a probe chain looks after the account (the one this trip starts, ``chain``: its
        token and the seconds to its first turn; or a replacement for a lost one)."""
        circuit = self.services.circuit
        before = run.delivery.first_parked_at  # parked before: a probe that failed again
        since = before or time.time()
        run.delivery = delivery = replace(run.delivery, first_parked_at=since)
        parked = ParkedJob(delivery.task_id, job.kwargs(), delivery.headers(), since)
        circuit.park(account, parked, again=before is not None)
        self._close(run)
        if not circuit.is_open(account):
            # The circuit closed between our check and our parking: nobody would release us.
            self._resume_or_leave_it_to_the_probe(account)
        if chain is None:
            token = uuid.uuid4().hex
            wait = circuit.chain_to_start(account, token)
            chain = (token, wait) if wait is not None else None
        if chain is not None:
            self.send_probe(account, *chain)
        state = circuit.state(account)
        reason = state.reason or (
            str(answer.verdict.reason)
            if answer and answer.verdict.reason
            else "account_unavailable"
        )
        why = f"{account.key} paused ({reason}): {state.detail or 'waiting for a probe'}"
        logger.info("parked %s %s job=%s (%s)", account.key, job.chat_id, delivery.task_id, reason)
        return Parked(delivery, reason, why)

    def send_probe(self, account: Account, chain: str, countdown: float) -> None:
        """Send the next turn of the account's probe chain (tasks/probe.py)."""
        self.producer().send(
            PROBE_TASK,
            {"provider": account.provider, "account": account.id, "chain": chain},
            countdown=countdown + 0.5,  # Redis's clock and ours may differ a little
        )

    def _resume_or_leave_it_to_the_probe(self, account: Account) -> None:
        try:
            self.resume(account)
        except Exception:
            # The job itself has its answer; failing it now would dead-letter a job that worked.
            # The probe chain's next turn finds the circuit closed and releases what is left.
            logger.exception("could not release the parked jobs of %s", account.key)

    def resume(self, account: Account) -> int:
        """Close the account's circuit and put every parked job back on its queue."""
        circuit = self.services.circuit
        circuit.close(account)
        released = 0
        with circuit.releasing(account) as lock:
            # The account works again: a later pause starts the jobs' clocks afresh.
            while lock is not None and (jobs := self.release(account, 500, afresh=True)):
                released += len(jobs)
                lock.reacquire()  # a long release keeps its lock
        logger.info(
            "%s answers again: circuit closed, %d parked jobs released", account.key, released
        )
        return released

    def release(self, account: Account, how_many: int, *, afresh: bool) -> list[ParkedJob]:
        """Put the oldest parked jobs back on the account's queue, then forget them (with the
        releasing lock held). ``afresh``: drop their first-parked time (the circuit closed);
        a probe keeps it, so its maximum pause runs on if it is parked again."""
        circuit = self.services.circuit
        jobs = circuit.head(account, how_many)
        if jobs:
            sent = [_unparked(job) for job in jobs] if afresh else jobs
            home = account_queue(self.settings.queue, account.provider, account.id)
            self.producer().republish(sent, home)
            circuit.remove(account, jobs)
        return jobs

    # -- helpers --------------------------------------------------------------------------------

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
    def _log_outcome(
        result: Mapping[str, Any], job: Mapping[str, Any], delivery: Delivery, duration: float
    ) -> None:
        outcome = result["outcome"]
        reason = result.get("reason")
        level = logging.WARNING if outcome == Outcome.DEAD_LETTERED else logging.INFO
        logger.log(
            level,
            "%s%s %s:%s %s job=%s attempts=%d duration=%.3fs",
            outcome,
            f" ({reason})" if reason else "",
            job.get("provider"),
            job.get("account"),
            job.get("chat_id"),
            delivery.task_id,
            delivery.attempts,
            duration,
            extra={
                "job_id": delivery.task_id,
                "provider": job.get("provider"),
                "account": job.get("account"),
                "chat_id": job.get("chat_id"),
                "outcome": outcome,
                "reason": reason,
                "attempts": delivery.attempts,
                "duration": round(duration, 3),
                "request_id": job.get("request_id"),
                "source": job.get("source"),
            },
        )


def _unparked(job: ParkedJob) -> ParkedJob:
    headers = {name: value for name, value in job.headers.items() if name != FIRST_PARKED_HEADER}
    return replace(job, headers=headers)


# -- the Celery task ------------------------------------------------------------------------------


@signals.worker_process_init.connect
def _warm_up(**_: Any) -> None:
    """Build each pool process's HTTP client and connections before its first job."""
    shared_client()
    get_services()


class ArchiveTask(Task):
    # Validation is ours (a malformed message is dead-lettered, not refused by a TypeError).
    typing = False

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        """An exception escaped the runner (a bug of ours) or the hard time limit killed the job:
        dead-letter it so it can be replayed once fixed. Runs in the worker's main process for a
        hard time limit."""
        delivery = Delivery.from_headers(task_id, self.request.hostname or "", self.request.headers)
        ArchiveRunner(get_services(), AccountRegistry()).dead_letter(
            job_summary(kwargs),
            Reason.INTERNAL_ERROR,
            f"{type(exc).__name__} escaped the task (see the worker log)",
            delivery,
        )


@app.task(bind=True, base=ArchiveTask, name=TASK_NAME, max_retries=None)
def archive_chat(self: ArchiveTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    request = self.request
    queue = (request.delivery_info or {}).get("routing_key")
    delivery = Delivery.from_headers(request.id, request.hostname or "", request.headers, queue)
    ending = ArchiveRunner(get_services(), get_accounts()).run(args, kwargs, delivery)
    if isinstance(ending, Parked):
        # Not done: the job waits, durably, in the account's parked list. A custom state keeps
        # AsyncResult.ready() false; Ignore acknowledges the message without a result.
        self.update_state(
            state=PARKED_STATE,
            meta={"outcome": "parked", "reason": ending.reason, "detail": ending.why},
        )
        raise Ignore()
    if isinstance(ending, Reschedule):
        raise self.retry(
            # Explicit, 0 included: with None Celery waits default_retry_delay (180 s).
            countdown=ending.countdown,
            queue=ending.queue,
            headers=ending.delivery.headers(),
            max_retries=None,
        )
    return ending
