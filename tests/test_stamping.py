"""Span stamping: what ``SessionSpanProcessor`` adds, what it leaves alone, and that it never fails.

Each test builds its own SDK ``TracerProvider`` (the processor under test, then an in-memory
exporter) so span limits can vary; the global provider is only used through ``capsession``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sessiontrace import SessionLogRecordProcessor, SessionSpanProcessor, semconv, session
from sessiontrace.processors import session_attributes, stamp
from sessiontrace.testing import CapturedSpans

SESSION_ID = "0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b"
OURS = set(semconv.SESSION_ATTRIBUTES)

StartSpan = Callable[..., ReadableSpan]


def _provider(limits: SpanLimits | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(span_limits=limits) if limits is not None else TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SessionSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def start_span() -> Iterator[Callable[..., ReadableSpan]]:
    """``start_span(name, limits=None, **kwargs)``: start and end one span on a fresh provider
    (with ``SpanLimits`` if given) and return it as exported."""
    providers: list[TracerProvider] = []

    def run(name: str = "work", limits: SpanLimits | None = None, **kwargs: Any) -> ReadableSpan:
        provider, exporter = _provider(limits)
        providers.append(provider)
        provider.get_tracer("test").start_span(name, **kwargs).end()
        (span,) = exporter.get_finished_spans()
        return span

    yield run
    for provider in providers:
        provider.shutdown()


def _full_session() -> Any:
    return session(
        id=SESSION_ID,
        user_id="alice",
        roles=["clerk", "auditor"],
        trigger_source="api",
        trigger_type="POST /claims",
        open_span=False,
    )


def _attached(ctx: Context) -> Any:
    """A context manager attaching ``ctx`` (try/finally, as the style asks)."""

    class _Scope:
        def __enter__(self) -> None:
            self.token = otel_context.attach(ctx)

        def __exit__(self, *exc: object) -> None:
            otel_context.detach(self.token)

    return _Scope()


class TestStampedValues:
    """Inside a session every span gets the session's attributes."""

    def test_full_session(self, start_span: StartSpan) -> None:
        with _full_session():
            span = start_span()
        assert dict(span.attributes or {}) == {
            semconv.SESSION_ID: SESSION_ID,
            semconv.USER_ID: "alice",
            semconv.USER_ROLES: ("clerk", "auditor"),
            semconv.TRIGGER_SOURCE: "api",
            semconv.TRIGGER_TYPE: "POST /claims",
        }

    def test_outside_any_session_nothing_is_stamped(self, start_span: StartSpan, capsession: CapturedSpans) -> None:
        assert not OURS & set(start_span().attributes or {})
        with trace.get_tracer("test").start_as_current_span("global outside"):
            pass
        (span,) = capsession.named("global outside")
        assert not OURS & set(span.attributes or {})

    def test_through_the_global_provider(self, capsession: CapturedSpans) -> None:
        with _full_session(), trace.get_tracer("test").start_as_current_span("global inside"):
            pass
        (span,) = capsession.named("global inside")
        assert (span.attributes or {})[semconv.SESSION_ID] == SESSION_ID
        assert (span.attributes or {})[semconv.USER_ID] == "alice"


class TestTheSpanWins:
    """We never overwrite what the span says about itself."""

    def test_attributes_given_at_creation_are_kept(self, start_span: StartSpan) -> None:
        own = {semconv.SESSION_ID: "11111111-2222-3333-4444-555555555555", semconv.USER_ID: "service-account"}
        with _full_session():
            span = start_span(attributes=own)
        attributes = span.attributes or {}
        assert attributes[semconv.SESSION_ID] == own[semconv.SESSION_ID]
        assert attributes[semconv.USER_ID] == "service-account"
        # What the span did not set is still ours.
        assert attributes[semconv.USER_ROLES] == ("clerk", "auditor")
        assert attributes[semconv.TRIGGER_SOURCE] == "api"

    def test_attributes_set_after_start_override_ours(self) -> None:
        provider, exporter = _provider()
        with _full_session():
            span = provider.get_tracer("test").start_span("work")
            span.set_attribute(semconv.USER_ID, "impersonated")
            span.set_attributes({semconv.TRIGGER_TYPE: "retry"})
            span.end()
        (finished,) = exporter.get_finished_spans()
        assert (finished.attributes or {})[semconv.USER_ID] == "impersonated"
        assert (finished.attributes or {})[semconv.TRIGGER_TYPE] == "retry"
        assert (finished.attributes or {})[semconv.SESSION_ID] == SESSION_ID


class TestSpanLimits:
    """Span limits are the SDK's to enforce: when they could bite we go through the public API."""

    def test_attribute_count_limit(self, start_span: StartSpan) -> None:
        with _full_session():
            span = start_span(limits=SpanLimits(max_attributes=2), attributes={"app.order": 7})
        attributes = dict(span.attributes or {})
        assert len(attributes) == 2  # five of ours plus one of its own did not fit
        assert span.dropped_attributes == 4
        assert set(attributes) <= OURS | {"app.order"}

    def test_count_limit_with_room_to_spare(self, start_span: StartSpan) -> None:
        with session(id=SESSION_ID, open_span=False):
            span = start_span(limits=SpanLimits(max_attributes=2), attributes={"app.order": 7})
        assert dict(span.attributes or {}) == {"app.order": 7, semconv.SESSION_ID: SESSION_ID}
        assert span.dropped_attributes == 0

    def test_value_length_limit_truncates_ours(self, start_span: StartSpan) -> None:
        with _full_session():
            span = start_span(limits=SpanLimits(max_span_attribute_length=10))
        attributes = span.attributes or {}
        assert attributes[semconv.SESSION_ID] == SESSION_ID[:10]
        assert attributes[semconv.USER_ID] == "alice"
        assert attributes[semconv.TRIGGER_TYPE] == "POST /clai"
        assert attributes[semconv.USER_ROLES] == ("clerk", "auditor")

    def test_fast_path_and_public_api_agree(self, start_span: StartSpan) -> None:
        """A limit far above our values takes the fast path; the result equals the public API's."""
        own = {"app.order": 7, semconv.USER_ID: "own"}
        with _full_session():
            fast = start_span(attributes=own)
            slow = start_span(attributes=own, limits=SpanLimits(max_span_attribute_length=5000, max_attributes=6))
        assert dict(fast.attributes or {}) == dict(slow.attributes or {})


class TestBaggageFromOtherPropagators:
    """A session id in plain W3C baggage (no ``Session`` under our key) is stamped if well formed;
    user fields from such baggage are never believed."""

    def _extract(self, header: str) -> Context:
        return W3CBaggagePropagator().extract({"baggage": header})

    def test_well_formed_id_only(self, start_span: StartSpan) -> None:
        upper = SESSION_ID.upper()
        ctx = self._extract(f"session.id={upper},user.id=mallory,user.roles=admin,sessiontrace.trigger.source=api")
        assert baggage.get_baggage(semconv.USER_ID, ctx) == "mallory"  # it is there, but not believed
        with _attached(ctx):
            span = start_span()
        assert dict(span.attributes or {}) == {semconv.SESSION_ID: SESSION_ID}
        assert session_attributes(ctx) == {semconv.SESSION_ID: SESSION_ID}

    @pytest.mark.parametrize("value", ["not-a-uuid", "0190b0a6", f"{SESSION_ID}x", "%00"])
    def test_malformed_id_stamps_nothing(self, start_span: StartSpan, value: str) -> None:
        ctx = self._extract(f"session.id={value},user.id=mallory")
        with _attached(ctx):
            span = start_span()
        assert not OURS & set(span.attributes or {})
        assert session_attributes(ctx) is None

    def test_explicit_parent_context_is_read(self, start_span: StartSpan) -> None:
        """The processor reads the context the span starts in, not just the current one."""
        session_id = str(uuid.uuid4())
        span = start_span(context=self._extract(f"session.id={session_id}"))
        assert (span.attributes or {})[semconv.SESSION_ID] == session_id


class _Exploding:
    """A span-like object whose every attribute access fails."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"boom: {name}")


class TestNeverRaises:
    """Processors never raise into the application."""

    @pytest.mark.parametrize("span", [object(), None, _Exploding()], ids=["bare-object", "none", "exploding"])
    def test_span_processor(self, span: Any, caplog: pytest.LogCaptureFixture) -> None:
        processor = SessionSpanProcessor()
        with _full_session(), caplog.at_level(logging.DEBUG, logger="sessiontrace"):
            processor.on_start(span)
            processor.on_start(span, parent_context=Context())
        assert "stamping failed" in caplog.text
        processor.on_end(span)
        assert processor.force_flush() is True
        processor.shutdown()

    def test_stamp_failure_leaves_the_span_usable(self) -> None:
        class Recording:
            _attributes = None
            attributes = None

            def is_recording(self) -> bool:
                return True

            def set_attributes(self, attributes: Any) -> None:
                raise TypeError("rejected")

        processor = SessionSpanProcessor()
        with _full_session():
            processor.on_start(Recording())  # type: ignore[arg-type]
        with pytest.raises(TypeError), _full_session():  # stamp() itself may raise; on_start is the guard
            stamp(Recording(), {semconv.SESSION_ID: SESSION_ID})

    @pytest.mark.parametrize("record", [object(), None, _Exploding()], ids=["bare-object", "none", "exploding"])
    def test_log_processor(self, record: Any) -> None:
        processor = SessionLogRecordProcessor()
        with _full_session():
            processor.on_emit(record)
            processor.emit(record)
        assert processor.force_flush() is True
        processor.shutdown()

    def test_a_non_recording_span_is_left_alone(self) -> None:
        span = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
        with _full_session():
            SessionSpanProcessor().on_start(span)  # type: ignore[arg-type]
            stamp(span, {semconv.SESSION_ID: SESSION_ID})
        assert not span.is_recording()
