"""Edges of workflow runs, steps and AI confidence: a decorated generator whose body keeps its own
step or span open across a ``yield``, a step failed by ``set_status`` without an exception, a
workflow name with surrounding whitespace continued over baggage, and the inputs that
``record_confidence``, ``confidence_from_logprobs`` and ``record_review`` accept or refuse."""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
from collections.abc import AsyncIterator, Generator, Iterator
from fractions import Fraction
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.sdk.trace import ReadableSpan

from sessiontrace import _attributes, semconv
from sessiontrace.ai import confidence_from_logprobs, record_confidence, record_review
from sessiontrace.testing import CapturedSpans
from sessiontrace.workflow import admit_run, current_run, set_status, step, workflow

tracer = trace.get_tracer("sessiontrace_tests.workflow_edges")


def only(captured: CapturedSpans, name: str) -> ReadableSpan:
    (span,) = captured.named(name)
    return span


def statuses(span: ReadableSpan) -> list[str]:
    """The ``to`` of each status change of ``span``, in order."""
    return [
        str((event.attributes or {})[semconv.STATUS_TO])
        for event in span.events
        if event.name == semconv.STATUS_CHANGE_EVENT
    ]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


# --- generators: the body resumes in the context it left ------------------------------------------------
class TestGeneratorBodyContext:
    """What a generator body attaches itself (a nested step, a current span) is current again when
    it resumes after a ``yield``, and still never current in the consumer between items."""

    def test_generator_resumes_inside_its_own_nested_step(self, capsession: CapturedSpans) -> None:
        @step("outer")
        def outer() -> Iterator[int]:
            with step("inner"):
                yield 1
                set_status("waiting_for_human", "asked after the first item")
                with tracer.start_as_current_span("child"):
                    pass
                yield 2

        with workflow("w"):
            run_span = trace.get_current_span()
            for _ in outer():
                assert trace.get_current_span() is run_span, "the body's context leaked into the consumer"
        inner, outer_span = only(capsession, "step inner"), only(capsession, "step outer")
        assert parent_of(only(capsession, "child")) == inner.context.span_id
        assert statuses(inner) == ["running", "waiting_for_human", "succeeded"]
        assert statuses(outer_span) == ["running", "succeeded"]

    def test_async_generator_resumes_inside_its_own_nested_step(self, capsession: CapturedSpans) -> None:
        @step("aouter")
        async def aouter() -> AsyncIterator[int]:
            with step("ainner"):
                yield 1
                set_status("waiting_for_human", "asked after the first item")
                with tracer.start_as_current_span("achild"):
                    pass
                yield 2

        async def consume() -> list[int]:
            items = []
            async for item in aouter():
                assert not trace.get_current_span().get_span_context().is_valid, "the body's context leaked"
                items.append(item)
            return items

        assert asyncio.run(consume()) == [1, 2]
        inner, outer_span = only(capsession, "step ainner"), only(capsession, "step aouter")
        assert parent_of(only(capsession, "achild")) == inner.context.span_id
        assert statuses(inner) == ["running", "waiting_for_human", "succeeded"]
        assert statuses(outer_span) == ["running", "succeeded"]

    def test_generator_closed_early_cleans_up_in_its_own_context(self, capsession: CapturedSpans) -> None:
        @step("outer")
        def outer() -> Generator[int, None, None]:
            with step("inner"):
                try:
                    yield 1
                    yield 2
                finally:
                    with tracer.start_as_current_span("cleanup"):
                        pass

        generator = outer()
        assert next(generator) == 1
        generator.close()
        assert not trace.get_current_span().get_span_context().is_valid
        inner = only(capsession, "step inner")
        assert parent_of(only(capsession, "cleanup")) == inner.context.span_id
        assert statuses(inner)[-1] == "cancelled"
        assert statuses(only(capsession, "step outer"))[-1] == "cancelled"

    def test_thrown_in_error_reaches_the_body_in_its_own_context(self, capsession: CapturedSpans) -> None:
        @step("outer")
        def outer() -> Generator[int, None, None]:
            with step("inner"):
                try:
                    yield 1
                except ValueError:
                    set_status("waiting_for_human", "bad item")
                    yield 2

        generator = outer()
        assert next(generator) == 1
        assert generator.throw(ValueError("bad")) == 2
        with pytest.raises(StopIteration):
            next(generator)
        assert statuses(only(capsession, "step inner")) == ["running", "waiting_for_human", "succeeded"]
        assert statuses(only(capsession, "step outer")) == ["running", "succeeded"]


# --- failures without an exception ------------------------------------------------------------------------
class TestFailedWithoutException:
    def test_set_status_failed_carries_a_fallback_error_type(self, capsession: CapturedSpans) -> None:
        with workflow("w"), step("s"):
            set_status("failed", "bad input")
        failed = only(capsession, "step s")
        assert (failed.attributes or {})[semconv.STEP_RESULT] == "failure"
        assert (failed.attributes or {})[semconv.ERROR_TYPE] == "_OTHER"
        assert semconv.ERROR_TYPE not in (only(capsession, "workflow w").attributes or {})

    def test_failed_run_carries_a_fallback_error_type(self, capsession: CapturedSpans) -> None:
        @workflow("w")
        def run() -> None:
            set_status("failed")

        run()
        assert (only(capsession, "workflow w").attributes or {})[semconv.ERROR_TYPE] == "_OTHER"

    def test_an_error_type_set_by_the_body_is_kept(self, capsession: CapturedSpans) -> None:
        with step("s"):
            trace.get_current_span().set_attribute(semconv.ERROR_TYPE, "timeout")
            set_status("failed", "took too long")
        assert (only(capsession, "step s").attributes or {})[semconv.ERROR_TYPE] == "timeout"


# --- names that travel in baggage ----------------------------------------------------------------------------
class TestNamesInBaggage:
    def test_padded_workflow_name_round_trips_through_baggage(self, capsession: CapturedSpans) -> None:
        carrier: dict[str, str] = {}
        with workflow("  claims triage \u00a0") as run:
            W3CBaggagePropagator().inject(carrier)
        assert run.name == "claims triage"
        received = baggage.get_all(W3CBaggagePropagator().extract(carrier))
        continued = current_run(admit_run(received, otel_context.Context()))
        assert continued is not None
        assert (continued.name, continued.id) == (run.name, run.id)
        assert len(capsession.named("workflow claims triage")) == 1

    def test_step_names_and_ids_are_stripped_too(self, capsession: CapturedSpans) -> None:
        with step(" s ", step_id=" id-1 ") as current:
            pass
        assert (current.name, current.id) == ("s", "id-1")
        assert (only(capsession, "step s").attributes or {})[semconv.STEP_ID] == "id-1"

    @pytest.mark.parametrize("name", ["", "   ", "\u00a0\u2003"])
    def test_blank_names_are_refused(self, name: str) -> None:
        with pytest.raises(ValueError, match="workflow name"):
            workflow(name)


# --- confidence and review inputs -----------------------------------------------------------------------------
class TestConfidenceInputs:
    @pytest.mark.parametrize("score", [Fraction(9, 10), 0, 1])
    def test_real_numbers_are_scores(self, capsession: CapturedSpans, score: Any) -> None:
        with tracer.start_as_current_span("ai"):
            record_confidence(score)
        assert (only(capsession, "ai").attributes or {})[semconv.GEN_AI_CONFIDENCE] == float(score)

    def test_numpy_floats_are_scores(self, capsession: CapturedSpans) -> None:
        numpy = pytest.importorskip("numpy")
        with tracer.start_as_current_span("ai"):
            record_confidence(numpy.float32(0.5))
            record_confidence(numpy.float64(0.25), name="other")
        span = only(capsession, "ai")
        assert (span.attributes or {})[semconv.GEN_AI_CONFIDENCE] == 0.5
        values = [(event.attributes or {})[semconv.GEN_AI_EVALUATION_SCORE_VALUE] for event in span.events]
        assert values == [0.5, 0.25]
        assert all(type(value) is float for value in values)

    @pytest.mark.parametrize(
        "score",
        [True, "0.5", None, math.nan, 1.5, pytest.param(10**400, id="huge"), pytest.param(-(10**400), id="-huge")],
    )
    def test_non_scores_are_value_errors(self, score: Any) -> None:
        with pytest.raises(ValueError, match="confidence"):
            record_confidence(score)

    @pytest.mark.parametrize("name", [None, "", 7])
    def test_a_bad_evaluation_name_is_a_value_error(self, name: Any) -> None:
        with pytest.raises(ValueError, match="name must be a non-empty string"):
            record_confidence(0.5, name=name)

    def test_a_token_of_probability_zero_makes_the_confidence_zero(self) -> None:
        assert confidence_from_logprobs([-0.01, -math.inf]) == 0.0
        assert confidence_from_logprobs([-math.inf]) == 0.0

    def test_nan_and_positive_infinity_are_skipped(self) -> None:
        assert confidence_from_logprobs([math.nan, math.inf, -0.1]) == pytest.approx(math.exp(-0.1))
        assert confidence_from_logprobs([math.nan, None]) is None  # type: ignore[list-item]
        assert confidence_from_logprobs([]) is None

    @pytest.mark.parametrize(
        "logprobs",
        [
            pytest.param([10**400], id="huge int"),
            pytest.param([800.0], id="800"),
            pytest.param([1e308, 1e308], id="sum"),
        ],
    )
    def test_logprobs_beyond_range_are_value_errors(self, logprobs: list[float]) -> None:
        with pytest.raises(ValueError, match="out of range"):
            confidence_from_logprobs(logprobs)

    def test_review_reason_must_be_a_string(self, capsession: CapturedSpans) -> None:
        with tracer.start_as_current_span("ai") as judged:
            pass
        with pytest.raises(ValueError, match="reason"):
            record_review(judged.get_span_context(), "approve", reason=123)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="reason"):
            record_review(judged.get_span_context(), "approve", reason="  ")
        assert capsession.named(semconv.GEN_AI_REVIEW_SPAN) == []

    def test_review_of_a_span_instead_of_its_context_is_a_type_error(self, capsession: CapturedSpans) -> None:
        with tracer.start_as_current_span("ai") as judged:
            pass
        with pytest.raises(TypeError, match="get_span_context"):
            record_review(judged, "approve", reason="ok")  # type: ignore[arg-type]
        record_review(judged.get_span_context(), "approve", reason="ok")
        (review,) = capsession.named(semconv.GEN_AI_REVIEW_SPAN)
        assert [link.context.span_id for link in review.links] == [judged.get_span_context().span_id]


class TestReviewInputs:
    def test_a_review_needs_a_real_call_and_string_names(self) -> None:
        from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanContext, TraceFlags

        from sessiontrace.ai.confidence import record_review

        judged = SpanContext(trace_id=1, span_id=2, is_remote=False, trace_flags=TraceFlags(1))
        with pytest.raises(ValueError, match="invalid SpanContext"):
            record_review(INVALID_SPAN_CONTEXT, "approve", reason="looks right")
        with pytest.raises(ValueError, match="reviewer must be a string"):
            record_review(judged, "approve", reason="looks right", reviewer=7)
        with pytest.raises(ValueError, match="label must be a string"):
            record_review(judged, "override", reason="wrong class", label=3)
        record_review(judged, "approve", reason="looks right", reviewer="u-7", label="high")


# --- writes racing the end: what the SDK's own setters do --------------------------------------------
class TestWritesRacingTheEnd:
    """A thread that inherited a step's context may change its status while the step ends on
    another, and a stream's answer may be recorded on one thread while another ends its span. Our
    direct writes into the SDK's containers take the span's lock, as ``set_attribute`` and
    ``add_event`` do: ``end()`` freezes the span under it, so no write lands after it (an
    exporter reading an ended span must never see it change)."""

    @staticmethod
    def blocked_by_span_lock(span: Any, write: Any) -> list[Any]:
        """Run ``write`` on another thread while this one holds ``span``'s lock; assert it waited."""
        results: list[Any] = []
        with span._lock:
            writer = threading.Thread(target=lambda: results.append(write()))
            writer.start()
            writer.join(0.3)
            assert writer.is_alive(), "the write did not wait for the span's lock"
            assert results == []
        writer.join(5)
        assert not writer.is_alive()
        return results

    def test_a_status_change_from_another_thread_waits_for_the_span(self, capsession: CapturedSpans) -> None:
        with step("shared"):
            span = trace.get_current_span()
            inherited = contextvars.copy_context()
            results = self.blocked_by_span_lock(
                span, lambda: inherited.run(set_status, "waiting_for_human", "asked a colleague")
            )
            assert results == [True]
        assert statuses(only(capsession, "step shared")) == ["running", "waiting_for_human", "succeeded"]

    def test_a_plain_finish_writes_under_the_span_lock_once(self, capsession: CapturedSpans) -> None:
        """The common end (pending → running → succeeded) writes its events and result under the
        span's lock too: it waits for a writer holding it, and then records one start event."""
        spans: list[Any] = []
        entered, leave = threading.Event(), threading.Event()

        def run_step() -> None:
            with step("ending"):
                spans.append(trace.get_current_span())
                entered.set()
                leave.wait(5)

        worker = threading.Thread(target=run_step)
        worker.start()
        assert entered.wait(5)
        (span,) = spans
        with span._lock:
            leave.set()
            worker.join(0.3)
            assert worker.is_alive(), "the step's end did not wait for the span's lock"
        worker.join(5)
        ended = only(capsession, "step ending")
        assert statuses(ended) == ["running", "succeeded"]
        assert (ended.attributes or {})[semconv.STEP_RESULT] == "success"

    def test_direct_attributes_wait_for_the_span_and_never_land_after_its_end(self, capsession: CapturedSpans) -> None:
        span = tracer.start_span("answer")
        results = self.blocked_by_span_lock(span, lambda: _attributes.add(span, {"k": "v"}, replace=True))
        assert results == [True]
        span.end()
        assert _attributes.add(span, {"late": "v"}, replace=True) is False
        attributes = only(capsession, "answer").attributes or {}
        assert attributes["k"] == "v"
        assert "late" not in attributes


# --- the global provider replaced ------------------------------------------------------------------------
def test_spans_follow_the_global_provider_when_a_test_suite_resets_it(capsession: CapturedSpans) -> None:
    """Test suites reset OpenTelemetry's globals between tests (its own test utilities do): our
    steps and AI calls then go to the provider set since, not to the one they first saw."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.util._once import Once

    from sessiontrace.ai import ai_call

    with step("before"), ai_call(model="m-before"):
        pass
    assert capsession.named("step before")
    assert capsession.named("chat m-before")

    exporter = InMemorySpanExporter()
    replacement = TracerProvider()
    replacement.add_span_processor(SimpleSpanProcessor(exporter))
    saved = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE
    trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = None, Once()
    try:
        trace.set_tracer_provider(replacement)
        with step("after"), ai_call(model="m-after"):
            pass
    finally:
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved
    assert sorted(span.name for span in exporter.get_finished_spans()) == ["chat m-after", "step after"]
    assert not capsession.named("step after")

    with step("restored"):
        pass
    assert capsession.named("step restored")
