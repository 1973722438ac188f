"""Stamping: every span and log record started inside a session carries its attributes.

The span processor runs for every span of the process, ours and third-party, so it is the hot
path of the whole library: one context lookup, then a handful of dictionary writes. It never
overwrites an attribute the span already has, never raises and never blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import baggage
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.util.types import AttributeValue

from sessiontrace import _attributes, _values, semconv
from sessiontrace.context import _SESSION_KEY, Session

# Our values are at most this long (user id, trigger type); below it a span limit could truncate.
_LONGEST_VALUE = max(_values.MAX_USER_ID, _values.MAX_TRIGGER_TYPE)


def session_attributes(context: Context | None = None) -> Mapping[str, AttributeValue] | None:
    """The attributes to stamp in ``context`` (default: current), or None outside a session.

    A ``Session`` under our key is the norm. Baggage alone (set by a propagator that is not ours)
    yields only a well-formed ``session.id``: user entries from unverified baggage are not stamped.
    """
    session = otel_context.get_value(_SESSION_KEY, context)
    if type(session) is Session:
        return session.attributes
    raw = baggage.get_baggage(semconv.BAGGAGE_SESSION_ID, context)
    if raw is None:
        return None
    try:
        return {semconv.SESSION_ID: _values.session_id(raw)}
    except _values.InvalidValue:
        return None


def stamp(span: Any, attributes: Mapping[str, AttributeValue]) -> None:
    """Add ``attributes`` the span does not have yet: directly into the SDK's container (ours were
    validated once per session), else through the public API."""
    if _attributes.add(span, attributes, longest=_LONGEST_VALUE, replace=False):
        return
    if not span.is_recording():
        return
    existing = span.attributes or {}
    span.set_attributes({key: value for key, value in attributes.items() if key not in existing})


class SessionSpanProcessor(SpanProcessor):
    """Stamps ``session.id``, ``user.id``, ``user.roles`` and the trigger on every span that
    starts inside a session. Add it first, before exporting processors."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            attributes = session_attributes(parent_context)
            if attributes:
                stamp(span, attributes)
        except Exception:  # stamping must never break the span the application is starting
            logging.getLogger("sessiontrace").debug("stamping failed", exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class SessionLogRecordProcessor:
    """The same stamping for the OpenTelemetry logs SDK (``LoggerProvider``).

    Duck-typed to ``opentelemetry.sdk._logs.LogRecordProcessor``: that module is still private
    upstream, so we avoid importing it at module load.
    """

    def on_emit(self, log_record: Any) -> None:
        try:
            record = log_record.log_record
            attributes = session_attributes(getattr(record, "context", None))
            if not attributes or record.attributes is None:
                return
            for key, value in attributes.items():
                if key not in record.attributes:
                    record.attributes[key] = value
        except Exception:
            logging.getLogger("sessiontrace").debug("log stamping failed", exc_info=True)

    emit = on_emit  # older SDKs call emit()

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


# --- stdlib logging ---------------------------------------------------------------------------------
_installed_factory: Callable[..., logging.LogRecord] | None = None


def install_log_record_factory() -> None:
    """Make every stdlib ``LogRecord`` created inside a session carry ``session.id`` and
    ``user.id`` as record fields (usable as ``%(session.id)s``; give the formatter
    ``defaults={"session.id": "-"}`` for records outside a session). OpenTelemetry's
    ``LoggingHandler`` copies record fields to log attributes, so OTel logs get them too.
    Wraps the current factory rather than replacing it; installing twice is a no-op."""
    global _installed_factory
    previous = logging.getLogRecordFactory()
    if previous is _installed_factory:
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            attributes = session_attributes()
            if attributes:
                fields = record.__dict__
                for key in semconv.LOG_RECORD_FIELDS:
                    if key in attributes and key not in fields:
                        fields[key] = attributes[key]
        except Exception:  # a log call must never fail because of us
            pass
        return record

    _installed_factory = factory
    logging.setLogRecordFactory(factory)
