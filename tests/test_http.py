"""The session crosses HTTP for real: uvicorn (ASGI) and wsgiref (WSGI) servers on loopback,
called by httpx (sync and async) and requests, with and without OpenTelemetry's own middleware
and client instrumentors. Both sides run in this process, so ``capsession`` sees every span."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

import sessiontrace
from _servers import (
    APP_LOGGER,
    Instrumentation,
    RecordingHandler,
    RunningServer,
    run_async,
    spans_of_trace,
    start_uvicorn,
    start_wsgi,
    wait_for,
)
from sessiontrace import _log, semconv
from sessiontrace.context import current_session, new_session_id, session
from sessiontrace.integrations import asgi as session_asgi
from sessiontrace.integrations import wsgi as session_wsgi
from sessiontrace.policy import InboundPolicy, OutboundPolicy, parse_networks, sign
from sessiontrace.propagation import extract
from sessiontrace.testing import CapturedSpans, assert_session_on_every_span, capture

tracer = trace.get_tracer("sessiontrace_tests.http")
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SIGNING_KEY = b"test-signing-key-0123456789abcdef"


# --- the application under test: the same handler behind ASGI and WSGI -----------------------------
def handle(path: str) -> bytes:
    """What a request handler does: a span of its own, a log line, and it reports the session."""
    with tracer.start_as_current_span(f"handler {path}"):
        logging.getLogger(APP_LOGGER).info("handled %s", path)
        current = current_session()
        return json.dumps(
            {
                "session_id": current.id if current else None,
                "user_id": current.user_id if current else None,
                "roles": list(current.roles) if current else [],
            }
        ).encode()


def stream_chunks() -> Iterator[bytes]:
    """A lazily produced body: work (a span, a log line) happens while the server iterates."""
    for index in range(2):
        with tracer.start_as_current_span("handler /stream chunk"):
            logging.getLogger(APP_LOGGER).info("streamed chunk %d", index)
            current = current_session()
            yield ((current.id if current else "none") + "\n").encode()


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await asyncio.sleep(0)  # the handler really is a coroutine that yields to the loop
    body = await asyncio.create_task(asyncio.to_thread(handle, scope["path"]))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/stream":
        start_response("200 OK", [("content-type", "text/plain")])
        return stream_chunks()
    body = handle(environ["PATH_INFO"])
    start_response("200 OK", [("content-type", "application/json")])
    return [body]


SERVER_KINDS = ("asgi+otel", "asgi", "wsgi+otel", "wsgi")


class Server(RunningServer):
    kind: str
    otel: bool


@pytest.fixture(scope="module", params=SERVER_KINDS)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """Our ``SessionMiddleware`` on a real loopback server, inside OpenTelemetry's middleware
    (``+otel``) or alone."""
    capture()  # stamping and propagation configured before the middleware takes its tracer
    kind: str = request.param
    if kind.startswith("asgi"):
        app: Any = session_asgi.SessionMiddleware(asgi_app)
        if kind.endswith("+otel"):
            from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as OtelAsgi

            app = OtelAsgi(app)
        running = start_uvicorn(app)
    else:
        app = session_wsgi.SessionMiddleware(wsgi_app)
        if kind.endswith("+otel"):
            from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as OtelWsgi

            app = OtelWsgi(app)
        running = start_wsgi(app)
    server = Server(running.port, running.stop)
    server.kind, server.otel = kind, kind.endswith("+otel")
    try:
        yield server
    finally:
        server.stop()


# --- clients -----------------------------------------------------------------------------------------
class Reply:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def get_httpx(url: str, headers: dict[str, str] | None = None) -> Reply:
    with httpx.Client(timeout=10) as client:
        response = client.get(url, headers=headers)
    return Reply(response.status_code, response.headers, response.content)


def get_httpx_async(url: str, headers: dict[str, str] | None = None) -> Reply:
    async def call() -> Reply:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(url, headers=headers)
        return Reply(response.status_code, response.headers, response.content)

    return run_async(call())


def get_requests(url: str, headers: dict[str, str] | None = None) -> Reply:
    response = requests.get(url, headers=headers, timeout=10)
    return Reply(response.status_code, response.headers, response.content)


CLIENTS = {"httpx": get_httpx, "httpx-async": get_httpx_async, "requests": get_requests}


def server_spans(captured: CapturedSpans, trace_id: int) -> list[Any]:
    return [span for span in spans_of_trace(captured, trace_id) if span.kind == SpanKind.SERVER]


def wait_for_request_spans(captured: CapturedSpans, server: Server, path: str, trace_id: int | None = None) -> Any:
    """The handler span of ``path`` once the server side has finished all its spans."""

    def done() -> Any:
        handlers = [span for span in captured.named(f"handler {path}") if trace_id in (None, span.context.trace_id)]
        if not handlers:
            return None
        tid = handlers[-1].context.trace_id
        if server.otel and not server_spans(captured, tid):
            return None
        return handlers[-1]

    return wait_for(done, what=f"the server spans of {path} on {server.kind}")


def session_attr(span: Any, key: str = semconv.SESSION_ID) -> Any:
    return (span.attributes or {}).get(key)


# --- the session crosses ------------------------------------------------------------------------------
class TestSessionCrossesHttp:
    """A session minted by the client reaches the server: client spans, server spans, spans made
    in the handler and log records made in the handler all carry its id; the response echoes it;
    the trace is one trace, the server side a child of the client side."""

    @pytest.mark.parametrize("client", list(CLIENTS))
    def test_client_session_reaches_every_span_and_log(
        self,
        server: Server,
        client: str,
        outbound: Instrumentation,
        capsession: CapturedSpans,
        app_logs: RecordingHandler,
    ) -> None:
        with session(trigger_source="ui") as current, tracer.start_as_current_span("client call") as call:
            reply = CLIENTS[client](server.url + "/work")
        trace_id = call.get_span_context().trace_id

        assert reply.status == 200
        assert reply.headers[semconv.SESSION_RESPONSE_HEADER] == current.id
        assert reply.json()["session_id"] == current.id

        handler = wait_for_request_spans(capsession, server, "/work", trace_id)
        spans = spans_of_trace(capsession, trace_id)
        assert_session_on_every_span(spans, current.id)

        # The trace is continuous: the server side's parent is the client side's innermost span.
        client_spans = [span for span in spans if span.kind == SpanKind.CLIENT]
        if outbound.otel_clients:
            assert len(client_spans) == 1, [span.name for span in spans]
            expected_parent = client_spans[0].context.span_id
        else:
            assert client_spans == []
            expected_parent = call.get_span_context().span_id
        if server.otel:
            (server_span,) = server_spans(capsession, trace_id)
            assert server_span.parent is not None
            assert server_span.parent.span_id == expected_parent
            assert handler.parent is not None
            assert handler.parent.span_id != expected_parent  # below the server span, not beside it
        else:
            # No server span: the continued session opens none either, the handler is the child.
            assert handler.parent is not None
            assert handler.parent.span_id == expected_parent

        (record,) = app_logs.messages("handled /work")
        assert record.__dict__["session.id"] == current.id

    @pytest.mark.parametrize("client", list(CLIENTS))
    def test_request_without_session_gets_a_fresh_uuid7(
        self, server: Server, client: str, capsession: CapturedSpans, app_logs: RecordingHandler
    ) -> None:
        reply = CLIENTS[client](server.url + "/work")

        assert reply.status == 200
        minted = reply.headers[semconv.SESSION_RESPONSE_HEADER]
        assert CANONICAL_UUID.fullmatch(minted)
        assert uuid.UUID(minted).version == 7
        assert reply.json()["session_id"] == minted

        handler = wait_for_request_spans(capsession, server, "/work")
        spans = spans_of_trace(capsession, handler.context.trace_id)
        assert_session_on_every_span(spans, minted)
        if server.otel:
            (server_span,) = server_spans(capsession, handler.context.trace_id)
            assert session_attr(server_span) == minted
            assert session_attr(server_span, semconv.TRIGGER_SOURCE) == "api"
        (session_span,) = wait_for(
            lambda: [s for s in spans_of_trace(capsession, handler.context.trace_id) if s.name == "session"],
            what="the minted session span",
        )
        assert [event.name for event in session_span.events] == ["session.start", "session.end"]
        (record,) = app_logs.messages("handled /work")
        assert record.__dict__["session.id"] == minted

    def test_two_requests_get_two_sessions(self, server: Server, capsession: CapturedSpans) -> None:
        first = get_httpx(server.url + "/work").headers[semconv.SESSION_RESPONSE_HEADER]
        second = get_httpx(server.url + "/work").headers[semconv.SESSION_RESPONSE_HEADER]
        assert first != second

    def test_lazy_wsgi_body_runs_inside_the_session(
        self, server: Server, capsession: CapturedSpans, app_logs: RecordingHandler
    ) -> None:
        """A WSGI body produced while the server iterates it (streaming) still sees the session."""
        if not server.kind.startswith("wsgi"):
            return  # ASGI has no lazy iterable: the handler sends its body itself
        reply = get_httpx(server.url + "/stream")
        minted = reply.headers[semconv.SESSION_RESPONSE_HEADER]
        assert reply.body.decode().split() == [minted, minted]
        chunks = wait_for(lambda: capsession.named("handler /stream chunk"), what="stream chunk spans")
        assert_session_on_every_span(chunks, minted)
        records = [r for r in app_logs.records if r.getMessage().startswith("streamed chunk")]
        assert [r.__dict__.get("session.id") for r in records] == [minted, minted]


# --- the trust boundary -------------------------------------------------------------------------------
def sessiontrace_warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sessiontrace" and text in r.getMessage()]


class TestInboundTrust:
    """Inbound baggage is untrusted input: malformed ids are dropped (one warning) and replaced by
    a minted id; user fields are believed only from trusted peers or with a valid signature;
    oversized and control-character values are dropped without failing the request."""

    def test_malformed_session_id_is_replaced_and_warned_once(
        self, server: Server, capsession: CapturedSpans, caplog: pytest.LogCaptureFixture
    ) -> None:
        _log.reset_warnings()
        caplog.set_level(logging.WARNING, logger="sessiontrace")
        replies = [get_httpx(server.url + "/work", {"baggage": "session.id=not-a-uuid"}) for _ in range(2)]

        for reply in replies:
            assert reply.status == 200
            minted = reply.headers[semconv.SESSION_RESPONSE_HEADER]
            assert minted != "not-a-uuid"
            assert uuid.UUID(minted).version == 7
            assert reply.json()["session_id"] == minted
        assert len(sessiontrace_warnings(caplog, "dropped inbound session")) == 1
        handler = wait_for_request_spans(capsession, server, "/work")
        assert session_attr(handler) == replies[-1].headers[semconv.SESSION_RESPONSE_HEADER]

    def test_user_from_untrusted_peer_is_not_stamped(self, server: Server, capsession: CapturedSpans) -> None:
        sid = new_session_id()
        reply = get_httpx(server.url + "/work", {"baggage": f"session.id={sid},user.id=admin,user.roles=root"})

        assert reply.headers[semconv.SESSION_RESPONSE_HEADER] == sid  # the id itself is accepted
        assert reply.json() == {"session_id": sid, "user_id": None, "roles": []}
        handler = wait_for_request_spans(capsession, server, "/work")
        for span in spans_of_trace(capsession, handler.context.trace_id):
            assert session_attr(span) == sid
            assert semconv.USER_ID not in (span.attributes or {}), span.name
            assert semconv.USER_ROLES not in (span.attributes or {}), span.name

    def test_user_from_trusted_peer_is_stamped(
        self, server: Server, capsession: CapturedSpans, reconfigure: Callable[..., Any]
    ) -> None:
        reconfigure(inbound=InboundPolicy(trusted_peers=parse_networks(["127.0.0.1/32"])))
        sid = new_session_id()
        reply = get_httpx(server.url + "/work", {"baggage": f"session.id={sid},user.id=admin,user.roles=root"})

        assert reply.json() == {"session_id": sid, "user_id": "admin", "roles": ["root"]}
        handler = wait_for_request_spans(capsession, server, "/work")
        for span in spans_of_trace(capsession, handler.context.trace_id):
            assert session_attr(span, semconv.USER_ID) == "admin", span.name

    def test_unsigned_session_is_rejected_when_signature_required(
        self, server: Server, capsession: CapturedSpans, reconfigure: Callable[..., Any]
    ) -> None:
        reconfigure(inbound=InboundPolicy(signing_key=SIGNING_KEY, require_signature=True))
        sid = new_session_id()
        reply = get_httpx(server.url + "/work", {"baggage": f"session.id={sid},user.id=admin"})

        minted = reply.headers[semconv.SESSION_RESPONSE_HEADER]
        assert minted != sid
        assert reply.json() == {"session_id": minted, "user_id": None, "roles": []}

    def test_session_signed_by_our_inject_is_accepted_with_its_user(
        self, server: Server, capsession: CapturedSpans, reconfigure: Callable[..., Any]
    ) -> None:
        reconfigure(inbound=InboundPolicy(signing_key=SIGNING_KEY, require_signature=True))
        with session(user_id="alice", roles=["clerk"]) as current:
            headers = dict(sessiontrace.inject({}))
        assert semconv.BAGGAGE_SIGNATURE in headers["baggage"]

        reply = get_httpx(server.url + "/work", headers)
        assert reply.json() == {"session_id": current.id, "user_id": "alice", "roles": ["clerk"]}
        handler = wait_for_request_spans(capsession, server, "/work")
        assert session_attr(handler, semconv.USER_ID) == "alice"

    @pytest.mark.parametrize("forgery", ["other key", "tampered user"])
    def test_forged_signature_is_rejected(
        self, server: Server, forgery: str, capsession: CapturedSpans, reconfigure: Callable[..., Any]
    ) -> None:
        reconfigure(inbound=InboundPolicy(signing_key=SIGNING_KEY, require_signature=True))
        sid = new_session_id()
        if forgery == "other key":
            entries = {semconv.BAGGAGE_SESSION_ID: sid, semconv.BAGGAGE_USER_ID: "admin"}
            signature = sign(entries, b"a-key-that-is-not-ours")
        else:  # a genuine signature for "alice", replayed with the user changed to "admin"
            signature = sign({semconv.BAGGAGE_SESSION_ID: sid, semconv.BAGGAGE_USER_ID: "alice"}, SIGNING_KEY)
        header = f"session.id={sid},user.id=admin,{semconv.BAGGAGE_SIGNATURE}={signature}"

        reply = get_httpx(server.url + "/work", {"baggage": header})
        minted = reply.headers[semconv.SESSION_RESPONSE_HEADER]
        assert minted != sid
        assert reply.json() == {"session_id": minted, "user_id": None, "roles": []}

    def test_oversized_baggage_is_dropped_and_request_still_served(
        self, server: Server, capsession: CapturedSpans, caplog: pytest.LogCaptureFixture
    ) -> None:
        _log.reset_warnings()
        caplog.set_level(logging.WARNING, logger="sessiontrace")
        sid = new_session_id()
        header = f"session.id={sid},padding={'x' * 8300}"
        assert len(header.encode()) > 8192

        reply = get_httpx(server.url + "/work", {"baggage": header})
        assert reply.status == 200
        minted = reply.headers[semconv.SESSION_RESPONSE_HEADER]
        assert minted != sid
        assert reply.json()["session_id"] == minted
        assert sessiontrace_warnings(caplog, "larger than 8192")

    @pytest.mark.parametrize("control", ["%0A", "%0D", "%00", "%1B", "%7F", "%C2%85", "%E2%80%A8"])
    def test_control_characters_in_user_id_are_dropped(
        self, server: Server, control: str, capsession: CapturedSpans, reconfigure: Callable[..., Any]
    ) -> None:
        reconfigure(inbound=InboundPolicy(trusted_peers=parse_networks(["127.0.0.1/32"])))
        sid = new_session_id()
        reply = get_httpx(server.url + "/work", {"baggage": f"session.id={sid},user.id=ad{control}min"})

        assert reply.status == 200
        assert reply.json() == {"session_id": sid, "user_id": None, "roles": []}
        handler = wait_for_request_spans(capsession, server, "/work")
        assert semconv.USER_ID not in (handler.attributes or {})


HEADER_NAMES = st.sampled_from(
    ["baggage", "Baggage", "traceparent", "tracestate", "uber-trace-id", "uberctx-session.id", "x-other"]
)
HEADER_VALUES = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="latin-1")),
    st.builds(lambda v: f"session.id={v}", st.text()),
    st.builds(lambda sid, rest: f"session.id={sid},{rest}", st.uuids().map(str), st.text()),
    st.builds(lambda u: f"session.id={uuid.uuid4()},user.id={u}", st.text()),
    st.builds(lambda v: f"langfuse_session_id={v}", st.text()),
)


class TestExtractFuzz:
    """Whatever arrives in the headers, ``extract`` neither raises nor produces a session whose
    id is not a canonical UUID, and an unverified sender never gets user fields."""

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=5))
    def test_extract_never_raises_nor_admits_a_bad_id(self, headers: dict[str, str], capsession: Any) -> None:
        ctx = extract(headers)
        found = current_session(ctx)
        if found is not None:
            assert CANONICAL_UUID.fullmatch(found.id), found.id
            assert found.user_id is None
            assert found.roles == ()
        raw = baggage.get_baggage(semconv.BAGGAGE_SESSION_ID, ctx)
        assert raw is None or CANONICAL_UUID.fullmatch(str(raw))


# --- the outbound allow-list -------------------------------------------------------------------------------
OUR_KEYS = set(semconv.OUR_BAGGAGE_KEYS)


def baggage_keys(headers: dict[str, str]) -> set[str]:
    return {entry.split("=", 1)[0].strip() for entry in headers.get("baggage", "").split(",") if entry.strip()}


class TestOutboundAllowList:
    """Our session entries go to allowed hosts only. For any other host they are stripped from
    ``baggage``, ``jaeger-baggage`` and ``uberctx-*`` headers, whoever put them there, while the
    application's own entries stay."""

    @pytest.mark.parametrize("client", list(CLIENTS))
    def test_only_allowed_host_receives_the_session(
        self,
        header_recorder: RunningServer,
        client: str,
        outbound: Instrumentation,
        reconfigure: Callable[..., Any],
    ) -> None:
        reconfigure(outbound=OutboundPolicy(allowed_hosts=("localhost",)))
        port = header_recorder.port
        with session(user_id="alice", trigger_source="ui") as current:
            CLIENTS[client](f"http://localhost:{port}/allowed")
            CLIENTS[client](f"http://127.0.0.1:{port}/not-allowed")

        allowed, refused = header_recorder.requests
        assert f"session.id={current.id}" in allowed["baggage"].split(",")
        assert "user.id=alice" in allowed["baggage"].split(",")
        assert "traceparent" in allowed
        assert not baggage_keys(refused) & OUR_KEYS, refused
        assert not [name for name in refused if name.startswith("uberctx-")]
        assert current.id not in json.dumps(refused)

    @pytest.mark.parametrize("client", list(CLIENTS))
    def test_suppressed_instrumentation_adds_nothing(
        self,
        header_recorder: RunningServer,
        client: str,
        outbound_policy: None,
        reconfigure: Callable[..., Any],
    ) -> None:
        """An exporter sends its own requests inside ``suppress_instrumentation()``: neither trace
        nor session is added to them, as OpenTelemetry's client instrumentors add nothing."""
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        reconfigure(outbound=OutboundPolicy(allowed_hosts=("localhost",)))
        port = header_recorder.port
        with session(user_id="alice", trigger_source="ui"), suppress_instrumentation():
            CLIENTS[client](f"http://localhost:{port}/allowed")

        (sent,) = header_recorder.requests
        assert "baggage" not in sent
        assert "traceparent" not in sent

    @pytest.mark.parametrize("suppressed", ["all", "http"])
    def test_suppressed_instrumentation_still_strips_ours_off_the_allow_list(
        self,
        header_recorder: RunningServer,
        outbound_policy: None,
        reconfigure: Callable[..., Any],
        suppressed: str,
    ) -> None:
        """Stripping our entries is a policy, not instrumentation: it holds whatever is suppressed
        (and suppress_http_instrumentation() stops the adding, as suppress_instrumentation() does)."""
        from opentelemetry.instrumentation.utils import suppress_http_instrumentation, suppress_instrumentation

        reconfigure(outbound=OutboundPolicy(allowed_hosts=("localhost",)))
        port = header_recorder.port
        suppress = suppress_instrumentation if suppressed == "all" else suppress_http_instrumentation
        with session(user_id="alice", trigger_source="ui") as current, suppress():
            leaked = {"baggage": f"session.id={current.id},app.tenant=acme"}
            CLIENTS["httpx"](f"http://127.0.0.1:{port}/not-allowed", headers=leaked)
            CLIENTS["httpx"](f"http://localhost:{port}/allowed")

        refused, allowed = header_recorder.requests
        assert refused["baggage"] == "app.tenant=acme"
        assert "baggage" not in allowed
        assert "traceparent" not in allowed

    @pytest.mark.parametrize("client", list(CLIENTS))
    def test_foreign_entries_are_kept_when_ours_are_stripped(
        self,
        header_recorder: RunningServer,
        client: str,
        outbound: Instrumentation,
        reconfigure: Callable[..., Any],
    ) -> None:
        reconfigure(outbound=OutboundPolicy(allowed_hosts=("localhost",)))
        sid = new_session_id()
        headers = {
            "baggage": f"tenant=acme,session.id={sid},user.id=bob,{semconv.BAGGAGE_SIGNATURE}=abc,region=eu",
            f"uberctx-{semconv.BAGGAGE_SESSION_ID}": sid,
            f"uberctx-{semconv.BAGGAGE_USER_ID}": "bob",
            "uberctx-tenant": "acme",
            "jaeger-baggage": f"tenant=acme, session.id={sid}, user.id=bob",
        }
        CLIENTS[client](f"http://127.0.0.1:{header_recorder.port}/not-allowed", headers)

        (received,) = header_recorder.requests
        assert received["baggage"] == "tenant=acme,region=eu"
        assert received["uberctx-tenant"] == "acme"
        assert received["jaeger-baggage"] == "tenant=acme"
        assert "uberctx-session.id" not in received
        assert "uberctx-user.id" not in received
        assert sid not in json.dumps(received)

    @pytest.mark.parametrize("client", list(CLIENTS))
    def test_application_baggage_in_context_survives_the_policy(
        self,
        header_recorder: RunningServer,
        client: str,
        outbound: Instrumentation,
        reconfigure: Callable[..., Any],
    ) -> None:
        """Baggage the application put in the context goes to an allowed host with the session,
        and to a refused host without it (when a client instrumentor propagates there at all)."""
        reconfigure(outbound=OutboundPolicy(allowed_hosts=("localhost",)))
        port = header_recorder.port
        with session() as current:
            token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
            try:
                CLIENTS[client](f"http://localhost:{port}/allowed")
                CLIENTS[client](f"http://127.0.0.1:{port}/not-allowed")
            finally:
                otel_context.detach(token)

        allowed, refused = header_recorder.requests
        assert {"tenant", "session.id"} <= baggage_keys(allowed)
        assert f"session.id={current.id}" in allowed["baggage"].split(",")
        assert not baggage_keys(refused) & OUR_KEYS
        if outbound.otel_clients:  # OpenTelemetry's instrumentor propagates to every host
            assert baggage_keys(refused) == {"tenant"}


class TestWsgiBodies:
    """A body in which no application code runs is handed to the server as it is."""

    def test_a_list_keeps_its_content_length_and_a_file_wrapper_still_serves(self, tmp_path: Any) -> None:
        served = tmp_path / "claim.txt"
        served.write_bytes(b"file body")

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            if environ["PATH_INFO"] == "/file":
                return environ["wsgi.file_wrapper"](served.open("rb"))
            return [b"hello"]

        running = start_wsgi(session_wsgi.SessionMiddleware(app))
        try:
            listed = httpx.get(f"http://127.0.0.1:{running.port}/list")
            assert listed.text == "hello"
            assert listed.headers.get("content-length") == "5"  # wsgiref sets it for a one-item list
            assert semconv.SESSION_RESPONSE_HEADER in listed.headers
            assert httpx.get(f"http://127.0.0.1:{running.port}/file").text == "file body"
        finally:
            running.stop()
