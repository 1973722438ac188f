"""Real loopback servers and helpers for the cross-process tests (HTTP, Celery, Jaeger, webhooks).

Everything here runs for real on 127.0.0.1: uvicorn for ASGI, ``wsgiref`` (threaded) for WSGI,
Redis for Celery. Servers are started by fixtures, outside any session, so no session can leak
into them through the thread that starts them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from opentelemetry import propagate

from sessiontrace.config import configure
from sessiontrace.testing import CapturedSpans

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


# --- waiting ----------------------------------------------------------------------------------------
def wait_for(condition: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` on timeout.

    Server spans end after the response has been written, so a client can read the response
    before the server side has finished its spans: tests wait for them instead of sleeping."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def spans_of_trace(captured: CapturedSpans, trace_id: int) -> list[Any]:
    return [span for span in captured.spans if span.context.trace_id == trace_id]


# --- log capture --------------------------------------------------------------------------------------
class RecordingHandler(logging.Handler):
    """Keeps every record it is given (thread-safe), for assertions on stamped fields."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._records_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._records_lock:
            self.records.append(record)

    def messages(self, message: str) -> list[logging.LogRecord]:
        with self._records_lock:
            return [record for record in self.records if record.getMessage() == message]


APP_LOGGER = "sessiontrace_tests.app"


@pytest.fixture
def app_logs() -> Iterator[RecordingHandler]:
    """Records of the ``sessiontrace_tests.app`` logger, the one the test handlers log to."""
    handler = RecordingHandler()
    logger = logging.getLogger(APP_LOGGER)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


# --- configuration ---------------------------------------------------------------------------------------
@pytest.fixture
def reconfigure(capsession: CapturedSpans) -> Iterator[Callable[..., Any]]:
    """``reconfigure(**options)`` calls ``configure(exporter="none", **options)``; afterwards the
    default policies are restored with a plain ``configure(exporter="none")``, and the test fails
    if that did not bring back the propagator we started with (same fields)."""
    before = set(propagate.get_global_textmap().fields)

    def apply(**options: Any) -> Any:
        return configure(exporter="none", **options)

    yield apply
    configure(exporter="none")
    after = set(propagate.get_global_textmap().fields)
    assert after == before, f"configure() did not restore the default propagation: {before} -> {after}"


# --- sockets ----------------------------------------------------------------------------------------
def bound_socket() -> socket.socket:
    """A TCP socket bound to a free loopback port (handed to the server: no port race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


# --- ASGI: uvicorn in a thread -------------------------------------------------------------------------
@dataclass
class RunningServer:
    port: int
    stop: Callable[[], None]
    requests: list[dict[str, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_uvicorn(app: Any, sock: socket.socket | None = None) -> RunningServer:
    """uvicorn serving ``app`` on ``sock`` (default: a free loopback port)."""
    import uvicorn

    sock = sock or bound_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            pytest.fail("uvicorn did not start on loopback")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)
        sock.close()

    return RunningServer(port, stop)


# --- WSGI: wsgiref, one thread per request -----------------------------------------------------------
class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_wsgi(app: Any) -> RunningServer:
    server = make_server("127.0.0.1", 0, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(10)

    return RunningServer(server.server_address[1], stop)


def environ_headers(environ: dict[str, Any]) -> dict[str, str]:
    """Request headers from a WSGI environ, names lower-case with dashes."""
    headers = {
        key[5:].replace("_", "-").lower(): str(value) for key, value in environ.items() if key.startswith("HTTP_")
    }
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = environ[key]
    return headers


def recording_wsgi_app(requests: list[dict[str, str]]) -> Callable[..., Iterable[bytes]]:
    """A WSGI app that records the headers of every request it receives and answers 204."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        requests.append(environ_headers(environ))
        start_response("204 No Content", [])
        return [b""]

    return app


@pytest.fixture
def header_recorder() -> Iterator[RunningServer]:
    """A loopback server that records the headers it receives (``.requests``)."""
    requests: list[dict[str, str]] = []
    server = start_wsgi(recording_wsgi_app(requests))
    server.requests = requests
    try:
        yield server
    finally:
        server.stop()


# --- outbound instrumentation ------------------------------------------------------------------------
@dataclass
class Instrumentation:
    """Which client instrumentors are on. ``otel_clients`` names OpenTelemetry's httpx/requests
    instrumentors; ``order`` says which wraps the transport first (the first is innermost)."""

    name: str
    otel_clients: bool


def _instrumentors(order: str) -> list[Any]:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    from sessiontrace.integrations.outbound import OutboundPolicyInstrumentor

    ours = OutboundPolicyInstrumentor()
    if order == "ours-only":
        return [ours]
    if order == "ours-then-otel":  # OpenTelemetry's wrappers outside ours
        return [ours, HTTPXClientInstrumentor(), RequestsInstrumentor()]
    if order == "otel-then-ours":  # ours outside OpenTelemetry's
        return [HTTPXClientInstrumentor(), RequestsInstrumentor(), ours]
    raise AssertionError(order)


@pytest.fixture(params=["ours-only", "ours-then-otel", "otel-then-ours"])
def outbound(request: pytest.FixtureRequest, capsession: CapturedSpans) -> Iterator[Instrumentation]:
    """The outbound policy instrumentor, alone and with OpenTelemetry's client instrumentors in
    both wrapping orders. Undone in reverse order (wrappers are removed outermost first)."""
    instrumentors = _instrumentors(request.param)
    for instrumentor in instrumentors:
        instrumentor.instrument()
    try:
        yield Instrumentation(request.param, otel_clients=len(instrumentors) > 1)
    finally:
        for instrumentor in reversed(instrumentors):
            instrumentor.uninstrument()


@pytest.fixture
def outbound_policy(capsession: CapturedSpans) -> Iterator[None]:
    """Only our outbound policy instrumentor (for tests that are not about wrapping order)."""
    from sessiontrace.integrations.outbound import OutboundPolicyInstrumentor

    instrumentor = OutboundPolicyInstrumentor()
    instrumentor.instrument()
    try:
        yield
    finally:
        instrumentor.uninstrument()


def run_async(coroutine: Any) -> Any:
    """Run a coroutine to completion in a fresh loop (the current context is copied into it)."""
    return asyncio.run(coroutine)


# --- Redis -------------------------------------------------------------------------------------------
def require_redis() -> None:
    """Fail (never skip) with an actionable message when Redis does not answer on loopback."""
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(16)
    except OSError as error:
        pytest.fail(
            f"Redis is required at {REDIS_HOST}:{REDIS_PORT} for the Celery tests and is not reachable "
            f"({error}). Start it (e.g. `redis-server --port 6379` or `.ci/run`)."
        )
    if not reply.startswith(b"+PONG"):
        pytest.fail(f"{REDIS_HOST}:{REDIS_PORT} answered {reply!r} to PING: not a usable Redis")
