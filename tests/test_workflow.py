"""Workflow runs and steps: the spans, attributes and status events that ``workflow()`` and
``step()`` record for functions, coroutines, generators and async generators; retries, failure,
cancellation, human waits; and a run continued in another service across a real HTTP hop."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

import celery_app
from _servers import RunningServer, start_wsgi, wait_for
from sessiontrace import _log, semconv
from sessiontrace.context import Session, current_session, new_session_id, session
from sessiontrace.integrations import wsgi as session_wsgi
from sessiontrace.policy import InboundPolicy
from sessiontrace.propagation import extract, inject, session_propagator
from sessiontrace.testing import CapturedSpans
from sessiontrace.workflow import Run, current_run, set_status, step, workflow
from test_celery import Worker, publisher, run_task, stored_spans, worker  # noqa: F401  (fixtures: a Celery worker over Redis)

CHANGE = semconv.STATUS_CHANGE_EVENT
STARTED = ("pending", "running", None)
SUCCEEDED = ("running", "succeeded", None)
tracer = trace.get_tracer("sessiontrace_tests.workflow")


# --- helpers ------------------------------------------------------------------------------------------------
def changes(span: ReadableSpan) -> list[tuple[str, str, str | None]]:
    """The span's status changes as (from, to, reason), in order."""
    found: list[tuple[str, str, str | None]] = []
    for event in span.events:
        if event.name == CHANGE:
            attributes = event.attributes or {}
            reason = attributes.get(semconv.STATUS_REASON)
            found.append(
                (
                    str(attributes[semconv.STATUS_FROM]),
                    str(attributes[semconv.STATUS_TO]),
                    None if reason is None else str(reason),
                )
            )
    return found


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return {
        key: (tuple(value) if isinstance(value, (list, tuple)) else value)
        for key, value in (span.attributes or {}).items()
    }


def only(captured: CapturedSpans, name: str) -> ReadableSpan:
    (span,) = captured.named(name)
    return span


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def session_attributes(current: Session) -> dict[str, Any]:
    return dict(current.attributes)


def run_attributes(run: Run) -> dict[str, Any]:
    return {semconv.WORKFLOW_NAME: run.name, semconv.WORKFLOW_RUN_ID: run.id}


def step_end(result: str = "success", status: str = "succeeded") -> dict[str, Any]:
    return {semconv.WORKFLOW_STATUS: status, semconv.STEP_RESULT: result}


class Flaky:
    """Raises ``error`` on the first ``failures`` calls, then returns ``"done"``."""

    def __init__(self, failures: int, error: type[BaseException] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0
        self.raised: list[BaseException] = []

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            error = self.error(f"attempt {self.calls} failed")
            self.raised.append(error)
            raise error
        return "done"


# --- sync, async, generators ----------------------------------------------------------------------------------
class TestRunAndSteps:
    """A run is a ``workflow {name}`` span below the session; each step is a ``step {name}`` child
    carrying the run's name and id, its index and attempt; both go pending → running → succeeded."""

    def test_sync_steps_in_a_run(self, capsession: CapturedSpans) -> None:
        @step("validate claim")
        def validate(amount: int) -> bool:
            return amount > 0

        @step("score claim", step_id="score-v2")
        def score() -> float:
            return 0.5

        with (
            session(user_id="u-1", roles=["adjuster"], trigger_source="api", trigger_type="POST /claims") as current,
            workflow("claims triage") as run,
        ):
            assert current_run() == run
            assert validate(10) is True
            assert score() == 0.5
        assert current_run() is None

        run_span = only(capsession, "workflow claims triage")
        first, second = only(capsession, "step validate claim"), only(capsession, "step score claim")
        session_span = only(capsession, semconv.SESSION_SPAN)
        assert run_span.kind == trace.SpanKind.INTERNAL
        assert attributes(run_span) == {
            **session_attributes(current),
            **run_attributes(run),
            semconv.WORKFLOW_TRIGGER_TYPE: "api",
            semconv.WORKFLOW_TRIGGER_NAME: "POST /claims",
            semconv.WORKFLOW_STATUS: "succeeded",
            semconv.WORKFLOW_RESULT: "success",
        }
        assert attributes(first) == {
            **session_attributes(current),
            **run_attributes(run),
            semconv.STEP_NAME: "validate claim",
            semconv.STEP_ID: "validate claim",
            semconv.STEP_INDEX: 0,
            semconv.STEP_ATTEMPT: 1,
            **step_end(),
        }
        assert attributes(second) == {
            **session_attributes(current),
            **run_attributes(run),
            semconv.STEP_NAME: "score claim",
            semconv.STEP_ID: "score-v2",
            semconv.STEP_INDEX: 1,
            semconv.STEP_ATTEMPT: 1,
            **step_end(),
        }
        for span in (run_span, first, second):
            assert changes(span) == [STARTED, SUCCEEDED]
            assert span.status.status_code == StatusCode.UNSET
            started = span.events[0].timestamp
            assert started == span.start_time, "pending → running is stamped when the span starts"
        assert parent_of(run_span) == session_span.context.span_id
        assert parent_of(first) == parent_of(second) == run_span.context.span_id
        assert {span.context.trace_id for span in capsession.spans} == {session_span.context.trace_id}

    def test_run_id_is_a_fresh_uuid7_unless_given(self, capsession: CapturedSpans) -> None:
        with workflow("w") as first, workflow("w") as second:
            pass
        assert first.id != second.id
        assert first.id[14] == "7", first.id  # the version nibble of a UUIDv7
        given = new_session_id()
        with workflow("w", run_id=given.upper()) as continued:
            pass
        assert continued.id == given

    def test_explicit_trigger_wins_over_the_session(self, capsession: CapturedSpans) -> None:
        with (
            session(trigger_source="api", trigger_type="POST /claims"),
            workflow("nightly", trigger_source="schedule", trigger_type="cron 0 2 * * *"),
        ):
            pass
        span = only(capsession, "workflow nightly")
        assert attributes(span)[semconv.WORKFLOW_TRIGGER_TYPE] == "schedule"
        assert attributes(span)[semconv.WORKFLOW_TRIGGER_NAME] == "cron 0 2 * * *"

    def test_run_without_a_session_has_no_trigger(self, capsession: CapturedSpans) -> None:
        with workflow("w") as run:
            pass
        assert attributes(only(capsession, "workflow w")) == {
            **run_attributes(run),
            semconv.WORKFLOW_STATUS: "succeeded",
            semconv.WORKFLOW_RESULT: "success",
        }

    def test_async_steps_in_an_async_run(self, capsession: CapturedSpans) -> None:
        @step("fetch policy")
        async def fetch(policy: str) -> str:
            await asyncio.sleep(0)
            return policy.upper()

        @workflow("claims")
        async def handle() -> tuple[str, str, Run | None]:
            first = await fetch("p-1")
            second = await asyncio.create_task(fetch("p-2"))  # a task copies the context
            return first, second, current_run()

        with session() as current:
            first, second, run = asyncio.run(handle())
        assert (first, second) == ("P-1", "P-2")
        assert run is not None

        run_span = only(capsession, "workflow claims")
        steps = sorted(capsession.named("step fetch policy"), key=lambda span: span.start_time or 0)
        assert [attributes(span)[semconv.STEP_INDEX] for span in steps] == [0, 1]
        for span in steps:
            assert attributes(span)[semconv.WORKFLOW_RUN_ID] == run.id
            assert attributes(span)[semconv.SESSION_ID] == current.id
            assert parent_of(span) == run_span.context.span_id
            assert changes(span) == [STARTED, SUCCEEDED]
        assert changes(run_span) == [STARTED, SUCCEEDED]

    def test_each_decorated_call_is_a_new_run(self, capsession: CapturedSpans) -> None:
        @workflow("w")
        def handle() -> Run | None:
            return current_run()

        first, second = handle(), handle()
        assert first is not None
        assert second is not None
        assert first.id != second.id
        assert len(capsession.named("workflow w")) == 2

    def test_nested_steps_are_numbered_in_order_of_start(self, capsession: CapturedSpans) -> None:
        with workflow("w") as run:
            with step("outer") as outer:
                with step("inner a") as inner_a:
                    pass
                with step("inner b") as inner_b:
                    pass
            with step("after") as after:
                pass
        assert (outer.index, inner_a.index, inner_b.index, after.index) == (0, 1, 2, 3)
        assert outer.run == run
        spans = {span.name: span for span in capsession.spans}
        assert [
            attributes(spans[f"step {name}"])[semconv.STEP_INDEX] for name in ("outer", "inner a", "inner b", "after")
        ] == [0, 1, 2, 3]
        assert (
            parent_of(spans["step inner a"]) == parent_of(spans["step inner b"]) == spans["step outer"].context.span_id
        )
        assert parent_of(spans["step outer"]) == parent_of(spans["step after"]) == spans["workflow w"].context.span_id

    def test_steps_in_threads_get_distinct_indexes(self, capsession: CapturedSpans) -> None:
        @step("work")
        def work(number: int) -> int:
            return number

        with workflow("w") as run, ThreadPoolExecutor(4) as pool:
            assert sorted(pool.map(work, range(20))) == list(range(20))
        spans = capsession.named("step work")
        assert sorted(attributes(span)[semconv.STEP_INDEX] for span in spans) == list(range(20))
        assert {attributes(span)[semconv.WORKFLOW_RUN_ID] for span in spans} == {run.id}

    def test_step_outside_any_workflow(self, capsession: CapturedSpans) -> None:
        @step("standalone")
        def standalone() -> int:
            return 1

        assert standalone() == 1
        with step("with block", attempt=3) as info:
            pass
        assert info.index is None
        assert info.run is None
        assert info.attempt == 3
        assert attributes(only(capsession, "step standalone")) == {
            semconv.STEP_NAME: "standalone",
            semconv.STEP_ID: "standalone",
            semconv.STEP_ATTEMPT: 1,
            **step_end(),
        }
        assert attributes(only(capsession, "step with block"))[semconv.STEP_ATTEMPT] == 3
        assert changes(only(capsession, "step standalone")) == [STARTED, SUCCEEDED]


class TestGenerators:
    """A decorated generator's span covers the whole iteration, and its context is current only
    while the generator's own body runs, never in the consumer between items."""

    def test_generator_span_covers_iteration_without_leaking_context(self, capsession: CapturedSpans) -> None:
        @step("read rows")
        def rows(count: int) -> Iterator[tuple[int, trace.Span]]:
            for number in range(count):
                with tracer.start_as_current_span(f"row {number}"):
                    pass
                yield number, trace.get_current_span()
            set_status("waiting_for_human", "last row needs review")

        with workflow("w") as run:
            run_span = trace.get_current_span()
            seen = []
            for number, inside in rows(2):
                assert trace.get_current_span() is run_span, "the step's context leaked into the consumer"
                assert current_run() == run
                seen.append((number, inside))
        assert [number for number, _ in seen] == [0, 1]
        step_span = only(capsession, "step read rows")
        assert {inside.get_span_context().span_id for _, inside in seen} == {step_span.context.span_id}
        for number in range(2):
            assert parent_of(only(capsession, f"row {number}")) == step_span.context.span_id
        assert changes(step_span) == [
            STARTED,
            ("running", "waiting_for_human", "last row needs review"),
            ("waiting_for_human", "succeeded", None),
        ]
        assert attributes(step_span)[semconv.STEP_RESULT] == "success"

    def test_generator_return_value_and_send_pass_through(self, capsession: CapturedSpans) -> None:
        @step("echo")
        def echo() -> Any:
            received = yield "ready"
            yield f"got {received}"
            return "finished"

        generator = echo()
        assert next(generator) == "ready"
        assert generator.send("x") == "got x"
        with pytest.raises(StopIteration) as stop:
            next(generator)
        assert stop.value.value == "finished"
        assert changes(only(capsession, "step echo")) == [STARTED, SUCCEEDED]

    def test_generator_closed_early_is_cancelled(self, capsession: CapturedSpans) -> None:
        cleaned_up_in: list[trace.Span] = []

        @step("stream")
        def stream() -> Generator[int, None, None]:
            try:
                yield from range(10)
            finally:
                cleaned_up_in.append(trace.get_current_span())

        generator = stream()
        assert next(generator) == 0
        generator.close()
        span = only(capsession, "step stream")
        assert changes(span) == [STARTED, ("running", "cancelled", "closed before exhaustion")]
        assert attributes(span)[semconv.STEP_RESULT] == "cancellation"
        assert attributes(span)[semconv.WORKFLOW_STATUS] == "cancelled"
        assert span.status.status_code == StatusCode.UNSET
        assert semconv.ERROR_TYPE not in attributes(span)
        assert cleaned_up_in[0].get_span_context().span_id == span.context.span_id

    def test_generator_never_started_records_nothing(self, capsession: CapturedSpans) -> None:
        @step("lazy")
        def lazy() -> Generator[int, None, None]:
            yield 1

        lazy().close()
        assert capsession.named("step lazy") == []

    def test_generator_failure_is_recorded_and_propagates(self, capsession: CapturedSpans) -> None:
        @step("parse")
        def parse() -> Iterator[int]:
            yield 1
            raise ValueError("bad row")

        with pytest.raises(ValueError, match="bad row"):
            list(parse())
        span = only(capsession, "step parse")
        assert attributes(span)[semconv.ERROR_TYPE] == "ValueError"
        assert span.status.status_code == StatusCode.ERROR
        assert changes(span) == [STARTED, ("running", "failed", "ValueError")]

    def test_async_generator(self, capsession: CapturedSpans) -> None:
        @step("pages")
        async def pages(count: int) -> AsyncIterator[tuple[int, int]]:
            for number in range(count):
                await asyncio.sleep(0)
                yield number, trace.get_current_span().get_span_context().span_id

        async def consume() -> tuple[list[tuple[int, int]], list[bool]]:
            leaked, items = [], []
            async with workflow("w"):
                outside = trace.get_current_span()
                async for item in pages(3):
                    leaked.append(trace.get_current_span() is not outside)
                    items.append(item)
            return items, leaked

        items, leaked = asyncio.run(consume())
        span = only(capsession, "step pages")
        assert items == [(number, span.context.span_id) for number in range(3)]
        assert leaked == [False, False, False]
        assert changes(span) == [STARTED, SUCCEEDED]
        assert parent_of(span) == only(capsession, "workflow w").context.span_id

    def test_async_generator_closed_early_is_cancelled(self, capsession: CapturedSpans) -> None:
        @step("ticks")
        async def ticks() -> AsyncGenerator[int, None]:
            for number in range(10):
                yield number

        async def take_one() -> int:
            generator = ticks()
            first = await generator.__anext__()
            await generator.aclose()
            return first

        assert asyncio.run(take_one()) == 0
        span = only(capsession, "step ticks")
        assert changes(span) == [STARTED, ("running", "cancelled", "closed before exhaustion")]
        assert attributes(span)[semconv.STEP_RESULT] == "cancellation"


# --- failure, cancellation, retries --------------------------------------------------------------------------
class TestFailureAndCancellation:
    """An exception fails the step and the run (``error.type``, status ERROR, result failure) and
    propagates unchanged; cancellation ends them ``cancelled`` without marking an error."""

    def test_failure_marks_step_and_run(self, capsession: CapturedSpans) -> None:
        class ClaimRejected(Exception):
            pass

        raised = ClaimRejected("amount over limit")

        @step("approve")
        def approve() -> None:
            raise raised

        with pytest.raises(ClaimRejected) as caught, workflow("claims"):
            approve()
        assert caught.value is raised
        step_span, run_span = only(capsession, "step approve"), only(capsession, "workflow claims")
        for span, result_key in ((step_span, semconv.STEP_RESULT), (run_span, semconv.WORKFLOW_RESULT)):
            assert attributes(span)[semconv.ERROR_TYPE] == ClaimRejected.__qualname__
            assert attributes(span)[result_key] == "failure"
            assert attributes(span)[semconv.WORKFLOW_STATUS] == "failed"
            assert span.status.status_code == StatusCode.ERROR
            assert span.status.description == f"{ClaimRejected.__qualname__}: amount over limit"
            assert changes(span) == [STARTED, ("running", "failed", ClaimRejected.__qualname__)]
            assert [event.name for event in span.events][-1] == "exception"

    def test_cancelled_task_cancels_step_and_run(self, capsession: CapturedSpans) -> None:
        @step("wait for payment")
        async def wait_for_payment(started: asyncio.Event) -> None:
            started.set()
            await asyncio.sleep(30)

        @workflow("payment")
        async def payment(started: asyncio.Event) -> None:
            await wait_for_payment(started)

        async def main() -> None:
            started = asyncio.Event()
            task = asyncio.create_task(payment(started))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        for name, result_key in (
            ("step wait for payment", semconv.STEP_RESULT),
            ("workflow payment", semconv.WORKFLOW_RESULT),
        ):
            span = only(capsession, name)
            assert changes(span) == [STARTED, ("running", "cancelled", "CancelledError")]
            assert attributes(span)[result_key] == "cancellation"
            assert semconv.ERROR_TYPE not in attributes(span)
            assert span.status.status_code == StatusCode.UNSET

    def test_keyboard_interrupt_is_a_cancellation(self, capsession: CapturedSpans) -> None:
        with pytest.raises(KeyboardInterrupt), step("long job"):
            raise KeyboardInterrupt
        span = only(capsession, "step long job")
        assert changes(span) == [STARTED, ("running", "cancelled", "KeyboardInterrupt")]


class TestRetries:
    """As a decorator, ``retries=N`` re-runs a failing call up to N more times; every attempt is
    its own span with the same index, failed ones marked ERROR; the last exception propagates."""

    def test_each_attempt_is_a_span(self, capsession: CapturedSpans) -> None:
        flaky = Flaky(failures=2)
        call_ledger = step("call ledger", retries=3)(flaky)
        with workflow("w") as run:
            with step("before"):
                pass
            assert call_ledger() == "done"
        attempts = sorted(capsession.named("step call ledger"), key=lambda span: span.start_time or 0)
        assert [attributes(span)[semconv.STEP_ATTEMPT] for span in attempts] == [1, 2, 3]
        assert {attributes(span)[semconv.STEP_INDEX] for span in attempts} == {1}
        assert {parent_of(span) for span in attempts} == {only(capsession, "workflow w").context.span_id}
        for span in attempts[:2]:
            assert attributes(span)[semconv.ERROR_TYPE] == "ConnectionError"
            assert attributes(span)[semconv.STEP_RESULT] == "failure"
            assert span.status.status_code == StatusCode.ERROR
            assert changes(span) == [STARTED, ("running", "failed", "ConnectionError, retrying")]
        assert attributes(attempts[2]) == {
            **run_attributes(run),
            semconv.STEP_NAME: "call ledger",
            semconv.STEP_ID: "call ledger",
            semconv.STEP_INDEX: 1,
            semconv.STEP_ATTEMPT: 3,
            **step_end(),
        }
        assert attempts[2].status.status_code == StatusCode.UNSET

    def test_last_exception_propagates_unchanged(self, capsession: CapturedSpans) -> None:
        flaky = Flaky(failures=5, error=TimeoutError)
        with pytest.raises(TimeoutError) as caught:
            step("slow", retries=1)(flaky)()
        assert caught.value is flaky.raised[-1]
        assert flaky.calls == 2
        attempts = sorted(capsession.named("step slow"), key=lambda span: span.start_time or 0)
        assert [changes(span)[-1] for span in attempts] == [
            ("running", "failed", "TimeoutError, retrying"),
            ("running", "failed", "TimeoutError"),
        ]

    def test_only_retry_on_exceptions_are_retried(self, capsession: CapturedSpans) -> None:
        flaky = Flaky(failures=1, error=KeyError)
        with pytest.raises(KeyError):
            step("lookup", retries=3, retry_on=(ConnectionError, TimeoutError))(flaky)()
        assert flaky.calls == 1
        assert len(capsession.named("step lookup")) == 1

    def test_backoff_doubles_between_attempts(self, capsession: CapturedSpans) -> None:
        flaky = Flaky(failures=2)
        begin = time.monotonic()
        assert step("backoff", retries=2, backoff=0.05)(flaky)() == "done"
        assert time.monotonic() - begin >= 0.15
        first, second, third = sorted(capsession.named("step backoff"), key=lambda span: span.start_time or 0)
        assert (second.start_time or 0) - (first.end_time or 0) >= 50_000_000
        assert (third.start_time or 0) - (second.end_time or 0) >= 100_000_000

    def test_async_retries(self, capsession: CapturedSpans) -> None:
        flaky = Flaky(failures=1)

        @step("async flaky", retries=1, backoff=0.01)
        async def call() -> str:
            await asyncio.sleep(0)
            return flaky()

        assert asyncio.run(call()) == "done"
        attempts = sorted(capsession.named("step async flaky"), key=lambda span: span.start_time or 0)
        assert [attributes(span)[semconv.STEP_RESULT] for span in attempts] == ["failure", "success"]

    def test_retries_need_the_decorator(self) -> None:
        with pytest.raises(TypeError, match="decorator"), step("x", retries=1):
            pass
        with pytest.raises(TypeError, match="generator"):

            @step("x", retries=1)
            def rows() -> Iterator[int]:
                yield 1


# --- status changes ---------------------------------------------------------------------------------------------
class TestSetStatus:
    """``set_status`` records a change of the innermost step (or the run) as an event."""

    def test_waiting_for_human_and_back(self, capsession: CapturedSpans) -> None:
        @step("review")
        def review() -> None:
            assert set_status("waiting_for_human", "claim over 10k needs a reviewer") is True
            assert set_status("running", "approved by u-7") is True

        with workflow("claims"):
            review()
        assert changes(only(capsession, "step review")) == [
            STARTED,
            ("running", "waiting_for_human", "claim over 10k needs a reviewer"),
            ("waiting_for_human", "running", "approved by u-7"),
            SUCCEEDED,
        ]
        assert changes(only(capsession, "workflow claims")) == [STARTED, SUCCEEDED]

    def test_on_the_run_outside_steps(self, capsession: CapturedSpans) -> None:
        with workflow("w"):
            set_status("waiting_for_human")
        assert changes(only(capsession, "workflow w")) == [
            STARTED,
            ("running", "waiting_for_human", None),
            ("waiting_for_human", "succeeded", None),
        ]

    def test_explicit_failure_without_exception(self, capsession: CapturedSpans) -> None:
        with step("check"):
            set_status("failed", "rejected by reviewer")
        span = only(capsession, "step check")
        assert changes(span) == [STARTED, ("running", "failed", "rejected by reviewer")]
        assert attributes(span)[semconv.STEP_RESULT] == "failure"
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == "rejected by reviewer"

    def test_bad_status_is_a_value_error(self) -> None:
        with pytest.raises(ValueError, match="waiting_for_human"):
            set_status("on_hold")
        with step("x"), pytest.raises(ValueError, match="on_hold"):
            set_status("on_hold")

    def test_outside_any_run_or_step_records_nothing(self, capsession: CapturedSpans) -> None:
        assert set_status("running") is False
        assert capsession.spans == ()


class TestSpanLimits:
    """Where span limits could cut our values, status events and attributes go through the SDK's
    public API (and its limits) instead of the direct path; the events are the same."""

    def test_public_api_path_under_tight_limits(self) -> None:
        from opentelemetry.context import Context
        from opentelemetry.sdk.trace import SpanLimits, TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from sessiontrace.workflow import _Activity

        exporter = InMemorySpanExporter()
        provider = TracerProvider(span_limits=SpanLimits(max_attribute_length=8, max_span_attribute_length=8))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        span = provider.get_tracer("limits").start_span("step limited")
        active = _Activity(span, semconv.STEP_RESULT, Context())
        assert active.direct is None, "limits that can cut values must disable the direct path"
        active.put({semconv.STEP_NAME: "a step name longer than eight"})
        active.change("waiting_for_human", "a reason longer than eight")
        active.finish(None)
        (finished,) = exporter.get_finished_spans()
        assert (
            changes(finished)
            == [
                STARTED,
                ("running", "waiting_", "a reason"),  # cut by the SDK to 8 characters, as configured
                ("waiting_", "succeeded"[:8], None),
            ]
        )
        assert attributes(finished)[semconv.STEP_NAME] == "a step n"
        assert attributes(finished)[semconv.STEP_RESULT] == "success"


# --- the API surface --------------------------------------------------------------------------------------------
class TestApi:
    def test_decorator_preserves_the_function(self) -> None:
        def plain(claim_id: str, *, amount: int = 0) -> str:
            """Plain."""
            return claim_id

        async def coroutine(claim_id: str) -> str:
            return claim_id

        def generator(count: int) -> Iterator[int]:
            yield count

        async def async_generator(count: int) -> AsyncIterator[int]:
            yield count

        for original, kind in (
            (plain, inspect.isfunction),
            (coroutine, inspect.iscoroutinefunction),
            (generator, inspect.isgeneratorfunction),
            (async_generator, inspect.isasyncgenfunction),
        ):
            for decorate in (step("s"), workflow("w")):
                wrapped: Callable[..., Any] = decorate(original)
                assert wrapped.__name__ == original.__name__
                assert wrapped.__qualname__ == original.__qualname__
                assert wrapped.__doc__ == original.__doc__
                assert inspect.signature(wrapped) == inspect.signature(original)
                assert kind(wrapped), (original, kind)

    @pytest.mark.parametrize(
        "make",
        [
            lambda: workflow(""),
            lambda: workflow("x" * 257),
            lambda: workflow("line\nbreak"),
            lambda: workflow("w", run_id="not-a-uuid"),
            lambda: workflow("w", trigger_source="carrier-pigeon"),
            lambda: step(""),
            lambda: step("s", step_id="\x00"),
            lambda: step("s", retries=-1),
            lambda: step("s", attempt=0),
            lambda: step("s", backoff=-1),
            lambda: step("s", retry_on=("ConnectionError",)),  # type: ignore[arg-type]
        ],
    )
    def test_malformed_arguments_are_value_errors(self, make: Callable[[], object]) -> None:
        with pytest.raises(ValueError, match="must"):
            make()


# --- across processes ---------------------------------------------------------------------------------------------
def baggage_entries(carrier: Mapping[str, str]) -> dict[str, str]:
    from urllib.parse import unquote_plus

    entries = (entry.split("=", 1) for entry in carrier.get("baggage", "").split(",") if "=" in entry)
    return {unquote_plus(key.strip()): unquote_plus(value.strip()) for key, value in entries}


class TestRunPropagation:
    """The run travels as baggage next to the session, to allowed hosts only; inbound it is
    validated, and a step in the receiving context continues the same run."""

    def test_run_goes_to_allowed_hosts_only(self, capsession: CapturedSpans) -> None:
        with session() as current, workflow("claims triage") as run:
            allowed = inject({}, destination="http://ledger.internal/post")
            foreign = inject({}, destination="https://api.example.com/v1")
        assert baggage_entries(allowed)[semconv.BAGGAGE_WORKFLOW_NAME] == "claims triage"
        assert baggage_entries(allowed)[semconv.BAGGAGE_WORKFLOW_RUN_ID] == run.id
        assert baggage_entries(allowed)[semconv.BAGGAGE_SESSION_ID] == current.id
        assert not set(baggage_entries(foreign)) & set(semconv.OUR_BAGGAGE_KEYS), foreign
        assert "traceparent" in foreign

    def test_run_without_session_is_continued(self, capsession: CapturedSpans) -> None:
        with workflow("w") as run:
            carrier = inject({})
        ctx = extract(carrier)
        assert current_run(ctx) == run
        assert current_session(ctx) is None

    def test_malformed_inbound_run_is_dropped_with_one_warning(
        self, capsession: CapturedSpans, caplog: pytest.LogCaptureFixture
    ) -> None:
        _log.reset_warnings()
        sid = new_session_id()
        with caplog.at_level(logging.WARNING, logger="sessiontrace"):
            for run_id in ("not-a-uuid", "also-bad"):
                ctx = extract({"baggage": f"session.id={sid},workflow.name=w,workflow.execution.id={run_id}"})
                assert current_run(ctx) is None
                assert current_session(ctx) is not None  # the session is unaffected
            ctx = extract({"baggage": f"workflow.name=line%0Abreak,workflow.execution.id={new_session_id()}"})
            assert current_run(ctx) is None
        warnings = [record for record in caplog.records if "workflow run" in record.getMessage()]
        assert len(warnings) == 1, [record.getMessage() for record in warnings]

    def test_run_entries_do_not_disturb_signed_sessions(self, capsession: CapturedSpans) -> None:
        propagator = session_propagator(InboundPolicy(signing_key=b"workflow-test-signing-key-0123456789"))
        carrier: dict[str, str] = {}
        with session(user_id="alice") as current, workflow("w") as run:
            propagator.inject(carrier)
        ctx = propagator.extract(carrier)
        continued = current_session(ctx)
        assert continued is not None
        assert continued.id == current.id
        assert continued.user_id == "alice", "the signature must still verify with run entries present"
        assert current_run(ctx) == run


def ledger_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The called service: one step, reporting the run and session it finds itself in."""

    @step("post to ledger")
    def post() -> dict[str, Any]:
        run, current = current_run(), current_session()
        return {
            "run": [run.name, run.id] if run else None,
            "session_id": current.id if current else None,
            "trace_id": format(trace.get_current_span().get_span_context().trace_id, "032x"),
        }

    body = json.dumps(post()).encode()
    start_response("200 OK", [("content-type", "application/json")])
    return [body]


@pytest.fixture
def ledger(capsession: CapturedSpans) -> Iterator[RunningServer]:
    server = start_wsgi(session_wsgi.SessionMiddleware(ledger_app))
    try:
        yield server
    finally:
        server.stop()


class TestRunAcrossHttp:
    """A step that calls another service over real HTTP (httpx → wsgiref on loopback, through our
    outbound policy and inbound middleware) continues the run there: same run id, same session."""

    def test_step_in_the_called_service_continues_the_run(
        self, ledger: RunningServer, outbound_policy: None, capsession: CapturedSpans
    ) -> None:
        @step("call ledger")
        def call_ledger() -> dict[str, Any]:
            response = httpx.post(f"{ledger.url}/entries", timeout=10)
            response.raise_for_status()
            return dict(response.json())

        with session(trigger_source="ui", trigger_type="approve claim") as current, workflow("claims triage") as run:
            seen = call_ledger()

        assert seen["run"] == ["claims triage", run.id]
        assert seen["session_id"] == current.id
        caller = only(capsession, "step call ledger")
        assert seen["trace_id"] == format(caller.context.trace_id, "032x")
        called = wait_for(lambda: capsession.named("step post to ledger"), what="the ledger's step span")[0]
        assert attributes(called) == {
            semconv.SESSION_ID: current.id,
            semconv.TRIGGER_SOURCE: "ui",
            semconv.TRIGGER_TYPE: "approve claim",
            **run_attributes(run),
            semconv.STEP_NAME: "post to ledger",
            semconv.STEP_ID: "post to ledger",
            semconv.STEP_INDEX: 0,  # indexes are counted per process
            semconv.STEP_ATTEMPT: 1,
            **step_end(),
        }
        assert called.context.trace_id == caller.context.trace_id
        assert parent_of(called) == caller.context.span_id
        assert called.parent is not None
        assert called.parent.is_remote


class TestRunAcrossCelery:
    """A step that enqueues a Celery task continues its run in the worker (a real ``celery worker``
    subprocess over Redis on loopback): the task's step carries the same run id and session."""

    def test_task_step_continues_the_run(self, worker: Worker, publisher: CapturedSpans) -> None:  # noqa: F811
        with (
            session(trigger_source="queue", trigger_type="reconcile") as current,
            workflow("reconcile") as run,
            step("enqueue"),
        ):
            seen = run_task(worker, "a", celery_app.continue_run)

        assert seen["run"] == ["reconcile", run.id]
        assert seen["session_id"] == current.id
        enqueue = only(publisher, "step enqueue")
        assert seen["trace_id"] == format(enqueue.context.trace_id, "032x")
        own = {key: value for key, value in seen["span_attributes"].items() if key.startswith("workflow.")}
        assert own == {
            semconv.WORKFLOW_NAME: "reconcile",
            semconv.WORKFLOW_RUN_ID: run.id,
            semconv.STEP_NAME: "task step a",
            semconv.STEP_ID: "task step a",
        }
        assert seen["span_attributes"][semconv.STEP_INDEX] == 0
        assert seen["span_attributes"][semconv.SESSION_ID] == current.id

        stored = stored_spans(worker, current.id, {"step task step a"})["step task step a"]
        assert stored.trace_id == format(enqueue.context.trace_id, "032x")
        assert stored.attributes[semconv.WORKFLOW_RUN_ID] == run.id
        assert stored.attributes[semconv.STEP_RESULT] == "success"
