"""Interoperability with legacy Jaeger peers, using the real ``jaeger_client`` (4.8.0).

A jaeger-client service puts the session in ``uberctx-session.id`` and the trace in
``uber-trace-id``; with ``configure(jaeger_propagation=True)`` our servers continue both, and our
clients write both so a jaeger-client server sees the session as a baggage item."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import requests
from jaeger_client import ConstSampler, Tracer
from jaeger_client.reporter import InMemoryReporter
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentracing.propagation import Format

from _servers import (
    APP_LOGGER,
    RecordingHandler,
    RunningServer,
    environ_headers,
    spans_of_trace,
    start_uvicorn,
    start_wsgi,
    wait_for,
)
from sessiontrace import semconv
from sessiontrace.context import current_session, new_session_id, session
from sessiontrace.integrations import asgi as session_asgi
from sessiontrace.integrations import wsgi as session_wsgi
from sessiontrace.testing import CapturedSpans, assert_session_on_every_span, capture

tracer = trace.get_tracer("sessiontrace_tests.jaeger")


@pytest.fixture
def jaeger_tracer() -> Tracer:
    """A real jaeger-client tracer that keeps its finished spans in memory. (Not closed: its
    ``close()`` wants a current asyncio loop, and an in-memory reporter has nothing to flush.)"""
    return Tracer("legacy-billing", reporter=InMemoryReporter(), sampler=ConstSampler(True))


@pytest.fixture
def jaeger_propagation(reconfigure: Callable[..., Any]) -> None:
    reconfigure(jaeger_propagation=True)


# --- (a) a jaeger-client caller, our server ----------------------------------------------------------
def handle() -> bytes:
    with tracer.start_as_current_span("handler /jaeger"):
        logging.getLogger(APP_LOGGER).info("handled jaeger call")
        current = current_session()
        return json.dumps({"session_id": current.id if current else None}).encode()


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = handle()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = handle()
    start_response("200 OK", [("content-type", "application/json")])
    return [body]


@pytest.fixture(params=["asgi+otel", "wsgi+otel", "wsgi"])
def our_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, RunningServer]]:
    capture()
    kind: str = request.param
    if kind.startswith("asgi"):
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as OtelAsgi

        running = start_uvicorn(OtelAsgi(session_asgi.SessionMiddleware(asgi_app)))
    else:
        app: Any = session_wsgi.SessionMiddleware(wsgi_app)
        if kind.endswith("+otel"):
            from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as OtelWsgi

            app = OtelWsgi(app)
        running = start_wsgi(app)
    try:
        yield kind, running
    finally:
        running.stop()


class TestJaegerClientCallsUs:
    """A jaeger-client span with ``session.id`` baggage calls our server: the server's spans and
    logs carry that session id and continue the Jaeger trace (64-bit id, zero-padded to 128)."""

    def test_session_and_trace_continue(
        self,
        our_server: tuple[str, RunningServer],
        jaeger_tracer: Tracer,
        jaeger_propagation: None,
        capsession: CapturedSpans,
        app_logs: RecordingHandler,
    ) -> None:
        kind, server = our_server
        sid = new_session_id()
        with jaeger_tracer.start_active_span("legacy checkout") as scope:
            scope.span.set_baggage_item("session.id", sid)
            headers: dict[str, str] = {}
            jaeger_tracer.inject(scope.span.context, Format.HTTP_HEADERS, headers)
            response = requests.get(server.url + "/jaeger", headers=headers, timeout=10)
            jaeger_trace_id, jaeger_span_id = scope.span.context.trace_id, scope.span.context.span_id

        assert "uber-trace-id" in headers
        assert headers["uberctx-session.id"] == sid
        assert jaeger_trace_id < 2**64  # a legacy 64-bit trace id
        assert response.status_code == 200
        assert response.json() == {"session_id": sid}
        assert response.headers[semconv.SESSION_RESPONSE_HEADER] == sid

        handler = wait_for(lambda: capsession.named("handler /jaeger"), what="the handler span")[0]
        assert format(handler.context.trace_id, "032x") == format(jaeger_trace_id, "016x").rjust(32, "0")
        if kind.endswith("+otel"):
            wait_for(
                lambda: [s for s in spans_of_trace(capsession, jaeger_trace_id) if s.kind == SpanKind.SERVER],
                what="the server span",
            )
        spans = spans_of_trace(capsession, jaeger_trace_id)
        assert_session_on_every_span(spans, sid)
        roots = [
            span
            for span in spans
            if span.parent is None or span.parent.span_id not in {s.context.span_id for s in spans}
        ]
        assert len(roots) == 1
        assert roots[0].parent is not None
        assert roots[0].parent.span_id == jaeger_span_id  # the Jaeger span is the parent
        (record,) = app_logs.messages("handled jaeger call")
        assert record.__dict__["session.id"] == sid

    def test_jaeger_user_baggage_from_untrusted_peer_is_not_stamped(
        self,
        our_server: tuple[str, RunningServer],
        jaeger_tracer: Tracer,
        jaeger_propagation: None,
        capsession: CapturedSpans,
    ) -> None:
        _, server = our_server
        sid = new_session_id()
        with jaeger_tracer.start_active_span("legacy checkout") as scope:
            scope.span.set_baggage_item("session.id", sid)
            scope.span.set_baggage_item("user.id", "admin")
            headers: dict[str, str] = {}
            jaeger_tracer.inject(scope.span.context, Format.HTTP_HEADERS, headers)
            requests.get(server.url + "/jaeger", headers=headers, timeout=10)

        handler = wait_for(lambda: capsession.named("handler /jaeger"), what="the handler span")[0]
        assert (handler.attributes or {}).get(semconv.SESSION_ID) == sid
        assert semconv.USER_ID not in (handler.attributes or {})

    def test_without_jaeger_propagation_uber_headers_are_ignored(
        self, our_server: tuple[str, RunningServer], jaeger_tracer: Tracer, capsession: CapturedSpans
    ) -> None:
        """The control: the same call with default propagation does not continue the session."""
        _, server = our_server
        sid = new_session_id()
        with jaeger_tracer.start_active_span("legacy checkout") as scope:
            scope.span.set_baggage_item("session.id", sid)
            headers: dict[str, str] = {}
            jaeger_tracer.inject(scope.span.context, Format.HTTP_HEADERS, headers)
            response = requests.get(server.url + "/jaeger", headers=headers, timeout=10)
        assert response.json()["session_id"] != sid


# --- (b) our caller, a jaeger-client server -----------------------------------------------------------
@pytest.fixture
def jaeger_server(jaeger_tracer: Tracer) -> Iterator[RunningServer]:
    """A loopback WSGI service instrumented only with jaeger-client: it reports what it extracts."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        context = jaeger_tracer.extract(Format.HTTP_HEADERS, environ_headers(environ))
        seen = {
            "session_id": context.baggage.get("session.id") if context else None,
            "trace_id": format(context.trace_id, "032x") if context and context.trace_id else None,
            "parent_span_id": format(context.span_id, "016x") if context and context.span_id else None,
        }
        start_response("200 OK", [("content-type", "application/json")])
        return [json.dumps(seen).encode()]

    running = start_wsgi(app)
    try:
        yield running
    finally:
        running.stop()


class TestWeCallJaegerClient:
    """Inside ``session()``, our instrumented client's call reaches a jaeger-client service, which
    sees the session id as the ``session.id`` baggage item and our trace as its parent."""

    def test_jaeger_client_sees_our_session(
        self,
        jaeger_server: RunningServer,
        jaeger_propagation: None,
        outbound_policy: None,
        capsession: CapturedSpans,
    ) -> None:
        with session(trigger_source="api") as current, tracer.start_as_current_span("call legacy") as call:
            response = requests.get(jaeger_server.url + "/legacy", timeout=10)

        seen = response.json()
        assert seen["session_id"] == current.id
        assert seen["trace_id"] == format(call.get_span_context().trace_id, "032x")
        assert seen["parent_span_id"] == format(call.get_span_context().span_id, "016x")
