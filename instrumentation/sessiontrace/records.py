"""What a source reads back: spans and session summaries, independent of the backend.

The embedded store produces these today; Jaeger, Tempo and the audit DB will produce them too.
The path model is built from them, so it never needs to know where a span was stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A span event as read back: its name, time and attributes."""

    name: str
    time_ns: int
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredLink:
    """A link from a span to another span (possibly in another trace)."""

    trace_id: str
    span_id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredSpan:
    """One finished span as read back. Ids are lower-case hex (trace 32, span 16 characters);
    ``kind`` and ``status_code`` are OpenTelemetry enum names (``SERVER``, ``ERROR``)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start_ns: int
    end_ns: int | None
    status_code: str = "UNSET"
    status_message: str | None = None
    service_name: str | None = None
    session_id: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[StoredEvent, ...] = ()
    links: tuple[StoredLink, ...] = ()
    resource: Mapping[str, Any] = field(default_factory=dict)
    scope_name: str | None = None


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One line of the sessions listing. Counts cover the spans stamped with the session id."""

    session_id: str
    first_start_ns: int
    last_end_ns: int
    span_count: int
    error_count: int
    user_id: str | None
    trigger_source: str | None
    root_name: str | None
    services: tuple[str, ...]

    @property
    def duration_ns(self) -> int:
        return max(0, self.last_end_ns - self.first_start_ns)
