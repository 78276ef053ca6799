"""OpenTelemetry traces of each job across its hops, opt-in (``ARCHIVER_TRACING``).

Off (the default), :func:`active` answers None and every hop skips its tracing: nothing of
OpenTelemetry is imported, no context is serialised and a job's record holds nothing more. On
(``otlp`` or ``console``), worker/tracing/spans.py does the work: one trace per job, from the
producer's enqueue (or the intake message's own ``traceparent``, as the Celery instrumentation
writes it) through the job store and the dispatch to the run and its provider calls.

The job's trace context travels as W3C trace context (``traceparent``, ``tracestate``) in its
record in the job store, with ``at``, the unix time it entered the store (the wait is measured
from there), and in the headers of the Celery message its dispatch publishes. What this module
does without OpenTelemetry (reading a carrier's trace id for a dead letter, picking a message's
trace headers) is plain string work.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from config.errors import ConfigError

if TYPE_CHECKING:
    from config import Settings
    from worker.tracing.spans import JobTracer

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
STORED_AT = "at"  # in a job's stored carrier: when it entered the job store (unix time)
# W3C trace context, version 00 (https://www.w3.org/TR/trace-context/#traceparent-header): the
# trace id is 32 hex digits, not all zero; what does not match is ignored, never refused.
_TRACEPARENT = re.compile(r"\A00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}\Z")
_ZERO_TRACE = "0" * 32
TRACESTATE_LIMIT = 512  # the specification's own bound on what a vendor must propagate

_state: tuple[Settings, int, JobTracer | None] | None = None
_building = threading.Lock()
_provider_override: Any = None  # a TracerProvider given by tests (the SDK's in-memory exporter)


class TracingUnavailable(ConfigError):
    """ARCHIVER_TRACING is on but the ``tracing`` extra is not installed."""


def active(settings: Settings) -> JobTracer | None:
    """This process's tracer, or None when tracing is off. Built once per process and per
    settings (a pool process builds its own after the fork: its spans name its pid)."""
    global _state
    if settings.tracing == "off":
        return None
    state = _state
    if state is not None and state[0] is settings and state[1] == os.getpid():
        return state[2]
    with _building:  # threads of one process (a threads pool) share one tracer
        state = _state
        if state is not None and state[0] is settings and state[1] == os.getpid():
            return state[2]
        try:
            from worker.tracing.spans import JobTracer, provider_for
        except ImportError:
            raise TracingUnavailable(
                f"ARCHIVER_TRACING={settings.tracing}: OpenTelemetry is not installed "
                "(pip install 'chat-archiver[tracing]')"
            ) from None
        tracer = JobTracer(_provider_override or provider_for(settings.tracing))
        _state = (settings, os.getpid(), tracer)
        return tracer


def use_provider(provider: Any) -> None:
    """Export through ``provider`` (an SDK TracerProvider) whenever tracing is on; None: build
    one from the settings again. For tests."""
    global _provider_override, _state
    _provider_override = provider
    _state = None


def current_trace_id(settings: Settings) -> str | None:
    """The trace id of the span running now (32 hex digits), or None: tracing off, or none."""
    tracer = active(settings)
    return tracer.current_trace_id() if tracer is not None else None


def job_carrier(settings: Settings) -> dict[str, Any]:
    """The current span's context to store with a job going back into the store, stamped now;
    empty when tracing is off or no span runs."""
    tracer = active(settings)
    return tracer.job_carrier() if tracer is not None else {}


def trace_id_of(carrier: Mapping[str, Any] | None) -> str | None:
    """The trace id in a carrier's ``traceparent`` (a stored job's, a message's headers)."""
    value = (carrier or {}).get(TRACEPARENT)
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.match(value)
    if match is None or match.group(1) == _ZERO_TRACE:
        return None
    return match.group(1)


def trace_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    """The W3C trace context in a message's headers, when it is well formed: what the Celery
    instrumentation (or any W3C propagator) of the publisher wrote. Anything else: empty."""
    if trace_id_of(headers) is None:
        return {}
    found = {TRACEPARENT: str(headers[TRACEPARENT])}
    state = headers.get(TRACESTATE)
    if isinstance(state, str) and len(state) <= TRACESTATE_LIMIT and state.isprintable():
        found[TRACESTATE] = state
    return found
