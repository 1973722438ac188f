"""What a source reads back: spans, session summaries and audited database changes, independent
of the backend.

The embedded store produces spans today, the audit log (``sources.audit``) the changes; Jaeger and
Tempo will produce spans too. The path model is built from them, so it never needs to know where a
span or a change was stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_SESSION_ID = 256
"""The longest session id a source lists and ``sessiontrace path`` opens (other instrumentation
sets ids that are not UUIDs, but none this long)."""


def is_listed_session_id(value: str) -> bool:
    """Whether a span's ``session.id`` names a session to list and open: 1 to ``MAX_SESSION_ID``
    printable characters. A span with any other stays stored, under no session."""
    return 0 < len(value) <= MAX_SESSION_ID and value.isprintable()


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
    unreadable: Mapping[str, str | None] = field(default_factory=dict)
    """Columns whose stored value was not of their shape (malformed JSON, a wrong type), each with
    the stored text (``None`` for NULL); the field itself then holds a safe fallback."""


@dataclass(frozen=True, slots=True)
class StoredChange:
    """One audited record change as read back from the audit log, joined to the span that made it
    by ``trace_id`` / ``span_id``.

    ``record_id`` is the primary key as the log keeps it, canonical JSON (``{"id":"CL-1"}``);
    ``previous_values`` / ``new_values`` map columns to their JSON-encoded values (``None`` for an
    insert's previous and a delete's new values; a ``Decimal`` is a string, masked columns are
    ``"[MASKED]"``); ``changed_fields`` lists the columns that changed (all of them for an insert
    or a delete). ``time_ns`` is the change's timestamp; ``seq`` its position in the hash chain.
    """

    table_name: str
    record_id: str
    change_type: str
    changed_fields: tuple[str, ...]
    previous_values: Mapping[str, Any] | None
    new_values: Mapping[str, Any] | None
    time_ns: int
    trace_id: str | None = None
    span_id: str | None = None
    seq: int | None = None
    session_id: str | None = None
    user_id: str | None = None
    source: str = "orm"
    unreadable: Mapping[str, str | None] = field(default_factory=dict)
    """Columns whose stored value was not of their shape (a list where an object belongs, a
    timestamp that is none), each with the stored text (``None`` for NULL); the field itself then
    holds a safe fallback (``None``, empty, or a neighbour's time for ``time_ns``)."""


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
