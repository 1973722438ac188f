"""A webhook carries the session in its JSON body: the sender fills a metadata dict with
``sessiontrace.inject({})``, the receiver (a real loopback server) continues it with
``sessiontrace.extract(...)``. No HTTP instrumentation is involved: the payload is the carrier."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace

import sessiontrace
from _servers import APP_LOGGER, RecordingHandler, RunningServer, start_wsgi, wait_for
from sessiontrace import semconv
from sessiontrace.context import current_session, session
from sessiontrace.policy import InboundPolicy, parse_networks
from sessiontrace.testing import CapturedSpans, assert_session_on_every_span, capture

tracer = trace.get_tracer("sessiontrace_tests.webhook")


def receive(payload: Any, peer: str | None) -> dict[str, Any]:
    """The receiving side: continue the sender's trace and session from the payload metadata."""
    metadata = payload.get("metadata") if isinstance(payload, dict) else payload
    ctx = sessiontrace.extract(metadata, peer=peer)
    token = otel_context.attach(ctx)
    try:
        with tracer.start_as_current_span("webhook receive"), tracer.start_as_current_span("webhook process"):
            logging.getLogger(APP_LOGGER).info("webhook processed")
            current = current_session()
            return {
                "session_id": current.id if current else None,
                "user_id": current.user_id if current else None,
                "trigger_source": current.trigger_source if current else None,
            }
    finally:
        otel_context.detach(token)


@pytest.fixture
def webhook_receiver() -> Iterator[RunningServer]:
    capture()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        payload = json.loads(environ["wsgi.input"].read(length) or b"null")
        seen = receive(payload, environ.get("REMOTE_ADDR"))
        start_response("200 OK", [("content-type", "application/json")])
        return [json.dumps(seen).encode()]

    running = start_wsgi(app)
    try:
        yield running
    finally:
        running.stop()


def post(url: str, payload: Any) -> httpx.Response:
    response = httpx.post(url, json=payload, timeout=10)
    assert response.status_code == 200, response.text
    return response


def receiver_spans(captured: CapturedSpans) -> list[Any]:
    """The receiver's two spans, once both have ended."""

    def both() -> list[Any]:
        received, processed = captured.named("webhook receive"), captured.named("webhook process")
        return [*received, *processed] if received and processed else []

    return wait_for(both, what="the receiver's spans")


class TestWebhookCarrier:
    """The session and trace ride in the payload's metadata and are current while the receiver
    handles the webhook: its spans and logs carry the session id, in the sender's trace."""

    def test_receiver_continues_session_and_trace(
        self, webhook_receiver: RunningServer, capsession: CapturedSpans, app_logs: RecordingHandler
    ) -> None:
        with session(trigger_source="api") as current, tracer.start_as_current_span("webhook send") as send:
            payload = {"event": "claim.approved", "metadata": sessiontrace.inject({})}
            seen = post(webhook_receiver.url, payload).json()

        assert set(payload["metadata"]) >= {"traceparent", "baggage"}
        assert seen == {"session_id": current.id, "user_id": None, "trigger_source": "api"}
        spans = receiver_spans(capsession)
        assert_session_on_every_span(spans, current.id)
        (received,) = capsession.named("webhook receive")
        assert received.context.trace_id == send.get_span_context().trace_id
        assert received.parent is not None
        assert received.parent.span_id == send.get_span_context().span_id
        (record,) = app_logs.messages("webhook processed")
        assert record.__dict__["session.id"] == current.id

    @pytest.mark.parametrize("case", [str.upper, str.title, lambda key: key[0].upper() + key[1:]])
    def test_mixed_case_keys(
        self, webhook_receiver: RunningServer, case: Callable[[str], str], capsession: CapturedSpans
    ) -> None:
        with session(trigger_source="webhook") as current, tracer.start_as_current_span("webhook send") as send:
            metadata = {case(key): value for key, value in sessiontrace.inject({}).items()}
            seen = post(webhook_receiver.url, {"metadata": metadata}).json()

        assert not {"traceparent", "baggage"} & set(metadata)  # really not lower-case
        assert seen["session_id"] == current.id
        assert seen["trigger_source"] == "webhook"
        spans = receiver_spans(capsession)
        assert_session_on_every_span(spans, current.id)
        assert {span.context.trace_id for span in spans} == {send.get_span_context().trace_id}

    def test_user_is_kept_only_from_a_trusted_sender(
        self, webhook_receiver: RunningServer, capsession: CapturedSpans, reconfigure: Callable[..., Any]
    ) -> None:
        with session(user_id="alice") as current:
            metadata = sessiontrace.inject({})
        assert post(webhook_receiver.url, {"metadata": metadata}).json()["user_id"] is None

        reconfigure(inbound=InboundPolicy(trusted_peers=parse_networks(["127.0.0.1/32"])))
        seen = post(webhook_receiver.url, {"metadata": metadata}).json()
        assert seen == {"session_id": current.id, "user_id": "alice", "trigger_source": None}

    @pytest.mark.parametrize(
        "metadata",
        [
            {"baggage": 42, "traceparent": None},
            {"baggage": ["session.id=1", 2, None], "traceparent": [1, 2]},
            {"BAGGAGE": {"nested": "dict"}, "traceparent": 3.5},
            {"baggage": True, "uberctx-session.id": ["x"]},
            {"": "", "baggage": ""},
            [1, "two", None],
            "session.id=0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b",
            42,
            None,
        ],
        ids=repr,
    )
    def test_garbage_carrier_never_raises(
        self, webhook_receiver: RunningServer, metadata: Any, capsession: CapturedSpans
    ) -> None:
        seen = post(webhook_receiver.url, {"metadata": metadata}).json()
        assert seen["session_id"] is None
        # And in this process, straight through the API:
        assert sessiontrace.current_session(sessiontrace.extract(metadata)) is None
        assert receiver_spans(capsession)
        assert not capsession.of_session("0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b")
        assert semconv.SESSION_ID not in (capsession.named("webhook process")[0].attributes or {})
