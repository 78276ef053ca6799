"""The simulator's HTTP server: both provider APIs and the `/_sim` admin API on one port.

Provider requests skip tornado's `RequestHandler` machinery: a small message delegate gathers the
request, asks the provider module for an `Answer` and writes it. That keeps a call well under
100 µs of server time, which is what lets one process answer thousands of archive calls per second
on a small machine. Injected latency is a timer on the IOLoop, never a sleep, so a slow account
does not hold up any other request. The admin API is an ordinary tornado `Application`: it is not
on the hot path and its handlers read better.

Access logging is off unless asked for; when on, the GREEN-API token segment of the path and any
`token=` query value are written as `***`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable
from types import TracebackType
from typing import Any

import tornado.web
from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from worker.sandbox.simulator import green_api, wassenger
from worker.sandbox.simulator.admin import admin_routes
from worker.sandbox.simulator.answers import (
    Answer,
    SimRequest,
    mask_path,
    reason_phrase,
    text,
)
from worker.sandbox.simulator.state import SimulatorState, load_scenario

ACCESS_LOG = logging.getLogger("worker.sandbox.simulator.access")
LOG = logging.getLogger("worker.sandbox.simulator")


class Simulator(httputil.HTTPServerConnectionDelegate):
    """Routes each request to a provider module or to the admin `Application`."""

    def __init__(self, state: SimulatorState, access_log: bool = False) -> None:
        self.state = state
        self.access_log = access_log
        self.app = tornado.web.Application(admin_routes(state), log_function=self._log_admin)

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return _Exchange(self, server_conn, request_conn)

    def dispatch(self, request: SimRequest) -> Answer:
        path = request.path
        if path.startswith("/waInstance"):
            return green_api.handle(self.state, request)
        if path.startswith("/v1/"):
            return wassenger.handle(self.state, request)
        # Like a real router: plain text, never an API error naming what was asked for.
        with self.state.lock:
            self.state.counters.no_route(request.verb, mask_path(path))
        return text(404, "Not Found")

    def log(self, verb: str, uri: str, status: int, started: float) -> None:
        elapsed_ms = (time.monotonic() - started) * 1000.0
        ACCESS_LOG.info("%s %s %d %.1fms", verb, mask_path(uri), status, elapsed_ms)

    def _log_admin(self, handler: tornado.web.RequestHandler) -> None:
        if self.access_log:
            request = handler.request
            elapsed_ms = request.request_time() * 1000.0
            status = handler.get_status()
            ACCESS_LOG.info(
                "%s %s %d %.1fms", request.method, mask_path(request.uri or ""), status, elapsed_ms
            )


class _Exchange(httputil.HTTPMessageDelegate):
    """One request/response on a connection."""

    __slots__ = ("_chunks", "_conn", "_headers", "_inner", "_server_conn", "_sim", "_start", "_t0")

    def __init__(
        self, sim: Simulator, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> None:
        self._sim = sim
        self._server_conn = server_conn
        self._conn = request_conn
        self._inner: httputil.HTTPMessageDelegate | None = None
        self._chunks: list[bytes] = []
        self._start: httputil.RequestStartLine | None = None
        self._headers: httputil.HTTPHeaders | None = None
        self._t0 = 0.0

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine)
        if start_line.path.startswith("/_sim"):
            self._inner = self._sim.app.start_request(self._server_conn, self._conn)
            return self._inner.headers_received(start_line, headers)
        self._start = start_line
        self._headers = headers
        self._t0 = time.monotonic()
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self._inner is not None:
            return self._inner.data_received(chunk)
        self._chunks.append(chunk)
        return None

    def finish(self) -> None:
        if self._inner is not None:
            self._inner.finish()
            return
        start = self._start
        headers = self._headers
        assert start is not None
        assert headers is not None
        path, _, query = start.path.partition("?")
        token = headers.get("Token")
        request = SimRequest(
            start.method,
            path,
            query,
            {"token": token} if token is not None else {},
            b"".join(self._chunks),
        )
        try:
            answer = self._sim.dispatch(request)
        except Exception:
            LOG.exception("simulator failed on %s %s", start.method, mask_path(path))
            answer = text(500, "Internal Server Error")
        if answer.delay > 0:
            asyncio.get_running_loop().call_later(answer.delay, self._write, answer)
        else:
            self._write(answer)

    def on_connection_close(self) -> None:
        if self._inner is not None:
            self._inner.on_connection_close()

    def _write(self, answer: Answer) -> None:
        conn = self._conn
        stream = getattr(conn, "stream", None)
        if stream is not None and stream.closed():
            # The client gave up (e.g. timed out on a delayed answer); the state already changed.
            self._log(answer.status)
            return
        headers = httputil.HTTPHeaders()
        headers["Content-Length"] = str(len(answer.body))
        if answer.content_type:
            headers["Content-Type"] = answer.content_type
        for name, value in answer.headers.items():
            headers[name] = value
        line = httputil.ResponseStartLine("HTTP/1.1", answer.status, reason_phrase(answer.status))
        try:
            conn.write_headers(line, headers, answer.body)
            conn.finish()
        except Exception as exc:  # a peer vanishing mid-write is the client's business
            LOG.debug("could not write the answer: %s", type(exc).__name__)
        self._log(answer.status)

    def _log(self, status: int) -> None:
        if self._sim.access_log and self._start is not None:
            self._sim.log(self._start.method, self._start.path, status, self._t0)


def _url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _make_server(state: SimulatorState, access_log: bool) -> HTTPServer:
    # Large admin bodies (100,000 chats) are fine; idle keep-alive connections close after a minute.
    return HTTPServer(
        Simulator(state, access_log), idle_connection_timeout=60, max_body_size=512 * 1024 * 1024
    )


class SimulatorHandle:
    """A simulator running on a background thread; `stop()` or leave the `with` block to end it."""

    def __init__(
        self,
        state: SimulatorState,
        host: str,
        port: int,
        thread: threading.Thread,
        loop: asyncio.AbstractEventLoop,
        stop_event: asyncio.Event,
    ) -> None:
        self.state = state
        self.host = host
        self.port = port
        self.url = _url(host, port)
        self._thread = thread
        self._loop = loop
        self._stop_event = stop_event

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_event.set)
            self._thread.join(timeout)

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_in_thread(
    host: str = "127.0.0.1",
    port: int = 0,
    scenario: dict[str, Any] | None = None,
    *,
    access_log: bool = False,
    state: SimulatorState | None = None,
) -> SimulatorHandle:
    """Start a simulator on its own thread and IOLoop; port 0 picks a free port."""
    state = state if state is not None else SimulatorState()
    if access_log and ACCESS_LOG.level == logging.NOTSET:
        ACCESS_LOG.setLevel(logging.INFO)
    if scenario:
        state.apply_scenario(scenario)
    sockets = bind_sockets(port, host, family=socket.AF_UNSPEC)
    bound_port = sockets[0].getsockname()[1]
    ready = threading.Event()
    started: dict[str, Any] = {}

    async def main() -> None:
        server = _make_server(state, access_log)
        server.add_sockets(sockets)
        stop_event = asyncio.Event()
        started["loop"] = asyncio.get_running_loop()
        started["stop"] = stop_event
        ready.set()
        await stop_event.wait()
        server.stop()
        await server.close_all_connections()

    def run() -> None:
        try:
            asyncio.run(main())
        except Exception as exc:
            started["error"] = exc
            ready.set()
            raise

    thread = threading.Thread(target=run, name=f"simulator-{bound_port}", daemon=True)
    thread.start()
    ready.wait(10)
    if "loop" not in started:
        raise RuntimeError(f"the simulator did not start: {started.get('error')!r}")
    return SimulatorHandle(state, host, bound_port, thread, started["loop"], started["stop"])


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    scenario_path: str | None = None,
    access_log: bool = False,
) -> None:
    """Run the simulator in the foreground until SIGINT or SIGTERM.

    Prints one line, `chat-archiver simulator listening on http://HOST:PORT`, once the socket is
    bound (port 0 prints the port actually chosen).
    """
    state = SimulatorState()
    if scenario_path:
        state.apply_scenario(load_scenario(scenario_path))
    if access_log:
        ACCESS_LOG.setLevel(logging.INFO)
        if not ACCESS_LOG.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s simulator %(message)s"))
            ACCESS_LOG.addHandler(handler)
            ACCESS_LOG.propagate = False
    asyncio.run(_serve(state, host, port, access_log))


async def _serve(state: SimulatorState, host: str, port: int, access_log: bool) -> None:
    sockets = bind_sockets(port, host, family=socket.AF_UNSPEC)
    server = _make_server(state, access_log)
    server.add_sockets(sockets)
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not the main thread (or not POSIX): whoever started us stops us another way.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop_event.set)
    print(
        f"chat-archiver simulator listening on {_url(host, sockets[0].getsockname()[1])}",
        flush=True,
    )
    try:
        await stop_event.wait()
    finally:
        server.stop()
        await server.close_all_connections()
