"""Sessions: the id minted when an activity starts, and the context that carries it.

A ``Session`` lives in the OpenTelemetry context under our own key *and* as W3C baggage. The key
is what the hot path reads (one dict lookup per span); the baggage is what crosses process
boundaries. Both are set together by ``context_with_session`` and nowhere else.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

import uuid6
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from sessiontrace import _values, semconv
from sessiontrace._generators import Finish, Open, async_generator_in_context, generator_in_context
from sessiontrace._version import __version__

_SESSION_KEY = otel_context.create_key("sessiontrace.session")
_tracer = trace.get_tracer("sessiontrace", __version__)

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Session:
    """One user or system activity. Immutable: a change of user or roles is a new ``Session``.

    ``trusted`` says whether the user fields can be believed: true when the session was started
    here or arrived signed by our own edge or from a trusted peer. Untrusted sessions carry no
    user fields (the propagator drops them), so ``trusted`` only matters for outbound signing.
    """

    id: str
    user_id: str | None = None
    roles: tuple[str, ...] = ()
    trigger_source: str | None = None
    trigger_type: str | None = None
    previous_id: str | None = None
    trusted: bool = True
    attributes: Mapping[str, AttributeValue] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Computed once: every span and log record of the session reuses this mapping.
        attributes: dict[str, AttributeValue] = {semconv.SESSION_ID: self.id}
        if self.previous_id:
            attributes[semconv.SESSION_PREVIOUS_ID] = self.previous_id
        if self.user_id:
            attributes[semconv.USER_ID] = self.user_id
        if self.roles:
            attributes[semconv.USER_ROLES] = self.roles
        if self.trigger_source:
            attributes[semconv.TRIGGER_SOURCE] = self.trigger_source
        if self.trigger_type:
            attributes[semconv.TRIGGER_TYPE] = self.trigger_type
        object.__setattr__(self, "attributes", attributes)

    def baggage_entries(self) -> dict[str, str]:
        """The session as baggage entries (strings only; roles comma-joined)."""
        entries = {semconv.BAGGAGE_SESSION_ID: self.id}
        if self.previous_id:
            entries[semconv.BAGGAGE_PREVIOUS_ID] = self.previous_id
        if self.user_id:
            entries[semconv.BAGGAGE_USER_ID] = self.user_id
        if self.roles:
            entries[semconv.BAGGAGE_USER_ROLES] = ",".join(self.roles)
        if self.trigger_source:
            entries[semconv.BAGGAGE_TRIGGER_SOURCE] = self.trigger_source
        if self.trigger_type:
            entries[semconv.BAGGAGE_TRIGGER_TYPE] = self.trigger_type
        return entries


def new_session_id() -> str:
    """A fresh UUIDv7: time-ordered, so audit indexes keyed by it stay append-mostly."""
    return str(uuid6.uuid7())


def current_session(context: Context | None = None) -> Session | None:
    """The session of the current (or given) context, or ``None`` outside any session."""
    value = otel_context.get_value(_SESSION_KEY, context)
    return value if isinstance(value, Session) else None


def context_with_session(session: Session, context: Context | None = None) -> Context:
    """A context carrying ``session`` both under our key and as baggage.

    Our baggage keys that the session does not set are removed, so a stale user id from an outer
    session can never ride along with a new session id.
    """
    ctx = otel_context.set_value(_SESSION_KEY, session, context)
    entries = session.baggage_entries()
    for key in semconv.SESSION_BAGGAGE_KEYS:
        if key in entries:
            ctx = baggage.set_baggage(key, entries[key], ctx)
        elif baggage.get_baggage(key, ctx) is not None:
            ctx = baggage.remove_baggage(key, ctx)
    return ctx


def make_session(
    *,
    id: str | None = None,
    user_id: str | None = None,
    roles: Iterable[str] | str = (),
    trigger_source: str | None = None,
    trigger_type: str | None = None,
    previous_id: str | None = None,
) -> Session:
    """Validate application-supplied values and build a ``Session``; ``ValueError`` if malformed."""
    return Session(
        id=_values.session_id(id) if id is not None else new_session_id(),
        user_id=_values.user_id(user_id) if user_id is not None else None,
        roles=_values.roles(roles),
        trigger_source=_values.trigger_source(trigger_source) if trigger_source is not None else None,
        trigger_type=_values.trigger_type(trigger_type) if trigger_type is not None else None,
        previous_id=_values.session_id(previous_id, "previous id") if previous_id is not None else None,
    )


class SessionScope:
    """The activity scope returned by ``session()``: a context manager (sync and async) and a
    decorator. As a decorator, every call of the function is its own session.

    A scope is single-use: enter it once. ``minted`` says the id was created here, which is
    when the ``session.start`` / ``session.end`` events are recorded.
    """

    __slots__ = ("_kwargs", "_span", "_token", "minted", "open_span", "session")

    def __init__(self, session: Session, *, minted: bool, open_span: bool = True, **kwargs: Any) -> None:
        self.session = session
        self.minted = minted
        self.open_span = open_span
        self._kwargs = kwargs  # what ``session()`` was called with, to mint afresh per decorated call
        self._token: object | None = None
        self._span: Span | None = None

    # -- context manager ---------------------------------------------------------------------
    def __enter__(self) -> Session:
        if self._token is not None or self._span is not None:
            raise RuntimeError("a session() scope cannot be entered twice; call session() again")
        self._token = otel_context.attach(self._open(otel_context.get_current()))
        return self.session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._close(exc)
        finally:
            token, self._token = self._token, None
            otel_context.detach(cast(Any, token))

    async def __aenter__(self) -> Session:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _open(self, parent: Context) -> Context:
        """Start the ``session`` span (if any) under ``parent``; returns the context the activity
        runs in. Not attached here: a generator attaches it only while its own body runs."""
        context = context_with_session(self.session, parent)
        if self.open_span:
            span = _tracer.start_span(
                semconv.SESSION_SPAN,
                context,
                SpanKind.INTERNAL,
                record_exception=False,
                set_status_on_exception=False,
            )
            self._span = span
            if self.minted:
                span.add_event(semconv.SESSION_START_EVENT, dict(self.session.attributes))
            context = trace.set_span_in_context(span, context)
        return context

    def _close(self, exc: BaseException | None) -> None:
        span, self._span = self._span, None
        if span is None:
            return
        try:
            if exc is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            if self.minted:
                span.add_event(semconv.SESSION_END_EVENT, {semconv.SESSION_ID: self.session.id})
        finally:
            span.end()

    # -- decorator ---------------------------------------------------------------------------
    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        kwargs, open_span = self._kwargs, self.open_span

        def fresh() -> SessionScope:
            return session(open_span=open_span, **kwargs)

        # Generators first: a generator function's call only creates the generator, so a scope
        # around the call would close before the body runs.
        if inspect.isasyncgenfunction(func):
            return cast(
                Callable[P, R], async_generator_in_context(cast(Callable[..., Any], func), _session_activity(fresh))
            )
        if inspect.isgeneratorfunction(func):
            return cast(Callable[P, R], generator_in_context(cast(Callable[..., Any], func), _session_activity(fresh)))
        if inspect.iscoroutinefunction(func):
            async_func = cast(Callable[P, Awaitable[Any]], func)

            @functools.wraps(func)
            async def run_async(*args: P.args, **kw: P.kwargs) -> Any:
                async with fresh():
                    return await async_func(*args, **kw)

            return cast(Callable[P, R], run_async)

        @functools.wraps(func)
        def run(*args: P.args, **kw: P.kwargs) -> R:
            with fresh():
                return func(*args, **kw)

        return run


def _session_activity(fresh: Callable[[], SessionScope]) -> Open:
    """Each generator is one session, from its first item to its end; an early ``close()`` by the
    consumer is a normal end (see ``_generators``)."""

    def open_activity() -> tuple[Context, Finish]:
        scope = fresh()

        def finish(error: BaseException | None, closed_early: bool) -> None:
            scope._close(error)

        return scope._open(otel_context.get_current()), finish

    return open_activity


def session(
    *,
    id: str | None = None,
    user_id: str | None = None,
    roles: Iterable[str] | str = (),
    trigger_source: str | None = None,
    trigger_type: str | None = None,
    previous_id: str | None = None,
    open_span: bool = True,
) -> SessionScope:
    """Start an activity: mint a UUIDv7 session id (or continue ``id``) and make it current.

    Use as ``with session(...) as s:``, ``async with session(...)``, or ``@session(...)``.
    Everything below it (spans, logs, threads, tasks, outgoing calls) carries the id. With
    ``open_span`` (the default) a ``session`` span marks the start and end in the trace.
    Raises ``ValueError`` naming the field when a value is malformed.
    """
    kwargs: dict[str, Any] = {
        "id": id,
        "user_id": user_id,
        "roles": roles,
        "trigger_source": trigger_source,
        "trigger_type": trigger_type,
        "previous_id": previous_id,
    }
    # Validated now, so a bad argument fails where it is written, not at first use.
    return SessionScope(make_session(**kwargs), minted=id is None, open_span=open_span, **kwargs)
