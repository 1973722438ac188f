"""Carrying a session across process boundaries, with a trust boundary on the way in and a host
policy on the way out.

``SessionPropagator`` wraps whatever propagators the application uses (by default W3C
``traceparent`` + ``baggage``, plus Jaeger's ``uber-trace-id`` / ``uberctx-*`` when asked) and is
installed as the global propagator by ``configure()``. Every instrumentation that calls
``opentelemetry.propagate.inject/extract`` (HTTP servers and clients, Celery, ...) therefore goes
through the policy without knowing about us.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import baggage, propagate
from opentelemetry.context import Context
from opentelemetry.context import get_current as _current_context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import (
    CarrierT,
    DefaultGetter,
    DefaultSetter,
    Getter,
    Setter,
    TextMapPropagator,
)

from sessiontrace import _values, semconv
from sessiontrace._log import warn_once
from sessiontrace.context import Session, context_with_session, current_session
from sessiontrace.policy import InboundPolicy, OutboundPolicy, sign, signature_is_valid
from sessiontrace.workflow import admit_run

# Largest header value we hand to the inner propagators. The W3C baggage limit is 8192 bytes for
# the whole header; anything larger is hostile or broken, and parsing it costs the request.
MAX_HEADER_BYTES = 8192

# Set around one inject/extract by the code that knows the other side: our HTTP integrations
# know the destination URL, our inbound middleware knows the peer address. Propagator methods
# have fixed signatures, so a context variable is how that knowledge reaches them.
_destination: contextvars.ContextVar[str | None] = contextvars.ContextVar("sessiontrace_destination", default=None)
_peer_trusted: contextvars.ContextVar[bool] = contextvars.ContextVar("sessiontrace_peer_trusted", default=False)
_extracting: contextvars.ContextVar[bool] = contextvars.ContextVar("sessiontrace_extracting", default=False)

# Entries a signature covers, and the signature itself: what ``_admit`` reads as text.
_SIGNED_ENTRY_KEYS = semconv.SESSION_BAGGAGE_KEYS + semconv.WORKFLOW_BAGGAGE_KEYS

# Loggers of the inner propagators (W3C baggage and trace context, trace state parsing). They warn
# about every malformed header, quoting it: hostile traffic repeats that at will.
_INNER_PROPAGATOR_LOGGERS = (
    "opentelemetry.baggage.propagation",
    "opentelemetry.trace.propagation.tracecontext",
    "opentelemetry.trace.span",
)


class _OneWarningPerReason(logging.Filter):
    """While we extract, turns the inner propagators' warnings into one warning of ours per reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _extracting.get() or record.levelno < logging.WARNING:
            return True
        warn_once(
            f"inner:{record.name}:{record.msg}",  # the format string: a fixed set of reasons
            "sessiontrace: ignored a malformed inbound trace header entry (more like it are not logged): %s",
            _values.shown(record.getMessage()),
        )
        return False


_ONE_WARNING_PER_REASON = _OneWarningPerReason()


class _CaseInsensitiveGetter(Getter[Mapping[str, Any]]):
    """Reads header-like mappings whatever the case of their keys (webhook JSON, raw dicts)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            lowered = key.lower()
            value = next((v for k, v in carrier.items() if k.lower() == lowered), None)
        if value is None:
            return None
        return list(value) if isinstance(value, (list, tuple)) else [str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier.keys())


class _BoundedGetter(Getter[CarrierT]):
    """Hides oversized header values from the inner propagators (one warning per process)."""

    def __init__(self, inner: Getter[CarrierT]) -> None:
        self._inner = inner

    def get(self, carrier: CarrierT, key: str) -> list[str] | None:
        values = self._inner.get(carrier, key)
        if values and sum(_encoded_length(value) for value in values) > MAX_HEADER_BYTES:
            warn_once(
                f"oversized:{key}",
                "sessiontrace: dropped inbound header %r larger than %d bytes",
                key,
                MAX_HEADER_BYTES,
            )
            return None
        return values

    def keys(self, carrier: CarrierT) -> list[str]:
        return self._inner.keys(carrier)


def _encoded_length(value: str) -> int:
    """Bytes, as the limit means: a header read as latin-1 has up to two UTF-8 bytes a character."""
    return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))


class SessionPropagator(TextMapPropagator):
    """Propagates the session through ``inner`` and enforces the inbound and outbound policies."""

    def __init__(
        self,
        inner: TextMapPropagator,
        inbound: InboundPolicy | None = None,
        outbound: OutboundPolicy | None = None,
    ) -> None:
        self.inner = inner
        self.inbound = inbound or InboundPolicy()
        self.outbound = outbound or OutboundPolicy()
        # The application's propagator before ``session_propagator`` added Jaeger's, so that a
        # later ``configure(jaeger_propagation=False)`` can take it away again.
        self._base = inner
        for name in _INNER_PROPAGATOR_LOGGERS:
            logging.getLogger(name).addFilter(_ONE_WARNING_PER_REASON)  # a no-op when already there

    @property
    def fields(self) -> set[str]:
        return set(self.inner.fields)

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = DefaultGetter(),  # type: ignore[assignment]  # noqa: B008
    ) -> Context:
        base = context if context is not None else Context()
        token = _extracting.set(True)
        try:
            # The carrier is read into a context without baggage, so that what we judge is what the
            # carrier brought, never what ``context`` already held (its session stays as it was).
            base_entries = baggage.get_all(base)
            extracted = self.inner.extract(
                carrier, baggage.clear(base) if base_entries else base, _BoundedGetter(getter)
            )
            return self._admit(baggage.get_all(extracted), _on_base_baggage(extracted, base_entries))
        except Exception as error:  # a propagator must never fail the request
            warn_once(f"extract:{type(error).__name__}", "sessiontrace: ignored malformed trace headers: %r", error)
            return base
        finally:
            _extracting.reset(token)

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = DefaultSetter(),  # type: ignore[assignment]  # noqa: B008
    ) -> None:
        ctx = context if context is not None else _current_context()
        destination = _destination.get()
        if not self.outbound.allows(destination):
            ctx = _without_session_entries(ctx)
        else:
            session = current_session(ctx)
            if session is not None and session.trusted and self.inbound.signing_key:
                entries = session.baggage_entries()
                # The run rides along: signed, a receiver that requires signatures continues it too.
                for key in semconv.WORKFLOW_BAGGAGE_KEYS:
                    value = baggage.get_baggage(key, ctx)
                    if value is not None:
                        entries[key] = str(value)
                ctx = baggage.set_baggage(semconv.BAGGAGE_SIGNATURE, sign(entries, self.inbound.signing_key), ctx)
        self.inner.inject(carrier, ctx, setter)

    def _admit(self, entries: Mapping[str, object], ctx: Context) -> Context:
        """Turn the session and run entries the carrier brought (``entries``) into a ``Session``
        and a ``Run`` in ``ctx``, dropping whatever the policy does not accept."""
        text = {key: str(entries[key]) for key in _SIGNED_ENTRY_KEYS if key in entries}
        session_signed, run_signed = self._signed(text)
        # A workflow run travels independently of the session: admitted (validated) either way,
        # unless signatures are required, as a stranger could attach our steps to any run.
        if self.inbound.require_signature and not run_signed and _carries_run(text):
            warn_once("inbound:unsigned-run", "sessiontrace: dropped inbound workflow run: missing or bad signature")
        else:
            ctx = admit_run(entries, ctx)

        session_id = entries.get(semconv.BAGGAGE_SESSION_ID)
        if session_id is None:
            session_id = next((entries[k] for k in semconv.FOREIGN_SESSION_BAGGAGE_KEYS if k in entries), None)
        if session_id is None:
            return ctx
        try:
            sid = _values.session_id(session_id)
        except _values.InvalidValue as error:
            warn_once("inbound:session.id", "sessiontrace: dropped inbound session: %s", error)
            return ctx
        if self.inbound.require_signature and not session_signed:
            warn_once("inbound:unsigned", "sessiontrace: dropped inbound session %s: missing or bad signature", sid)
            return ctx
        trusted = session_signed or _peer_trusted.get()
        session = Session(
            id=sid,
            previous_id=_optional(_values.session_id, text.get(semconv.BAGGAGE_PREVIOUS_ID)),
            trigger_source=_optional(_values.trigger_source, text.get(semconv.BAGGAGE_TRIGGER_SOURCE)),
            trigger_type=_optional(_values.trigger_type, text.get(semconv.BAGGAGE_TRIGGER_TYPE)),
            user_id=_optional(_values.user_id, text.get(semconv.BAGGAGE_USER_ID)) if trusted else None,
            roles=(_optional(_values.roles, text.get(semconv.BAGGAGE_USER_ROLES)) or ()) if trusted else (),
            trusted=trusted,
        )
        return context_with_session(session, ctx)

    def _signed(self, text: Mapping[str, str]) -> tuple[bool, bool]:
        """Whether the signature in ``text`` covers (the session, the run)."""
        key, signature = self.inbound.signing_key, text.get(semconv.BAGGAGE_SIGNATURE)
        if not key or signature is None:
            return False, False
        if signature_is_valid(text, signature, key):
            return True, True
        if not _carries_run(text):
            return False, False
        # A sender from before runs were signed covers the session only: that still vouches for
        # the session, not for the run.
        session_only = {name: value for name, value in text.items() if name not in semconv.WORKFLOW_BAGGAGE_KEYS}
        return signature_is_valid(session_only, signature, key), False


def _carries_run(entries: Mapping[str, object]) -> bool:
    return any(key in entries for key in semconv.WORKFLOW_BAGGAGE_KEYS)


def _optional(check: Any, value: str | None) -> Any:
    """A checked wire value, or None (with one warning per field) when it is malformed."""
    if value is None:
        return None
    try:
        return check(value)
    except _values.InvalidValue as error:
        warn_once(f"inbound:{check.__name__}", "sessiontrace: dropped inbound value: %s", error)
        return None


def _on_base_baggage(extracted: Context, base_entries: Mapping[str, object]) -> Context:
    """``extracted`` without the carrier's entries of ours (``_admit`` decides on those), its
    other entries laid over the baggage the base context had."""
    ctx = _without_session_entries(extracted)
    if base_entries:
        merged = {**base_entries, **baggage.get_all(ctx)}
        ctx = baggage.clear(ctx)
        for key, value in merged.items():
            ctx = baggage.set_baggage(key, value, ctx)
    return ctx


def _without_session_entries(ctx: Context) -> Context:
    """``ctx`` without our baggage entries. Other tools' entries (``langfuse_session_id``...) stay:
    they are read as a session id inbound, but what they carry is those tools' business."""
    for key in semconv.OUR_BAGGAGE_KEYS:
        if baggage.get_baggage(key, ctx) is not None:
            ctx = baggage.remove_baggage(key, ctx)
    return ctx


# --- installing ------------------------------------------------------------------------------------
def session_propagator(
    inbound: InboundPolicy | None = None,
    outbound: OutboundPolicy | None = None,
    *,
    jaeger: bool = False,
) -> SessionPropagator:
    """A ``SessionPropagator`` around the current global propagator (``OTEL_PROPAGATORS``),
    adding Jaeger's format when ``jaeger`` is true. Re-wrapping ours replaces its policies."""
    inner = base = propagate.get_global_textmap()
    if isinstance(inner, SessionPropagator):
        inner = base = inner._base
    if jaeger and "uber-trace-id" not in inner.fields:
        try:
            from opentelemetry.propagators.jaeger import JaegerPropagator
        except ImportError as error:
            raise ImportError(
                "Jaeger propagation needs the jaeger extra: pip install 'sessiontrace[jaeger]'"
            ) from error
        inner = CompositePropagator([inner, JaegerPropagator()])
    propagator = SessionPropagator(inner, inbound, outbound)
    propagator._base = base
    return propagator


def _propagator() -> SessionPropagator:
    """The global propagator if it is ours, else ours around it with default policies."""
    current = propagate.get_global_textmap()
    return current if isinstance(current, SessionPropagator) else SessionPropagator(current)


# --- the plain API for webhooks and custom transports ----------------------------------------------
def inject(
    carrier: MutableMapping[str, str],
    *,
    destination: str | None = None,
    context: Context | None = None,
) -> MutableMapping[str, str]:
    """Write the current trace and session into ``carrier`` (headers, message properties, a
    webhook payload's metadata). ``destination`` (a URL or host name) applies the outbound host
    policy. Returns the carrier."""
    with outbound_to(destination):
        _propagator().inject(carrier, context)
    return carrier


def extract(
    carrier: Mapping[str, Any],
    *,
    peer: str | None = None,
    context: Context | None = None,
) -> Context:
    """Read a trace and session from ``carrier`` through the inbound policy. ``peer`` is the
    sender's IP address, checked against the trusted peers. Header names match case-insensitively.
    A session already in ``context`` stays unless the carrier brings one the policy admits.
    Returns a context to ``attach`` (or pass to ``tracer.start_as_current_span``)."""
    propagator = _propagator()
    with inbound_from(peer, propagator.inbound):
        return propagator.extract(carrier, context, _CaseInsensitiveGetter())


@contextlib.contextmanager
def outbound_to(destination: str | None) -> Iterator[None]:
    """Within this block, injections go to ``destination`` (URL or host) and obey its policy."""
    token = _destination.set(_host_of(destination))
    try:
        yield
    finally:
        _destination.reset(token)


@contextlib.contextmanager
def inbound_from(peer: str | None, policy: InboundPolicy | None = None) -> Iterator[None]:
    """Within this block, extractions come from ``peer`` (an IP address)."""
    token = _peer_trusted.set((policy or _propagator().inbound).peer_is_trusted(peer))
    try:
        yield
    finally:
        _peer_trusted.reset(token)


def _host_of(destination: str | None) -> str | None:
    if not destination:
        return None
    if "://" not in destination:
        return destination
    try:
        return urlsplit(destination).hostname or ""
    except ValueError:
        return ""  # unparsable URL: an empty host matches no allow-list entry but "*"


def destination_allowed(destination: str | None) -> bool:
    """Whether the outbound policy lets ``destination`` receive session entries."""
    return _propagator().outbound.allows(_host_of(destination))


__all__ = [
    "SessionPropagator",
    "destination_allowed",
    "extract",
    "inbound_from",
    "inject",
    "outbound_to",
    "session_propagator",
]
