"""The spans of a job, made only while tracing is on (worker/tracing imports this lazily).

One trace per job; its spans, in the processes that make them:

    enqueue <task>    producer    PRODUCER  the job entered the job store (its parent: the
                                            caller's current span, if any)
    route <task>      worker      CONSUMER  instead of enqueue, for a message from the intake
                                            queue (its parent: the message's traceparent)
    wait <task>       worker      INTERNAL  in the job store, from its entry to its dispatch
    dispatch <task>   worker      PRODUCER  handed out to a node's consumer
    run <task>        pool        CONSUMER  the run, with its ending (outcome, reason)
    <provider> <method>  pool     CLIENT    each provider call attempt: HTTP method, route
                                            template, status code, attempt, outcome

A job that waits again (a retry's countdown, a 429, a paused account) is stored with its run's
context, so its next wait and dispatch hang under the run that sent it back.

Never recorded: tokens (GREEN-API's sits in its URL path, so no URL is: a route template is),
chat ids (personal data: a phone number), request ids, a provider's answer, any exception's
text (only its type). Attributes name the job by its task id and account.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from worker.contract.outcomes import Kind, Verdict
from worker.stores.jobs import DispatchedJob, NewJob
from worker.tracing import STORED_AT, TRACEPARENT, TRACESTATE, trace_headers

SCOPE = "chat-archiver"
DEFAULT_SERVICE = "chat-archiver"

# Attribute names: OpenTelemetry's semantic conventions where one fits, ours under archiver.*.
MESSAGE_ID = "messaging.message.id"
DESTINATION = "messaging.destination.name"
PROVIDER = "archiver.provider"
ACCOUNT = "archiver.account"  # the provider's account id (idInstance, device id): no secret
TASK = "archiver.task"
ENQUEUED = "archiver.enqueue.status"  # new, stored, done, already_pending
WAITED = "archiver.job.waited_s"
LOST = "archiver.job.lost_runs"
PROBE = "archiver.job.probe"
OUTCOME = "archiver.outcome"
REASON = "archiver.reason"
DEAD_LETTER = "archiver.dead_letter_id"
ATTEMPT = "archiver.attempt"
VERDICT = "archiver.verdict"
HTTP_METHOD = "http.request.method"
URL_TEMPLATE = "url.template"
HTTP_STATUS = "http.response.status_code"
ERROR_TYPE = "error.type"

_propagator = TraceContextTextMapPropagator()  # W3C only: no baggage, whatever a caller set


def provider_for(mode: str) -> Any:
    """The provider spans go to: the host application's, when it set one (a producer inside a
    traced service), else ours, exporting as ``mode`` says. The exporter reads the SDK's own
    variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, ...)."""
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        return current
    resource = Resource.create({"process.pid": os.getpid()})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE}))
    provider = TracerProvider(resource=resource)
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter: Any = OTLPSpanExporter()
    else:
        exporter = ConsoleSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _flush_when_the_process_ends(provider)
    return provider


def _flush_when_the_process_ends(provider: TracerProvider) -> None:
    """Celery's pool processes leave with os._exit, past atexit: export what they hold when
    Celery says they stop (and the main process when the worker does)."""
    from celery import signals

    pid = os.getpid()

    def flush(**_: Any) -> None:
        if os.getpid() == pid:
            provider.shutdown()

    signals.worker_process_shutdown.connect(flush, weak=False)
    signals.worker_shutdown.connect(flush, weak=False)


def _account_attributes(account: str) -> dict[str, str]:
    provider, _, account_id = account.partition(":")
    return {PROVIDER: provider, ACCOUNT: account_id} if account_id else {}


def _job_attributes(task_id: str, task: str, account: str) -> dict[str, Any]:
    return {MESSAGE_ID: task_id, TASK: task, **_account_attributes(account)}


def _failed(span: Span, error: BaseException) -> None:
    """Its type only: an exception's text may quote a URL (a token) or a chat id."""
    name = type(error).__qualname__
    span.set_attribute(ERROR_TYPE, name)
    span.set_status(Status(StatusCode.ERROR, name))


class ProviderCall:
    """The span of one provider call attempt, told its answer."""

    def __init__(self, span: Span) -> None:
        self.span = span

    def answered(self, status: int | None, verdict: Verdict) -> None:
        outcome = verdict.outcome or verdict.reason or verdict.kind
        self.span.set_attribute(OUTCOME, str(outcome))
        self.span.set_attribute(VERDICT, str(verdict.kind))
        if status is not None:
            self.span.set_attribute(HTTP_STATUS, status)
        if verdict.kind not in (Kind.SUCCESS, Kind.RATE_LIMITED):
            self.span.set_status(Status(StatusCode.ERROR, str(outcome)))


class JobTracer:
    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(SCOPE)

    # -- carriers ---------------------------------------------------------------------------

    @staticmethod
    def _carrier(context: Context | None = None) -> dict[str, Any]:
        carrier: dict[str, Any] = {}
        _propagator.inject(carrier, context=context)
        return {k: v for k, v in carrier.items() if k in (TRACEPARENT, TRACESTATE)}

    @classmethod
    def _stored(cls, span: Span, at: float) -> dict[str, Any]:
        carrier = cls._carrier(trace.set_span_in_context(span))
        if carrier:
            carrier[STORED_AT] = at
        return carrier

    @staticmethod
    def _parent(carrier: Mapping[str, Any]) -> Context:
        """The context a carrier names; an empty one (a new trace) when it names none."""
        return _propagator.extract(trace_headers(carrier), context=Context())

    def job_carrier(self) -> dict[str, Any]:
        span = trace.get_current_span()
        if not span.get_span_context().is_valid:
            return {}
        return self._stored(span, time.time())

    def current_trace_id(self) -> str | None:
        context = trace.get_current_span().get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    # -- entering the job store ---------------------------------------------------------------

    def enqueue(self, jobs: Sequence[NewJob]) -> tuple[list[NewJob], list[Span]]:
        """A span per job, each the job's own trace unless the caller has a span running; the
        jobs come back carrying their span's context."""
        at = time.time()
        traced, spans = [], []
        for job in jobs:
            span = self.tracer.start_span(
                f"enqueue {job.task}",
                kind=SpanKind.PRODUCER,
                attributes=_job_attributes(job.task_id, job.task, job.account),
            )
            spans.append(span)
            traced.append(replace(job, body=replace(job.body, trace=self._stored(span, at))))
        return traced, spans

    def stored(self, spans: Sequence[Span], statuses: Sequence[str]) -> None:
        """What the job store made of each job: new, stored/done (a resend), or held by
        another job (its id: 'already_pending')."""
        for span, status in zip(spans, statuses, strict=True):
            known = status in ("new", "stored", "done")
            span.set_attribute(ENQUEUED, status if known else "already_pending")
            span.end()

    def not_stored(self, spans: Sequence[Span], error: BaseException) -> None:
        for span in spans:
            _failed(span, error)
            span.end()

    def route(self, job: NewJob, headers: Mapping[str, Any], intake: str) -> tuple[NewJob, Span]:
        """A job read from the intake, under the trace its message came with (a new one when
        it came with none)."""
        span = self.tracer.start_span(
            f"route {job.task}",
            context=self._parent(headers),
            kind=SpanKind.CONSUMER,
            attributes={
                **_job_attributes(job.task_id, job.task, job.account),
                DESTINATION: intake,
            },
        )
        carrier = self._stored(span, time.time())
        return replace(job, body=replace(job.body, trace=carrier)), span

    def refused(self, headers: Mapping[str, Any], task_id: str | None, reason: str) -> str:
        """A message the router dead-letters: one span, under its trace; its trace id."""
        attributes: dict[str, Any] = {REASON: reason}
        if task_id:
            attributes[MESSAGE_ID] = task_id
        span = self.tracer.start_span(
            "route (refused)",
            context=self._parent(headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        span.set_status(Status(StatusCode.ERROR, reason))
        span.end()
        return format(span.get_span_context().trace_id, "032x")

    # -- dispatch -----------------------------------------------------------------------------

    @contextmanager
    def dispatching(self, job: DispatchedJob, queue: str) -> Iterator[dict[str, str]]:
        """Its wait in the store (a span from when it entered) and its dispatch; yields the
        headers that carry the dispatch's context to the run."""
        parent = self._parent(job.body.trace)
        attributes = _job_attributes(job.task_id, job.task, job.account)
        now_ns = time.time_ns()
        at = job.body.trace.get(STORED_AT)
        if isinstance(at, int | float) and not isinstance(at, bool) and at > 0:
            start_ns = min(int(at * 1e9), now_ns)
            attributes[WAITED] = (now_ns - start_ns) / 1e9
            wait = self.tracer.start_span(
                f"wait {job.task}", context=parent, start_time=start_ns, attributes=attributes
            )
            wait.end(end_time=now_ns)
        span = self.tracer.start_span(
            f"dispatch {job.task}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={**attributes, DESTINATION: queue, LOST: job.lost, PROBE: job.probe},
        )
        try:
            yield self._carrier(trace.set_span_in_context(span))
        except BaseException as error:
            _failed(span, error)
            raise
        finally:
            span.end()

    # -- the run --------------------------------------------------------------------------------

    @contextmanager
    def running(
        self, task: str, task_id: str, headers: Mapping[str, Any], account: str
    ) -> Iterator[Span]:
        """The run's span, current while it runs (its provider calls and its ending see it)."""
        span = self.tracer.start_span(
            f"run {task}",
            context=self._parent(headers),
            kind=SpanKind.CONSUMER,
            attributes=_job_attributes(task_id, task, account),
        )
        with trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            try:
                yield span
            except BaseException as error:
                _failed(span, error)
                raise

    @staticmethod
    def ended(
        span: Span,
        outcome: str,
        *,
        reason: str | None = None,
        dead_letter_id: str | None = None,
        attempts: int | None = None,
    ) -> None:
        span.set_attribute(OUTCOME, outcome)
        if reason:
            span.set_attribute(REASON, reason)
        if dead_letter_id:
            span.set_attribute(DEAD_LETTER, dead_letter_id)
        if attempts is not None:
            span.set_attribute(ATTEMPT, attempts)
        if outcome == "dead_lettered":
            span.set_status(Status(StatusCode.ERROR, reason or outcome))

    @contextmanager
    def provider_call(
        self,
        provider: str,
        account_id: str,
        method: str,
        route: tuple[str, str],
        attempt: int,
    ) -> Iterator[ProviderCall]:
        """One attempt at the provider: ``route`` is (HTTP method, route template)."""
        verb, template = route
        span = self.tracer.start_span(
            f"{provider} {method}",
            kind=SpanKind.CLIENT,
            attributes={
                PROVIDER: provider,
                ACCOUNT: account_id,
                HTTP_METHOD: verb,
                URL_TEMPLATE: template,
                ATTEMPT: attempt,
            },
        )
        with trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            try:
                yield ProviderCall(span)
            except BaseException as error:
                _failed(span, error)
                raise
