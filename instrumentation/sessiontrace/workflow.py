"""Workflow runs and their steps as spans: ``workflow()`` and ``step()``.

A run is a ``workflow {name}`` span; each attempt of a step is a ``step {name}`` span carrying the
run's name and id, its position in the run and its attempt number. Every status change
(``pending`` → ``running`` → ``waiting_for_human`` → ``succeeded`` / ``failed`` / ``cancelled``) is
a span event with from, to and reason. The run also travels as W3C baggage next to the session,
so a step in a process this one calls (HTTP, Celery) continues the same run there.

Things worth knowing:

- Both are context managers (sync and async) and decorators for functions, coroutines, generators
  and async generators. A decorated generator's span covers the whole iteration (first item to
  exhaustion); its context is attached only while the generator body runs, never in the consumer.
  A generator closed before exhaustion ends ``cancelled``.
- Retries (``@step(retries=N)``) need the decorator: a ``with`` block cannot be re-run, so there
  the caller passes ``attempt=``. Generators cannot be retried (their items are already out).
- Step indexes count per process: a run continued in a called service numbers its steps from 0.
- The run's baggage entries are not signed (they label spans, they claim no identity); inbound
  they must be well formed, or they are dropped with one warning.

``step()`` wraps code that runs often, so its path is kept lean: static attributes are computed
once per definition, the status events of the common transitions share pre-built attribute maps,
and attributes go into the SDK's container without re-validation (as ``processors.stamp`` does),
whenever the span's limits could not cut them; otherwise the public span API is used.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from time import time_ns
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, SpanLimits
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from sessiontrace import _attributes, _values, semconv
from sessiontrace._generators import Finish, Open, async_generator_in_context, generator_in_context
from sessiontrace._log import warn_once
from sessiontrace._tracer import GlobalTracer
from sessiontrace.context import current_session, new_session_id

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("sessiontrace")
_tracer = GlobalTracer("sessiontrace.workflow")

_RUN_KEY = otel_context.create_key("sessiontrace.workflow.run")
_ACTIVE_KEY = otel_context.create_key("sessiontrace.workflow.active")  # the innermost run or step

MAX_NAME = 256
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # they forge log lines, as in _values

_STATUSES = frozenset(semconv.WORKFLOW_STATUSES)
_RESULTS = {"succeeded": "success", "failed": "failure", "cancelled": "cancellation"}
"""Terminal status → ``workflow.execution.result`` / ``workflow.task.run.result`` value."""
_CANCELLATIONS = (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt)
"""Exceptions that end a run or step as ``cancelled`` rather than ``failed``."""
_OTHER_ERROR = "_OTHER"
"""``error.type`` of a failure with no exception to name it (the semantic conventions' fallback)."""

# One immutable attribute map per (from, to) pair, shared by every status event without a reason:
# building and validating a fresh BoundedAttributes per event would cost more than the span.
_TRANSITIONS: dict[tuple[str, str], BoundedAttributes] = {
    (before, after): BoundedAttributes(None, {semconv.STATUS_FROM: before, semconv.STATUS_TO: after}, immutable=True)
    for before in semconv.WORKFLOW_STATUSES
    for after in semconv.WORKFLOW_STATUSES
    if before != after
}
_LONGEST_STATUS = max(len(status) for status in semconv.WORKFLOW_STATUSES)
_END_ATTRIBUTES: dict[str, dict[str, dict[str, AttributeValue]]] = {
    result_key: {status: {semconv.WORKFLOW_STATUS: status, result_key: result} for status, result in _RESULTS.items()}
    for result_key in (semconv.WORKFLOW_RESULT, semconv.STEP_RESULT)
}
"""Result attribute → terminal status → the attributes a span ends with."""


def _checked_name(value: object, what: str) -> str:
    """``value`` without surrounding whitespace, if that is a printable string of 1 to 256
    characters, else ``InvalidValue`` (a ``ValueError``)."""
    # Baggage receivers strip entries: an unstripped name would change when the run continues.
    name = value.strip() if isinstance(value, str) else value
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or _UNPRINTABLE.search(name):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise _values.InvalidValue(f"{what} must be 1 to {MAX_NAME} printable characters, got {shown}")
    return name


# --- runs -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Run:
    """One run of a workflow. Steps below it (in this process, and in processes it calls) carry its
    ``name`` and ``id`` and are numbered in the order they start, per process."""

    name: str
    id: str
    attributes: Mapping[str, AttributeValue] = field(init=False, repr=False, compare=False)
    _steps: Iterator[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Computed once: every step span of the run reuses this mapping.
        object.__setattr__(self, "attributes", {semconv.WORKFLOW_NAME: self.name, semconv.WORKFLOW_RUN_ID: self.id})
        # next() on itertools.count is atomic under the GIL: steps in threads get distinct indexes.
        object.__setattr__(self, "_steps", itertools.count())


def current_run(context: Context | None = None) -> Run | None:
    """The run of the current (or given) context, or ``None`` outside any workflow."""
    value = otel_context.get_value(_RUN_KEY, context)
    return value if isinstance(value, Run) else None


def context_with_run(run: Run, context: Context | None = None) -> Context:
    """A context carrying ``run`` under our key and as baggage (for the processes it calls)."""
    ctx = otel_context.set_value(_RUN_KEY, run, context)
    ctx = baggage.set_baggage(semconv.BAGGAGE_WORKFLOW_NAME, run.name, ctx)
    return baggage.set_baggage(semconv.BAGGAGE_WORKFLOW_RUN_ID, run.id, ctx)


def admit_run(entries: Mapping[str, object], context: Context) -> Context:
    """Continue the run named by inbound baggage ``entries`` in ``context`` (the propagator calls
    this after stripping our entries). A malformed name or id drops the run, with one warning."""
    name = entries.get(semconv.BAGGAGE_WORKFLOW_NAME)
    run_id = entries.get(semconv.BAGGAGE_WORKFLOW_RUN_ID)
    if name is None and run_id is None:
        return context
    try:
        run = Run(_checked_name(name, "workflow name"), _values.session_id(run_id, "workflow run id"))
    except _values.InvalidValue as error:
        warn_once("inbound:workflow", "sessiontrace: dropped inbound workflow run: %s", error)
        return context
    return context_with_run(run, context)


# --- one open run or step span ------------------------------------------------------------------------
# The SDK re-validates every attribute it is given, and a status event costs a validated attribute
# map, a frame chain and a lock: together more than the span itself. Our values are checked once
# (names at definition, statuses from a fixed set), so on the SDK's own span and containers, with
# limits that cannot bite, we write them directly; anything else goes through the public API.
_SPAN_KEY = next(iter(trace.set_span_in_context(INVALID_SPAN, Context())))
"""The API's current-span context key, found through the public API rather than imported."""
_PENDING_RUNNING = _TRANSITIONS["pending", "running"]
_RUNNING_SUCCEEDED = _TRANSITIONS["running", "succeeded"]
_OWN_ATTRIBUTES = 11
"""Most attributes we put on one span: 8 at start (run), 2 at the end, ``error.type``."""


class _StatusEvent(Event):
    """A status-change event whose attribute map is already immutable and within limits."""

    def __init__(self, attributes: BoundedAttributes, timestamp: int) -> None:
        # One frame instead of Event's two: the fields EventBase sets, set directly.
        self._name = semconv.STATUS_CHANGE_EVENT
        self._timestamp = timestamp
        self._attributes = attributes


_ROOMY_LIMITS: set[SpanLimits] = set()
"""Span limits (one per provider) under which our values and shared event maps cannot be cut."""


def _direct(span: Span) -> SdkSpan | None:
    """``span`` as the SDK's span when our pre-validated values and shared status-event maps may go
    into its containers as they are (an SDK span, limits that cannot bite, room to spare); else
    None, and the public span API is used."""
    if not _attributes.is_sdk_span(span):
        return None
    limits, attrs = span._limits, span._attributes
    if limits not in _ROOMY_LIMITS:
        value_length, event_attributes = limits.max_span_attribute_length, limits.max_event_attributes
        if (
            (value_length is not None and value_length < MAX_NAME)
            or (event_attributes is not None and event_attributes < 2)
            or (limits.max_attribute_length is not None and limits.max_attribute_length < _LONGEST_STATUS)
        ):
            return None
        _ROOMY_LIMITS.add(limits)
    return span if _attributes.has_room(attrs, _OWN_ATTRIBUTES) else None


class _Activity:
    """An open run or step span, its current status, and the context its body runs in.

    Its span starts running at once; the ``pending`` → ``running`` event is written together with
    the next change (usually the last), timestamped at the span's start: same events, one write."""

    __slots__ = ("context", "direct", "end_attributes", "span", "started", "status")

    def __init__(self, span: Span, result_key: str, parent: Context) -> None:
        self.span = span
        # Decided once per span: direct writes into the SDK's containers, or the public API.
        self.direct = _direct(span)
        self.end_attributes = _END_ATTRIBUTES[result_key]
        self.status = "running"
        self.started = False
        # One copy of the parent context instead of two ``set_value`` calls (two copies each).
        self.context = Context({**parent, _SPAN_KEY: span, _ACTIVE_KEY: self})

    def put(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Set attributes we validated ourselves (names of at most ``MAX_NAME`` characters, ints)."""
        if not _attributes.add(self.direct, attributes, longest=MAX_NAME, replace=True):
            self.span.set_attributes(attributes)

    def record(self, before: str, after: str, reason: str | None) -> None:
        """Record the change ``before`` → ``after``, preceded by the (deferred) start event."""
        span, direct = self.span, self.direct
        if direct is not None:
            if reason is None:
                event = _StatusEvent(_TRANSITIONS[before, after], time_ns())
            else:
                limits = direct._limits
                attributes = {semconv.STATUS_FROM: before, semconv.STATUS_TO: after, semconv.STATUS_REASON: reason}
                bounded = BoundedAttributes(
                    limits.max_event_attributes, attributes, max_value_len=limits.max_attribute_length, immutable=True
                )
                event = _StatusEvent(bounded, time_ns())
            events = cast("BoundedList[Event]", direct._events)  # the SDK's list: it enforces the event limit
            # Under the span's lock, as the SDK adds events: a thread that inherited this step's
            # context may change its status while the step ends, and an ended span never changes.
            with direct._lock:
                if direct._end_time is None:
                    started, self.started = self.started, True  # under the lock: one start event
                    if started:
                        events.append(event)
                    else:
                        events.extend((_StatusEvent(_PENDING_RUNNING, direct._start_time or 0), event))
                    return
        started, self.started = self.started, True
        if not started:
            span.add_event(
                semconv.STATUS_CHANGE_EVENT,
                {semconv.STATUS_FROM: "pending", semconv.STATUS_TO: "running"},
                getattr(span, "start_time", None),
            )
        event_attributes: dict[str, AttributeValue] = {semconv.STATUS_FROM: before, semconv.STATUS_TO: after}
        if reason is not None:
            event_attributes[semconv.STATUS_REASON] = reason
        span.add_event(semconv.STATUS_CHANGE_EVENT, event_attributes)

    def change(self, status: str, reason: str | None) -> None:
        before, self.status = self.status, status
        self.record(before, status, reason)

    def _finished_plainly(self, direct: SdkSpan) -> bool:
        """The common case, pending → running → succeeded and nothing else: both events and the
        result attributes in one write under the span's lock, as ``record`` writes. (A status a
        thread sharing the step changes while it ends still lands before or after ``succeeded``:
        that race is the caller's.) False, having written nothing, when it is not that case."""
        with direct._lock:
            if self.status != "running" or self.started:
                return False
            if not _attributes.add_holding_lock(direct, self.end_attributes["succeeded"], replace=True):
                return False  # ended, or no room left: the general path says why
            cast("BoundedList[Event]", direct._events).extend(
                (
                    _StatusEvent(_PENDING_RUNNING, direct._start_time or 0),
                    _StatusEvent(_RUNNING_SUCCEEDED, time_ns()),
                )
            )
            self.status, self.started = "succeeded", True
        return True

    def finish(self, error: BaseException | None, reason: str | None = None) -> None:
        """End the span: final status event, result attributes, error details. Never raises."""
        try:
            direct = self.direct
            if direct is not None and error is None and self._finished_plainly(direct):
                direct.end()
                return
            if error is None:
                final = self.status if self.status in _RESULTS else "succeeded"
            else:
                final = "cancelled" if isinstance(error, _CANCELLATIONS) else "failed"
                reason = reason or type(error).__qualname__
            if final != self.status:
                self.change(final, reason)
            self.put(self.end_attributes[final])
            span = self.span
            if error is not None and final == "failed":
                error_type = type(error).__qualname__
                span.set_attribute(semconv.ERROR_TYPE, error_type)
                span.record_exception(error, escaped=True)
                span.set_status(Status(StatusCode.ERROR, f"{error_type}: {error}"))
            elif final == "failed":  # set_status("failed") without an exception: semconv's fallback
                known = getattr(span, "attributes", None)
                if not known or semconv.ERROR_TYPE not in known:
                    span.set_attribute(semconv.ERROR_TYPE, _OTHER_ERROR)
            span.end()
        except Exception:  # tracing must never turn a finished step into a failed one
            logger.debug("sessiontrace: could not end a workflow span", exc_info=True)


def _active(context: Context | None = None) -> _Activity | None:
    value = otel_context.get_value(_ACTIVE_KEY, context)
    return value if type(value) is _Activity else None


def set_status(status: str, reason: str | None = None) -> bool:
    """Change the status of the current step (or run, outside any step) and record the change as
    an event, e.g. ``set_status("waiting_for_human", "needs approval")``. ``failed`` also marks the
    span as an error. A terminal status set here is the one the step ends with, unless it raises.

    Raises ``ValueError`` for a status not in ``WORKFLOW_STATUSES``. Returns False, recording
    nothing, outside any run or step (so shared helpers can call it unconditionally)."""
    if status not in _STATUSES:
        raise ValueError(f"status must be one of {', '.join(semconv.WORKFLOW_STATUSES)}; got {status!r}")
    if reason is not None and not isinstance(reason, str):
        raise ValueError(f"reason must be a string, got {type(reason).__name__}")
    active = _active()
    if active is None or not active.span.is_recording():
        return False
    if status != active.status:
        active.change(status, reason)
    if status == "failed":
        active.span.set_status(Status(StatusCode.ERROR, reason or "failed"))
    return True


# --- definitions: what a run or step is, computed once --------------------------------------------------
class _Definition(Protocol):
    """What the decorator machinery needs from a workflow or step definition."""

    retries: int
    retry_on: tuple[type[BaseException], ...]
    backoff: float
    first_attempt: int

    def allocate(self, context: Context) -> int | None:
        """Per call (not per attempt): the step index, for steps in a run."""
        ...

    def open(self, context: Context, index: int | None, attempt: int) -> _Activity:
        """Start the span of one attempt; never raises."""
        ...


class _WorkflowDefinition:
    __slots__ = ("backoff", "first_attempt", "name", "retries", "retry_on", "run_id", "span_name", "trigger")

    def __init__(self, name: str, run_id: str | None, trigger_source: str | None, trigger_type: str | None) -> None:
        self.name = _checked_name(name, "workflow name")
        self.run_id = _values.session_id(run_id, "workflow run id") if run_id is not None else None
        self.span_name = f"{semconv.WORKFLOW_SPAN} {self.name}"
        self.trigger = (
            _values.trigger_source(trigger_source) if trigger_source is not None else None,
            _values.trigger_type(trigger_type) if trigger_type is not None else None,
        )
        # A run is not retried: these exist for the shared decorator machinery.
        self.retries, self.backoff, self.first_attempt = 0, 0.0, 1
        self.retry_on: tuple[type[BaseException], ...] = ()

    def allocate(self, context: Context) -> int | None:
        return None

    def open(self, context: Context, index: int | None, attempt: int) -> _Activity:
        return self.start(context)[1]

    def start(self, context: Context) -> tuple[Run, _Activity]:
        run = Run(self.name, self.run_id or new_session_id())
        ctx = context_with_run(run, context)
        try:
            span = _tracer.get().start_span(
                self.span_name, ctx, SpanKind.INTERNAL, record_exception=False, set_status_on_exception=False
            )
            active = _Activity(span, semconv.WORKFLOW_RESULT, ctx)
            attributes = dict(run.attributes)
            session = current_session(ctx)
            # The session's trigger is the run's unless the caller names one: WORKFLOW_TRIGGER_TYPE
            # is the kind of trigger (our trigger source), WORKFLOW_TRIGGER_NAME its detail.
            source = self.trigger[0] or (session.trigger_source if session else None)
            detail = self.trigger[1] or (session.trigger_type if session else None)
            if source:
                attributes[semconv.WORKFLOW_TRIGGER_TYPE] = source
            if detail:
                attributes[semconv.WORKFLOW_TRIGGER_NAME] = detail
            active.put(attributes)
            return run, active
        except Exception:
            logger.debug("sessiontrace: could not start a workflow span", exc_info=True)
            return run, _Activity(INVALID_SPAN, semconv.WORKFLOW_RESULT, ctx)


class _StepDefinition:
    __slots__ = ("attributes", "backoff", "first_attempt", "name", "retries", "retry_on", "span_name", "step_id")

    def __init__(
        self,
        name: str,
        step_id: str | None,
        attempt: int,
        retries: int,
        retry_on: type[BaseException] | tuple[type[BaseException], ...],
        backoff: float,
    ) -> None:
        self.name = _checked_name(name, "step name")
        self.step_id = _checked_name(step_id, "step id") if step_id is not None else self.name
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ValueError(f"attempt must be an integer from 1, got {attempt!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
        if not isinstance(backoff, (int, float)) or backoff < 0:
            raise ValueError(f"backoff must be a non-negative number of seconds, got {backoff!r}")
        retry_types = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        if not all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in retry_types):
            raise ValueError(f"retry_on must be exception classes, got {retry_on!r}")
        self.first_attempt, self.retries, self.retry_on, self.backoff = attempt, retries, retry_types, float(backoff)
        self.span_name = f"{semconv.STEP_SPAN} {self.name}"
        self.attributes: dict[str, AttributeValue] = {semconv.STEP_NAME: self.name, semconv.STEP_ID: self.step_id}

    def allocate(self, context: Context) -> int | None:
        run = context.get(_RUN_KEY)
        return next(cast(Run, run)._steps) if run is not None else None

    def open(self, context: Context, index: int | None, attempt: int) -> _Activity:
        try:
            span = _tracer.get().start_span(
                self.span_name, context, SpanKind.INTERNAL, record_exception=False, set_status_on_exception=False
            )
            active = _Activity(span, semconv.STEP_RESULT, context)
            run = context.get(_RUN_KEY)
            if run is None:
                active.put({**self.attributes, semconv.STEP_ATTEMPT: attempt})
            else:
                run_attributes = cast(Run, run).attributes
                active.put(
                    {**self.attributes, **run_attributes, semconv.STEP_INDEX: index, semconv.STEP_ATTEMPT: attempt}
                )
            return active
        except Exception:
            logger.debug("sessiontrace: could not start a step span", exc_info=True)
            return _Activity(INVALID_SPAN, semconv.STEP_RESULT, context)


# --- running a decorated function, coroutine, generator or async generator ------------------------------
def _retrying(definition: _Definition, error: BaseException, attempt: int) -> bool:
    return attempt - definition.first_attempt < definition.retries and isinstance(error, definition.retry_on)


def _delay(definition: _Definition, attempt: int) -> float:
    """Seconds to wait before the attempt after ``attempt``: ``backoff`` doubling each time."""
    return float(definition.backoff * 2 ** (attempt - definition.first_attempt))


def _decorate(definition: _Definition, func: Callable[P, R]) -> Callable[P, R]:
    if inspect.isasyncgenfunction(func):
        return cast(
            Callable[P, R], _wrap_async_generator(definition, cast(Callable[..., AsyncGenerator[Any, Any]], func))
        )
    if inspect.isgeneratorfunction(func):
        return cast(Callable[P, R], _wrap_generator(definition, cast(Callable[..., Generator[Any, Any, Any]], func)))
    if inspect.iscoroutinefunction(func):
        return cast(Callable[P, R], _wrap_coroutine(definition, cast(Callable[..., Awaitable[Any]], func)))
    return _wrap_function(definition, func)


def _wrap_function(definition: _Definition, func: Callable[P, R]) -> Callable[P, R]:
    allocate, open_, attach, detach = definition.allocate, definition.open, otel_context.attach, otel_context.detach

    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        context = otel_context.get_current()
        index = allocate(context)
        attempt = definition.first_attempt
        while True:
            active = open_(context, index, attempt)
            token = attach(active.context)
            try:
                result = func(*args, **kwargs)
            except BaseException as error:
                detach(token)
                if not _retrying(definition, error, attempt):
                    active.finish(error)
                    raise
                active.finish(error, f"{type(error).__qualname__}, retrying")
                delay = _delay(definition, attempt)
                if delay:
                    time.sleep(delay)
                attempt += 1
                continue
            detach(token)
            active.finish(None)
            return result

    return run


def _wrap_coroutine(definition: _Definition, func: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    allocate, open_, attach, detach = definition.allocate, definition.open, otel_context.attach, otel_context.detach

    @functools.wraps(func)
    async def run(*args: Any, **kwargs: Any) -> Any:
        context = otel_context.get_current()
        index = allocate(context)
        attempt = definition.first_attempt
        while True:
            active = open_(context, index, attempt)
            token = attach(active.context)
            try:
                result = await func(*args, **kwargs)
            except BaseException as error:
                detach(token)
                if not _retrying(definition, error, attempt):
                    active.finish(error)
                    raise
                active.finish(error, f"{type(error).__qualname__}, retrying")
                delay = _delay(definition, attempt)
                if delay:
                    await asyncio.sleep(delay)
                attempt += 1
                continue
            detach(token)
            active.finish(None)
            return result

    return run


_CLOSED_EARLY = "closed before exhaustion"


def _wrap_generator(
    definition: _Definition, func: Callable[..., Generator[Any, Any, Any]]
) -> Callable[..., Generator[Any, Any, Any]]:
    """The span covers the whole iteration (see ``_generators`` for how its context is attached)."""
    return generator_in_context(func, _generator_activity(definition))


def _wrap_async_generator(
    definition: _Definition, func: Callable[..., AsyncGenerator[Any, Any]]
) -> Callable[..., AsyncGenerator[Any, Any]]:
    """As ``_wrap_generator``, for async generators."""
    return async_generator_in_context(func, _generator_activity(definition))


def _generator_activity(definition: _Definition) -> Open:
    if definition.retries:
        raise TypeError("retries cannot apply to a generator: items already yielded cannot be taken back")

    def open_activity() -> tuple[Context, Finish]:
        context = otel_context.get_current()
        active = definition.open(context, definition.allocate(context), definition.first_attempt)

        def finish(error: BaseException | None, closed_early: bool) -> None:
            if closed_early:
                active.finish(GeneratorExit(), _CLOSED_EARLY)
            else:
                active.finish(error)

        return active.context, finish

    return open_activity


# --- scopes: context managers and decorators ------------------------------------------------------------
class _Scope:
    """Shared context-manager plumbing: attach the activity's context on enter, end on exit."""

    __slots__ = ("_active", "_token")

    def __init__(self) -> None:
        self._active: _Activity | None = None
        self._token: object | None = None

    def _enter(self, active: _Activity) -> None:
        self._active = active
        self._token = otel_context.attach(active.context)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        active, token, self._active, self._token = self._active, self._token, None, None
        if token is not None:
            otel_context.detach(cast(Any, token))
        if active is not None:
            active.finish(exc)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class WorkflowScope(_Scope):
    """Returned by ``workflow()``: a context manager (sync and async) yielding the ``Run``, and a
    decorator for functions, coroutines, generators and async generators (each call a new run)."""

    __slots__ = ("_definition",)

    def __init__(self, definition: _WorkflowDefinition) -> None:
        super().__init__()
        self._definition = definition

    def __enter__(self) -> Run:
        if self._active is not None:
            raise RuntimeError("this workflow() scope is already entered; call workflow() again")
        run, active = self._definition.start(otel_context.get_current())
        self._enter(active)
        return run

    async def __aenter__(self) -> Run:
        return self.__enter__()

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        return _decorate(self._definition, func)


@dataclass(frozen=True, slots=True)
class Step:
    """What ``with step(...) as s`` gives: the step's name, id, index in the run and attempt."""

    name: str
    id: str
    index: int | None
    attempt: int
    run: Run | None


class StepScope(_Scope):
    """Returned by ``step()``: a context manager (sync and async) and a decorator for functions,
    coroutines, generators and async generators. Only the decorator can retry (a ``with`` block
    cannot be re-run); with a context manager, pass ``attempt=`` yourself."""

    __slots__ = ("_definition",)

    def __init__(self, definition: _StepDefinition) -> None:
        super().__init__()
        self._definition = definition

    def __enter__(self) -> Step:
        definition = self._definition
        if self._active is not None:
            raise RuntimeError("this step() scope is already entered; call step() again")
        if definition.retries:
            raise TypeError("retries apply to the @step decorator; a with-block cannot be re-run (pass attempt=)")
        context = otel_context.get_current()
        index = definition.allocate(context)
        self._enter(definition.open(context, index, definition.first_attempt))
        return Step(definition.name, definition.step_id, index, definition.first_attempt, current_run(context))

    async def __aenter__(self) -> Step:
        return self.__enter__()

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        return _decorate(self._definition, func)


def workflow(
    name: str,
    *,
    run_id: str | None = None,
    trigger_source: str | None = None,
    trigger_type: str | None = None,
) -> WorkflowScope:
    """Start a run of workflow ``name``: a ``workflow {name}`` span whose status events go from
    ``pending`` through ``running`` to ``succeeded``, ``failed`` or ``cancelled``.

    ``run_id`` continues a known run (a UUID; default: a fresh UUIDv7). The trigger defaults to the
    session's (its source and type). Use as ``with workflow(...) as run:``, ``async with``, or
    ``@workflow(...)``. Raises ``ValueError`` naming the field when a value is malformed."""
    return WorkflowScope(_WorkflowDefinition(name, run_id, trigger_source, trigger_type))


def step(
    name: str,
    *,
    step_id: str | None = None,
    attempt: int = 1,
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
    backoff: float = 0.0,
) -> StepScope:
    """A step of the current run: one ``step {name}`` span per attempt, carrying the run's name and
    id, the step's id (default: its name), its index in the run (from 0, in order of start; in a
    process that continues a run received over the wire, counted from 0 there) and its attempt.

    As a decorator with ``retries=N``, a call that raises one of ``retry_on`` is tried again, up to
    N more times, after ``backoff`` seconds doubling each time; every attempt is its own span and
    the last one's exception propagates unchanged. Outside any workflow a step still gets its span,
    without run attributes. Raises ``ValueError`` naming the field when a value is malformed."""
    return StepScope(_StepDefinition(name, step_id, attempt, retries, retry_on, backoff))


__all__ = [
    "Run",
    "Step",
    "StepScope",
    "WorkflowScope",
    "admit_run",
    "context_with_run",
    "current_run",
    "set_status",
    "step",
    "workflow",
]
