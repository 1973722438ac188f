"""Redaction at export: span and log record processors that must run before any exporter.

The SDK calls ``on_end`` of every span processor in order with one and the same ``ReadableSpan``,
built when the span ended. Replacing its attributes, events, links, name and status in place
therefore changes what every *later* processor exports, and leaves the application's own
``Span`` object untouched. That works only when ours comes first, so ``install_redaction``
inserts it at the front of the provider's list (as ``configure()`` does for log stamping);
if the SDK's internals differ, it appends and warns once.

``ReadableSpan`` has no setters: writing its ``_``-fields is the one way to redact before export
without wrapping every exporter. The fields are checked once per process; anything unexpected
fails closed (every string replaced) rather than exporting unchecked data.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    Span,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
    TracerProvider,
)
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, Status

from sessiontrace._attributes import frozen_like
from sessiontrace._log import warn_once
from sessiontrace.redaction._redactor import BODY_KEY, EVENT_NAME_KEY, FAILED, NAME_KEY, STATUS_KEY, Redactor

_SPAN_FIELDS = ("_name", "_attributes", "_events", "_links", "_status")
_checked: set[type] = set()
"""Span classes seen with every field: ``ReadableSpan`` sets them all in ``__init__``, so the
check runs once per class, not on every span."""


def _has_fields(span: ReadableSpan, fields: dict[str, Any]) -> bool:
    if not all(field in fields for field in _SPAN_FIELDS):
        return False
    if type(span).__init__ is ReadableSpan.__init__:  # a subclass may not call it: check each one
        _checked.add(type(span))
    return True


class RedactingSpanProcessor(SpanProcessor):
    """Redacts every ending span, ours and third-party, before the processors after it export it.

    ``redactor`` may be replaced (or set to None to stop redacting) at any time; ``configure()``
    does that when called again.
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        self.redactor: Redactor | None = Redactor() if redactor is None else redactor

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        redactor = self.redactor
        if redactor is None:
            return
        try:
            redact_span(span, redactor)
        except Exception as error:  # never raise into the SDK; never export what we could not check
            warn_once(
                "redaction:span",
                "sessiontrace: redacting a span failed (%s: %s); its strings are replaced whole",
                type(error).__name__,
                error,
            )
            _fail_closed(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def redact_span(span: ReadableSpan, redactor: Redactor) -> None:
    """Redact ``span`` in place: name, attributes, event names and attributes, link attributes,
    status description."""
    fields = vars(span)
    if type(span) not in _checked and not _has_fields(span, fields):
        raise TypeError(f"{type(span).__name__} lacks the ReadableSpan fields {_SPAN_FIELDS}")
    name = redactor.redact(NAME_KEY, span._name)
    if name is not span._name:
        span._name = name
    attributes = redactor.redact_attributes(span._attributes)
    if attributes is not None:
        span._attributes = frozen_like(span._attributes, attributes)
    if span._events:
        events = [_event(event, redactor) for event in span._events]
        if any(new is not old for new, old in zip(events, span._events, strict=True)):
            span._events = _sequence_like(span._events, events)
    if span._links:
        links = [_link(link, redactor) for link in span._links]
        if any(new is not old for new, old in zip(links, span._links, strict=True)):
            span._links = _sequence_like(span._links, links)
    status = span._status
    if status is not None and status.description:
        description = redactor.redact(STATUS_KEY, status.description)
        if description is not status.description:
            span._status = Status(status.status_code, description)


def _event(event: Event, redactor: Redactor) -> Event:
    name = redactor.redact(EVENT_NAME_KEY, event.name)
    attributes = redactor.redact_attributes(event.attributes)
    if attributes is None:
        if name is event.name:
            return event
        return Event(name, event.attributes, event.timestamp)
    return Event(name, frozen_like(event.attributes, attributes), event.timestamp)


def _link(link: Link, redactor: Redactor) -> Link:
    attributes = redactor.redact_attributes(link.attributes)
    return link if attributes is None else Link(link.context, frozen_like(link.attributes, attributes))


def _sequence_like(original: Any, items: list[Any]) -> Any:
    if isinstance(original, BoundedList):
        copy = BoundedList.from_seq(None, items)
        copy.dropped = original.dropped
        return copy
    return tuple(items)


def _fail_closed(span: Any) -> None:
    """Last resort after an unexpected error: no string of this span is exported."""
    try:
        attributes = getattr(span, "_attributes", None) or {}
        span._attributes = {
            key: value if isinstance(value, (bool, int, float)) else FAILED for key, value in attributes.items()
        }
        span._events = ()
        span._links = ()
        if isinstance(getattr(span, "_name", None), str):
            span._name = FAILED
        status = getattr(span, "_status", None)
        if status is not None and status.description:
            span._status = Status(status.status_code, FAILED)
    except Exception:
        pass


class RedactingLogRecordProcessor:
    """The same redaction for OpenTelemetry log records (body and attributes), before export.

    Duck-typed to ``opentelemetry.sdk._logs.LogRecordProcessor`` (still private upstream), like
    ``SessionLogRecordProcessor``.
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        self.redactor: Redactor | None = Redactor() if redactor is None else redactor

    def on_emit(self, log_record: Any) -> None:
        redactor = self.redactor
        if redactor is None:
            return
        record = log_record.log_record
        try:
            body = record.body
            if body is not None:
                redacted = redactor.redact(BODY_KEY, body)
                if redacted is not body:
                    record.body = redacted
            attributes = redactor.redact_attributes(record.attributes)
            if attributes is not None:
                record.attributes = frozen_like(record.attributes, attributes)
        except Exception as error:
            warn_once(
                "redaction:log",
                "sessiontrace: redacting a log record failed (%s: %s); its body and attributes are dropped",
                type(error).__name__,
                error,
            )
            try:
                record.body = FAILED
                record.attributes = {}
            except Exception:
                pass

    emit = on_emit  # older SDKs call emit()

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


# --- installing: first in line ------------------------------------------------------------------------------


def add_span_processor_first(provider: TracerProvider, processor: SpanProcessor) -> bool:
    """Put ``processor`` before every processor ``provider`` already has (True), or, when the
    provider's internals are not the SDK's synchronous list, append it and warn once (False)."""
    multi = getattr(provider, "_active_span_processor", None)
    lock = getattr(multi, "_lock", None)
    if (
        isinstance(multi, SynchronousMultiSpanProcessor)
        and isinstance(getattr(multi, "_span_processors", None), tuple)
        and lock is not None
    ):
        with lock:
            multi._span_processors = (processor, *multi._span_processors)
        return True
    provider.add_span_processor(processor)
    warn_once(
        "redaction:not-first",
        "sessiontrace: cannot put %s first in %s; spans may be exported before they are redacted",
        type(processor).__name__,
        type(multi).__name__,
    )
    return False


def install_redaction(provider: TracerProvider, redactor: Redactor | None) -> RedactingSpanProcessor | None:
    """Make ``provider`` redact with ``redactor`` (None: stop redacting). A provider that already
    has our processor gets the new redactor; otherwise one is inserted first."""
    multi = getattr(provider, "_active_span_processor", None)
    for processor in getattr(multi, "_span_processors", ()):
        if isinstance(processor, RedactingSpanProcessor):
            processor.redactor = redactor
            return processor
    if redactor is None:
        return None
    ours = RedactingSpanProcessor(redactor)
    add_span_processor_first(provider, ours)
    return ours


def install_log_redaction(redactor: Redactor | None, provider: Any = None) -> RedactingLogRecordProcessor | None:
    """The same for an SDK ``LoggerProvider`` (default: the global one, when the SDK's is set)."""
    try:
        from opentelemetry import _logs
        from opentelemetry.sdk._logs import LoggerProvider
    except ImportError:
        return None
    provider = _logs.get_logger_provider() if provider is None else provider
    if not isinstance(provider, LoggerProvider):
        return None
    multi = getattr(provider, "_multi_log_record_processor", None)
    processors = getattr(multi, "_log_record_processors", ())
    for processor in processors:
        if isinstance(processor, RedactingLogRecordProcessor):
            processor.redactor = redactor
            return processor
    if redactor is None:
        return None
    ours = RedactingLogRecordProcessor(redactor)
    lock = getattr(multi, "_lock", None)
    if lock is not None and isinstance(processors, tuple):
        with lock:  # first: a log record is exported inside the same on_emit pass
            multi._log_record_processors = (ours, *multi._log_record_processors)  # type: ignore[union-attr]
    else:
        provider.add_log_record_processor(ours)  # type: ignore[arg-type]
        warn_once("redaction:logs-not-first", "sessiontrace: log records may be exported before they are redacted")
    return ours
