"""Traces across a job's hops (worker/tracing), in one process with the SDK's in-memory exporter:
a real Redis, the real producer, router, dispatcher and Celery task function, HTTP mocked with
respx. And, in a clean interpreter, what tracing off costs: nothing imported, nothing stored."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from celery import Celery
from celery.exceptions import Retry
from click.testing import CliRunner
from kombu import Message
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from config import ConfigError, load_settings
from tasks.archive.task import archive_chat, run_chat_job
from tests.conftest import CANARY, GREEN_ID, Env, accounts_toml, use_environment
from tests.support import eventually
from worker import tracing
from worker.celery_app import create_app
from worker.cli import main as cli
from worker.contract import envelope
from worker.contract.outcomes import DeadLettered, Reason
from worker.dispatch.dispatcher import Dispatcher
from worker.dispatch.handoff import Handoff
from worker.dispatch.registry import dispatch_entry
from worker.dispatch.router import Router
from worker.producer import ArchiveProducer
from worker.services import reset_services
from worker.stores.client import connect
from worker.stores.deadletters import DeadLetter
from worker.stores.endings import Endings
from worker.stores.keys import ready_queue

REPOSITORY = Path(__file__).resolve().parents[2]
NODE = "w1@host#1-abc"
CHAT = "79001234567@c.us"
JOB = {"provider": "green-api", "account": GREEN_ID, "chat_id": CHAT, "request_id": "crm-42"}
GREEN_URL = f"http://provider.test/waInstance{GREEN_ID}/archiveChat/{CANARY}"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.use_provider(provider)
    yield memory
    tracing.use_provider(None)


def environment(monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path, mode: str) -> Env:
    """A fast retry countdown and no tenacity waits: a job that waits again runs again at once."""
    accounts_file = tmp_path / "accounts.toml"
    accounts_file.write_text(accounts_toml("http://provider.test", green_rate="1000/s"))
    return use_environment(
        monkeypatch,
        redis_url,
        accounts_file,
        tracing=mode,
        retry_countdown="0.05",
        transient_wait_max="0",
    )


@pytest.fixture
def traced(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path, exporter: Any
) -> Iterator[Env]:
    yield environment(monkeypatch, redis_url, tmp_path, "console")
    reset_services()


class Hops:
    """A job's way as the processes take it: enqueue, dispatch, run (the task function)."""

    def __init__(self, env: Env, app: Celery) -> None:
        self.env = env
        self.app = app
        self.producer = ArchiveProducer(app, env.settings, env.redis)
        self.received: list[Message] = []
        handoff = Handoff(ready_queue(env.settings.queue, NODE))
        handoff.attach(self, self.received.append)  # a consumer's loop runs callbacks at once
        self.dispatcher = Dispatcher(
            env.services.jobs, app, handoff, lambda: 1, tracer=tracing.active(env.settings)
        )

    def call_soon(self, callback: Callable[[], None]) -> None:
        callback()

    def dispatch(self, timeout: float = 5.0) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The next job handed out: task id, keyword arguments, the message's headers."""

        def handed_out() -> Message | None:
            self.dispatcher.step()
            return self.received.pop(0) if self.received else None

        message = eventually(handed_out, timeout, "a dispatch", step=0.02)
        _, kwargs, _ = message.decode()
        return message.headers["id"], kwargs, message.headers

    def run(self, task_id: str, kwargs: dict[str, Any], headers: dict[str, Any]) -> Any:
        """What the pool process calls, its ending as Celery would see it."""
        archive_chat.push_request(id=task_id, headers=headers, hostname="w1@host")
        try:
            return run_chat_job(archive_chat, (), kwargs)
        except (DeadLettered, Retry) as ending:
            return ending
        finally:
            archive_chat.pop_request()


@pytest.fixture
def app(traced: Env) -> Iterator[Celery]:
    celery = create_app(traced.settings)
    yield celery
    celery.close()


@pytest.fixture
def hops(traced: Env, app: Celery) -> Hops:
    services = traced.services
    services.jobs.publish_accounts(
        {a.key: dispatch_entry(a, services.limiter) for a in traced.accounts}
    )
    return Hops(traced, app)


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [s.name for s in spans]
    return named


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def exported_text(spans: tuple[ReadableSpan, ...]) -> str:
    """Everything an exporter would send of these spans."""
    return "\n".join(span.to_json() for span in spans)


# -- one trace per job --------------------------------------------------------------------------


def test_a_job_is_one_trace_from_enqueue_to_its_provider_call(
    hops: Hops, traced: Env, exporter: InMemorySpanExporter
) -> None:
    task_id = hops.producer.enqueue(JOB)
    record = traced.services.jobs.record(task_id)
    assert record is not None and "traceparent" in record.body.trace  # the wait is carried
    _, kwargs, headers = hops.dispatch()
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(200)
        result = hops.run(task_id, kwargs, headers)
    assert result["outcome"] == "archived"

    spans = exporter.get_finished_spans()
    named = by_name(spans)
    assert set(named) == {
        "enqueue archive.chat",
        "wait archive.chat",
        "dispatch archive.chat",
        "run archive.chat",
        "green-api archiveChat",
    }
    assert len({span.context.trace_id for span in spans}) == 1
    enqueue = named["enqueue archive.chat"]
    assert enqueue.parent is None  # no caller span: the job's own trace
    assert parent_of(named["wait archive.chat"]) == enqueue.context.span_id
    assert parent_of(named["dispatch archive.chat"]) == enqueue.context.span_id
    assert parent_of(named["run archive.chat"]) == named["dispatch archive.chat"].context.span_id
    assert parent_of(named["green-api archiveChat"]) == named["run archive.chat"].context.span_id
    assert named["wait archive.chat"].attributes["archiver.job.waited_s"] >= 0
    assert enqueue.attributes["archiver.enqueue.status"] == "new"

    call = named["green-api archiveChat"]
    assert dict(call.attributes) == {
        "archiver.provider": "green-api",
        "archiver.account": GREEN_ID,
        "http.request.method": "POST",
        "url.template": "/waInstance{idInstance}/archiveChat/{apiTokenInstance}",
        "archiver.attempt": 1,
        "http.response.status_code": 200,
        "archiver.outcome": "archived",
        "archiver.verdict": "success",
    }
    run = named["run archive.chat"]
    assert run.attributes["archiver.outcome"] == "archived"
    assert run.attributes["messaging.message.id"] == task_id
    text = exported_text(spans)
    assert CANARY not in text and CHAT not in text and "crm-42" not in text


def test_the_callers_span_is_the_enqueue_spans_parent(
    hops: Hops, exporter: InMemorySpanExporter
) -> None:
    caller = trace.get_tracer("caller", tracer_provider=tracing.active(hops.env.settings).provider)  # type: ignore[union-attr]
    with caller.start_as_current_span("handle request") as request:
        hops.producer.enqueue(JOB)
    enqueue = by_name(exporter.get_finished_spans())["enqueue archive.chat"]
    assert enqueue.context.trace_id == request.get_span_context().trace_id
    assert parent_of(enqueue) == request.get_span_context().span_id


def test_a_job_that_waits_again_stays_in_its_trace_under_the_run_that_sent_it_back(
    hops: Hops, exporter: InMemorySpanExporter
) -> None:
    hops.producer.enqueue(JOB)
    with respx.mock() as mock:
        mock.post(GREEN_URL).side_effect = [
            httpx.Response(503),
            httpx.Response(503),
            httpx.Response(503),
            httpx.Response(200),
        ]
        first = hops.run(*hops.dispatch())
        assert isinstance(first, Retry)  # three attempts, then a countdown in the job store
        result = hops.run(*hops.dispatch())
    assert result["outcome"] == "archived" and result["attempts"] == 4
    spans = exporter.get_finished_spans()
    assert len({span.context.trace_id for span in spans}) == 1
    runs = [span for span in spans if span.name == "run archive.chat"]
    assert [run.attributes["archiver.outcome"] for run in runs] == ["waiting", "archived"]
    dispatches = [span for span in spans if span.name == "dispatch archive.chat"]
    waits = [span for span in spans if span.name == "wait archive.chat"]
    assert len(dispatches) == len(waits) == 2
    assert parent_of(dispatches[1]) == parent_of(waits[1]) == runs[0].context.span_id
    calls = [span for span in spans if span.name == "green-api archiveChat"]
    assert [c.attributes["archiver.attempt"] for c in calls] == [1, 2, 3, 4]
    assert [c.attributes["http.response.status_code"] for c in calls] == [503, 503, 503, 200]
    assert [c.attributes["archiver.outcome"] for c in calls] == [
        "transient",
        "transient",
        "transient",
        "archived",
    ]
    assert [parent_of(c) for c in calls] == [runs[0].context.span_id] * 3 + [
        runs[1].context.span_id
    ]


# -- the intake: a message's own trace --------------------------------------------------------


def router(env: Env) -> Router:
    services = env.services
    return Router(
        connect(env.settings.broker_url, decode=False),
        services.jobs,
        services.dead_letters,
        services.keys,
        intake=env.settings.queue,
        node=NODE,
        shared=services.shared,
        tracer=tracing.active(env.settings),
    )


def test_a_message_from_the_intake_continues_the_trace_its_headers_name(
    hops: Hops, traced: Env, app: Celery, exporter: InMemorySpanExporter
) -> None:
    """The Celery instrumentation of a publisher in another service writes W3C headers into
    the message: its job's spans join that trace."""
    app.send_task(
        "archive.chat",
        kwargs=JOB,
        task_id="from-intake",
        queue=traced.settings.queue,
        headers={"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
    )
    assert router(traced).route() == 1
    task_id, kwargs, headers = hops.dispatch()
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(200)
        assert hops.run(task_id, kwargs, headers)["outcome"] == "archived"
    named = by_name(exporter.get_finished_spans())
    assert set(named) == {
        "route archive.chat",
        "wait archive.chat",
        "dispatch archive.chat",
        "run archive.chat",
        "green-api archiveChat",
    }
    route = named["route archive.chat"]
    assert format(route.context.trace_id, "032x") == TRACEPARENT.split("-")[1]
    assert format(parent_of(route) or 0, "016x") == TRACEPARENT.split("-")[2]
    assert route.context.trace_state.get("vendor") == "1"
    assert {span.context.trace_id for span in named.values()} == {route.context.trace_id}
    assert parent_of(named["dispatch archive.chat"]) == route.context.span_id


def test_a_refused_intake_message_is_dead_lettered_with_its_trace_id(
    traced: Env, app: Celery, exporter: InMemorySpanExporter
) -> None:
    app.send_task(
        "archive.chat",
        kwargs={**JOB, "chat_id": "not a chat"},
        queue=traced.settings.queue,
        headers={"traceparent": TRACEPARENT},
    )
    assert router(traced).route() == 1
    [entry] = list(traced.services.dead_letters.iter())
    assert entry.trace_id == TRACEPARENT.split("-")[1]
    [span] = exporter.get_finished_spans()
    assert span.name == "route (refused)"
    assert span.attributes["archiver.reason"] == "invalid_request"
    assert "not a chat" not in exported_text((span,))


# -- dead letters ------------------------------------------------------------------------------


def test_a_dead_letter_records_its_jobs_trace_id_and_dlq_show_prints_it(
    hops: Hops, traced: Env, exporter: InMemorySpanExporter
) -> None:
    task_id = hops.producer.enqueue(JOB)
    with respx.mock() as mock:
        mock.post(GREEN_URL).respond(400, text=f"chat with id {CHAT} not found")
        ending = hops.run(*hops.dispatch())
    assert isinstance(ending, DeadLettered)
    entry = traced.services.dead_letters.read(ending.dead_letter_id)
    assert entry is not None and entry.task_id == task_id
    named = by_name(exporter.get_finished_spans())
    run = named["run archive.chat"]
    assert entry.trace_id == format(run.context.trace_id, "032x")
    assert run.attributes["archiver.outcome"] == "dead_lettered"
    assert run.attributes["archiver.reason"] == "chat_not_found"
    call = named["green-api archiveChat"]
    assert call.attributes["archiver.outcome"] == "chat_not_found"
    assert call.status.status_code is trace.StatusCode.ERROR
    assert CHAT not in exported_text(exporter.get_finished_spans())  # the answer quoted it

    shown = CliRunner().invoke(cli, ["dlq", "show", entry.id])
    assert shown.exit_code == 0, shown.output
    assert f"trace_id          {entry.trace_id}" in shown.output
    as_json = CliRunner().invoke(cli, ["dlq", "show", entry.id, "--json"])
    assert json.loads(as_json.output)["trace_id"] == entry.trace_id


def test_a_job_dead_lettered_while_it_waits_keeps_its_trace_id(
    hops: Hops, traced: Env, exporter: InMemorySpanExporter
) -> None:
    """The janitor ends jobs nobody runs (an account no worker knows): the trace id comes
    from the job's record."""
    task_id = hops.producer.enqueue(JOB)
    record = traced.services.jobs.record(task_id)
    assert record is not None
    endings = Endings(traced.services, hops.app.backend)
    entry = endings.dead_letter_stored(
        task_id,
        Reason.UNKNOWN_ACCOUNT,
        "no worker knows it",
        traced.services.keys.wait(record.account),
    )
    assert entry is not None
    [enqueue] = exporter.get_finished_spans()
    assert entry.trace_id == format(enqueue.context.trace_id, "032x")


def test_a_trace_id_is_kept_only_when_it_is_one_and_absent_when_there_is_none() -> None:
    made = DeadLetter(reason="chat_not_found", job=dict(JOB), detail="d")
    assert "trace_id" not in json.loads(made.to_json())  # as entries were before tracing
    good = DeadLetter(reason="r", job={}, detail="d", trace_id="0af7651916cd43dd8448eb211c80319c")
    assert json.loads(good.to_json())["trace_id"] == good.trace_id
    for junk in (CANARY, "0AF7651916CD43DD8448EB211C80319C", "1" * 33, 7):
        entry = DeadLetter(reason="r", job={}, detail="d", trace_id=junk)  # type: ignore[arg-type]
        assert "trace_id" not in json.loads(entry.to_json())


# -- what a message or a carrier may hold ------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"},
        {"traceparent": "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        {"traceparent": f"00-{CANARY}-b7ad6b7169203331-01"},
        {"traceparent": ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]},
    ],
)
def test_a_malformed_traceparent_is_ignored_never_refused(headers: dict[str, Any]) -> None:
    assert tracing.trace_headers(headers) == {}
    assert tracing.trace_id_of(headers) is None


def test_a_tracestate_too_long_or_unprintable_is_left_out() -> None:
    assert tracing.trace_headers({"traceparent": TRACEPARENT, "tracestate": "a=" + "x" * 600}) == {
        "traceparent": TRACEPARENT
    }
    assert tracing.trace_headers({"traceparent": TRACEPARENT, "tracestate": "a=1\n"}) == {
        "traceparent": TRACEPARENT
    }


def test_the_envelope_reads_trace_headers_only_when_asked() -> None:
    celery = Celery("x")
    message = celery.amqp.create_task_message(
        "id-1", "archive.chat", (), JOB, argsrepr="()", kwargsrepr="{}", origin="o"
    )
    headers = {**message.headers, "traceparent": TRACEPARENT}
    raw = {
        "body": base64.b64encode(json.dumps(message.body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {"body_encoding": "base64", "delivery_tag": "t"},
    }
    text = json.dumps(raw)
    assert envelope.read(text, now=0).trace == {}
    assert envelope.read(text, now=0, trace=True).trace == {"traceparent": TRACEPARENT}


# -- settings ----------------------------------------------------------------------------------


def test_a_wrong_tracing_mode_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ARCHIVER_TRACING", "jaeger")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    [line] = raised.value.problems
    assert line.startswith("ARCHIVER_TRACING: ") and "'jaeger'" in line


def test_tracing_on_without_the_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ARCHIVER_TRACING", "otlp")
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "worker.tracing.spans", raising=False)
    tracing.use_provider(None)
    with pytest.raises(tracing.TracingUnavailable, match=r"pip install 'chat-archiver\[tracing\]'"):
        tracing.active(load_settings())


# -- tracing off --------------------------------------------------------------------------------

OFF_PROBE = """
import importlib.abc
import sys

ATTEMPTS = []


class Blocked(importlib.abc.MetaPathFinder):
    \"\"\"Refuses every OpenTelemetry import and notes the file that asked for it.\"\"\"

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] != "opentelemetry":
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
            frame = frame.f_back
        ATTEMPTS.append(frame.f_code.co_filename if frame is not None else "?")
        raise ModuleNotFoundError(f"blocked: {name}", name=name)


sys.meta_path.insert(0, Blocked())
import json, sys
import httpx, respx
from worker.celery_app import create_app
from worker.dispatch.dispatcher import Dispatcher
from worker.dispatch.registry import dispatch_entry
from worker.dispatch.handoff import Handoff
from worker.producer import ArchiveProducer
from worker.services import get_accounts, get_services
from tasks.archive.task import archive_chat, run_chat_job

class Loop:
    def call_soon(self, callback):
        callback()

services, accounts = get_services(), get_accounts()
settings = services.settings
services.jobs.publish_accounts({a.key: dispatch_entry(a, services.limiter) for a in accounts})
app = create_app(settings)
producer = ArchiveProducer(app, settings, services.redis)
ok = producer.enqueue(JOB)
bad = producer.enqueue({**JOB, "chat_id": "79000000000@c.us"})
records = {i: services.redis.hget(services.keys.jobs, i) for i in (ok, bad)}
received = []
handoff = Handoff("ready")
handoff.attach(Loop(), received.append)
node = Dispatcher(services.jobs, app, handoff, lambda: 2)
node.step()
headers = {}
with respx.mock() as mock:
    mock.post(GREEN_URL).mock(
        side_effect=lambda request: httpx.Response(
            200 if b"79001234567" in request.content else 400,
            text="" if b"79001234567" in request.content else "chat with id x not found",
        )
    )
    for message in received:
        _, kwargs, _ = message.decode()
        headers[message.headers["id"]] = message.headers
        archive_chat.push_request(id=message.headers["id"], headers=message.headers)
        try:
            run_chat_job(archive_chat, (), kwargs)
        except Exception as ending:
            assert type(ending).__name__ == "DeadLettered", ending
        finally:
            archive_chat.pop_request()
print(json.dumps({
    "attempts": ATTEMPTS,
    "spans": "worker.tracing.spans" in sys.modules,
    "records": records,
    "headers": {i: sorted(h) for i, h in headers.items()},
    "dead_letters": list(services.redis.hvals(services.keys.dlq_entries)),
}))
"""


def test_tracing_off_imports_nothing_of_opentelemetry_and_adds_nothing_to_a_job(
    redis_url: str, tmp_path: Path
) -> None:
    """A clean interpreter where OpenTelemetry cannot be imported runs two jobs the whole way
    (enqueue, dispatch, run, an ending and a dead letter) with tracing off: no module of ours
    asked for it, and the record, the message and the dead letter hold exactly what they held
    before tracing existed."""
    accounts_file = tmp_path / "accounts.toml"
    accounts_file.write_text(accounts_toml("http://provider.test", green_rate="1000/s"))
    env = {
        "PATH": "/usr/bin:/bin",
        "ARCHIVER_BROKER_URL": redis_url,
        "ARCHIVER_ACCOUNTS_FILE": str(accounts_file),
        "TEST_GREEN_TOKEN": CANARY,
        "TEST_WASSENGER_TOKEN": CANARY.replace("c4n4ry", "w4ss3n"),
    }
    script = f"JOB = {JOB!r}\nGREEN_URL = {GREEN_URL!r}\n" + textwrap.dedent(OFF_PROBE)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPOSITORY,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    # redis-py (8.x) asks for OpenTelemetry for its own opt-in metrics whenever it can be
    # installed; no module of ours asks, and nothing of ours needed it to run the jobs.
    packages = tuple(str(REPOSITORY / name) + "/" for name in ("config", "worker", "tasks"))
    ours = [path for path in found["attempts"] if path.startswith(packages)]
    assert ours == [] and not found["spans"]
    for record in found["records"].values():
        body = json.loads(record.split("\n", 4)[4])
        assert set(body) == {"kwargs", "history", "origin"}
    for names in found["headers"].values():
        assert not {"traceparent", "tracestate"} & set(names)
    [entry] = found["dead_letters"]
    assert "trace_id" not in json.loads(entry)
