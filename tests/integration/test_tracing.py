"""Traces of real processes: our producer (this process), a real ``celery -A worker worker`` node
(its main process dispatches, its pool processes run), a producer of another service publishing
to the intake with the Celery instrumentation, and the simulator. Every process exports over
OTLP/HTTP to a collector this test runs on loopback, which keeps what it is sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import CANARY, GREEN_ID, WASSENGER_CANARY, WASSENGER_ID
from tests.integration.conftest import Cluster
from worker import tracing
from worker.sandbox.simulator import SimulatorHandle

pytestmark = pytest.mark.integration

GREEN_CHATS = ["79001112201@c.us", "79001112202@c.us"]
WASSENGER_CHAT = "447362053576@c.us"
MISSING_CHAT = "79001112299@c.us"  # not in the simulator: chat_not_found
FOREIGN_CHAT = "79001112203@c.us"


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    pid: int
    service: str
    attributes: dict[str, Any]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver (protobuf), as an OpenTelemetry Collector listens on 4318."""

    url: str = ""
    posts: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[Span]:
        with self.lock:
            posts = list(self.posts)
        found = []
        for body in posts:
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        found.append(
                            Span(
                                span.trace_id.hex(),
                                span.span_id.hex(),
                                span.parent_span_id.hex(),
                                span.name,
                                int(resource.get("process.pid", 0)),
                                str(resource.get("service.name", "")),
                                {a.key: _value(a.value) for a in span.attributes},
                            )
                        )
        return found

    def traces(self) -> dict[str, list[Span]]:
        grouped: dict[str, list[Span]] = defaultdict(list)
        for span in self.spans():
            grouped[span.trace_id].append(span)
        return grouped

    def raw(self) -> bytes:
        with self.lock:
            return b"".join(self.posts)


@pytest.fixture
def collector() -> Iterator[Collector]:
    kept = Collector()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/v1/traces":
                with kept.lock:
                    kept.posts.append(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200 if self.path == "/v1/traces" else 404)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kept.url = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    yield kept
    server.shutdown()
    server.server_close()


def otel_env(collector: Collector, delay_ms: int | None = None) -> dict[str, str]:
    """``delay_ms``: how long a process holds its spans before it sends a batch (the SDK's
    default: 5 s)."""
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.url}
    if delay_ms is not None:
        env["OTEL_BSP_SCHEDULE_DELAY"] = str(delay_ms)
    return env


@pytest.fixture
def traced_cluster(
    redis_url: str,
    simulator: SimulatorHandle,
    tmp_path: Path,
    collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cluster]:
    for name, value in otel_env(collector).items():
        monkeypatch.setenv(name, value)  # this process's producer exports there too
    tracing.use_provider(None)
    cluster = Cluster(redis_url, simulator, tmp_path, env={"ARCHIVER_TRACING": "otlp"})
    cluster.start_worker()
    yield cluster
    cluster.close()
    tracer = tracing.active(cluster.settings)
    if tracer is not None:
        tracer.provider.shutdown()
    tracing.use_provider(None)


FOREIGN_PRODUCER = """
import json, os, sys
from celery import Celery
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

broker, kwargs, task_id = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
resource = Resource.create({"service.name": "crm", "process.pid": os.getpid()})
provider = TracerProvider(resource=resource)
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
CeleryInstrumentor().instrument()
app = Celery("crm", broker=broker, set_as_current=True)
app.conf.task_serializer = "json"

@app.task(name="archive.chat")
def archive_chat(**_):
    pass

with trace.get_tracer("crm").start_as_current_span("crm request"):
    app.send_task("archive.chat", kwargs=kwargs, task_id=task_id, queue="archive")
provider.shutdown()
"""


def test_each_job_is_one_trace_across_the_producer_the_worker_and_its_pool(
    traced_cluster: Cluster, collector: Collector
) -> None:
    cluster = traced_cluster
    cluster.add_chats("green-api", [*GREEN_CHATS, FOREIGN_CHAT])
    cluster.add_chats("wassenger", [WASSENGER_CHAT])
    jobs = {
        chat: cluster.producer.enqueue(
            {"provider": "green-api", "account": GREEN_ID, "chat_id": chat}
        )
        for chat in [*GREEN_CHATS, MISSING_CHAT]
    }
    jobs[WASSENGER_CHAT] = cluster.producer.enqueue(
        {"provider": "wassenger", "account": WASSENGER_ID, "chat_id": WASSENGER_CHAT}
    )
    foreign = {"provider": "green-api", "account": GREEN_ID, "chat_id": FOREIGN_CHAT}
    published = subprocess.run(
        [sys.executable, "-c", FOREIGN_PRODUCER, cluster.redis_url, json.dumps(foreign), "crm-1"],
        capture_output=True,
        text=True,
        env={**os.environ, **otel_env(collector, delay_ms=100)},
        timeout=60,
    )
    assert published.returncode == 0, published.stderr[-2000:]
    jobs[FOREIGN_CHAT] = "crm-1"

    outcomes = {chat: cluster.result(task_id, timeout=60) for chat, task_id in jobs.items()}
    assert outcomes[MISSING_CHAT]["outcome"] == "dead_lettered"
    assert all(outcomes[c]["outcome"] == "archived" for c in jobs if c != MISSING_CHAT)
    shown = cluster.cli("dlq", "show", outcomes[MISSING_CHAT]["dead_letter_id"])
    assert shown.returncode == 0, shown.stderr
    producer = tracing.active(cluster.settings)
    assert producer is not None
    producer.provider.force_flush()
    # The node holds its spans for the SDK's default 5 s: a warm shutdown sends what its main
    # and pool processes still hold.
    for process in cluster.processes:
        assert process.stop() == 0

    def job_traces() -> dict[str, list[Span]] | None:
        """Each job's trace, once its provider call has been exported."""
        traces = collector.traces()
        found = {}
        for chat, task_id in jobs.items():
            ids = {
                s.trace_id
                for s in collector.spans()
                if s.attributes.get("messaging.message.id") == task_id
            }
            if len(ids) != 1:
                return None
            spans = traces[ids.pop()]
            if not any(s.name.startswith(("green-api ", "wassenger ")) for s in spans):
                return None
            found[chat] = spans
        return found

    traces = job_traces()
    assert traces is not None, sorted((s.name, s.pid) for s in collector.spans())
    assert len({spans[0].trace_id for spans in traces.values()}) == len(jobs)  # one per job

    for chat, spans in traces.items():
        names = sorted(s.name for s in spans)
        pids = {s.pid for s in spans}
        assert len(spans) >= 4 and len(pids) >= 2, (chat, names, pids)
        assert {"wait archive.chat", "dispatch archive.chat", "run archive.chat"} <= set(names)
        run = next(s for s in spans if s.name == "run archive.chat")
        assert run.pid != os.getpid()  # a pool process of the node
        if chat != FOREIGN_CHAT:
            enqueue = next(s for s in spans if s.name == "enqueue archive.chat")
            assert enqueue.pid == os.getpid() and enqueue.parent_id == ""
            assert len(pids) >= 3, pids  # this process, the node's main process, a pool process

    green_call = next(s for s in traces[GREEN_CHATS[0]] if s.name == "green-api archiveChat")
    assert green_call.attributes == {
        "archiver.provider": "green-api",
        "archiver.account": GREEN_ID,
        "http.request.method": "POST",
        "url.template": "/waInstance{idInstance}/archiveChat/{apiTokenInstance}",
        "archiver.attempt": 1,
        "http.response.status_code": 200,
        "archiver.outcome": "archived",
        "archiver.verdict": "success",
    }
    wassenger_call = next(s for s in traces[WASSENGER_CHAT] if s.name == "wassenger archive")
    assert wassenger_call.attributes["http.request.method"] == "PUT"
    assert wassenger_call.attributes["url.template"] == "/v1/io/{deviceId}/chats/{chatWid}/archive"
    assert wassenger_call.attributes["http.response.status_code"] in range(200, 300)

    # The other service's trace goes on through the intake: its request, its publish, our route.
    foreign_spans = traces[FOREIGN_CHAT]
    crm = next(s for s in foreign_spans if s.name == "crm request")
    publish = next(s for s in foreign_spans if s.name == "apply_async/archive.chat")
    route = next(s for s in foreign_spans if s.name == "route archive.chat")
    assert crm.service == "crm" and publish.parent_id == crm.span_id
    assert route.parent_id == publish.span_id and route.pid != publish.pid

    # A dead letter names its trace, and dlq show prints it.
    entry = cluster.dead_letter(outcomes[MISSING_CHAT])
    assert entry.trace_id == traces[MISSING_CHAT][0].trace_id
    run = next(s for s in traces[MISSING_CHAT] if s.name == "run archive.chat")
    assert (run.attributes["archiver.outcome"], run.attributes["archiver.reason"]) == (
        "dead_lettered",
        "chat_not_found",
    )
    assert f"trace_id          {entry.trace_id}" in shown.stdout

    # Nothing exported by any process holds a token or a chat id, in any span or resource.
    exported = collector.raw()
    for secret in (CANARY, WASSENGER_CANARY, *jobs):
        assert secret.encode() not in exported, secret
    assert b"@c.us" not in exported


def test_with_tracing_off_nothing_is_exported_and_no_tracing_code_is_loaded(
    redis_url: str,
    simulator: SimulatorHandle,
    tmp_path: Path,
    collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SDK's variables are all set and a collector listens: with ARCHIVER_TRACING unset,
    no process sends it anything, and the node (main and pool, their imports logged by
    Python's -X importtime) loads no module of our tracing, no SDK tracer, no exporter."""
    for name, value in otel_env(collector, delay_ms=100).items():
        monkeypatch.setenv(name, value)
    cluster = Cluster(redis_url, simulator, tmp_path)
    try:
        cluster.start_worker(env={"PYTHONPROFILEIMPORTTIME": "1"})
        cluster.add_chats("green-api", GREEN_CHATS)
        jobs = [
            cluster.producer.enqueue({"provider": "green-api", "account": GREEN_ID, "chat_id": c})
            for c in [*GREEN_CHATS, MISSING_CHAT]
        ]
        outcomes = [cluster.result(task_id, timeout=60) for task_id in jobs]
        assert [o["outcome"] for o in outcomes] == ["archived", "archived", "dead_lettered"]
        log = cluster.logs()
        assert "import time:" in log and "tasks.archive.runner" in log  # the probe works
        for module in ("worker.tracing.spans", "opentelemetry.sdk.trace", "opentelemetry.exporter"):
            assert module not in log, module
        assert cluster.dead_letter(outcomes[2]).trace_id is None
    finally:
        cluster.close()
    threading.Event().wait(0.5)  # five export periods
    assert collector.posts == []


def test_a_worker_with_tracing_on_and_no_opentelemetry_stops_at_start_in_one_line(
    redis_url: str, simulator: SimulatorHandle, tmp_path: Path
) -> None:
    """As on a host where the tracing extra is not installed (an ``opentelemetry`` package that
    cannot be imported shadows the real one)."""
    shadow = tmp_path / "shadow"
    (shadow / "opentelemetry").mkdir(parents=True)
    (shadow / "opentelemetry" / "__init__.py").write_text("raise ImportError('not installed')\n")
    cluster = Cluster(redis_url, simulator, tmp_path)
    try:
        node = cluster.start_worker(
            wait=False, env={"ARCHIVER_TRACING": "otlp", "PYTHONPATH": str(shadow)}
        )
        assert node.process is not None
        assert node.process.wait(60) != 0
        errors = [line for line in node.log().splitlines() if "ARCHIVER_TRACING" in line]
        assert errors == [
            "chat-archiver: ARCHIVER_TRACING=otlp: OpenTelemetry is not installed "
            "(pip install 'chat-archiver[tracing]')"
        ]
        assert "Traceback" not in node.log()
    finally:
        cluster.close()
