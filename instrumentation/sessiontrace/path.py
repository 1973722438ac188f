"""The session path model: every span of a session, across all of its traces, as trees.

Pure data built from ``StoredSpan``s, whatever source read them (store, Jaeger, Tempo): no I/O
here, and no import of any backend. A span whose parent is not among the spans (not exported
yet, sampled out, or lost) becomes a root of its trace, flagged ``orphan``, so nothing is hidden.

``attach_changes`` joins audited database changes (``StoredChange``s, read by ``sources.audit``)
to the spans that made them, by ``trace_id`` / ``span_id``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sessiontrace import semconv
from sessiontrace.records import StoredChange, StoredEvent, StoredLink, StoredSpan


@dataclass(slots=True)
class PathSpan:
    """A span in the path, with its children ordered by start time."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start_ns: int
    end_ns: int | None
    status_code: str
    status_message: str | None
    service_name: str | None
    session_id: str | None
    attributes: Mapping[str, Any]
    events: tuple[StoredEvent, ...]
    links: tuple[StoredLink, ...]
    scope_name: str | None = None
    orphan: bool = False
    children: list[PathSpan] = field(default_factory=list)
    changes: tuple[StoredChange, ...] = ()
    """The audit log's changes made under this span (``attach_changes``), in chain order."""
    unreadable: Mapping[str, str | None] = field(default_factory=dict)
    """Stored columns that could not be read, with their stored text (``StoredSpan.unreadable``)."""

    @classmethod
    def from_stored(cls, span: StoredSpan) -> PathSpan:
        return cls(
            trace_id=span.trace_id,
            span_id=span.span_id,
            parent_span_id=span.parent_span_id,
            name=span.name,
            kind=span.kind,
            start_ns=span.start_ns,
            end_ns=span.end_ns,
            status_code=span.status_code,
            status_message=span.status_message,
            service_name=span.service_name,
            session_id=span.session_id,
            attributes=span.attributes,
            events=span.events,
            links=span.links,
            scope_name=span.scope_name,
            unreadable=span.unreadable,
        )

    @property
    def is_error(self) -> bool:
        return self.status_code == "ERROR"

    @property
    def effective_end_ns(self) -> int:
        """The end time, or the start time for a span that never ended."""
        return self.end_ns if self.end_ns is not None else self.start_ns

    @property
    def duration_ns(self) -> int:
        return max(0, self.effective_end_ns - self.start_ns)

    def walk(self) -> Iterator[PathSpan]:
        """This span and its descendants, depth first, in start order."""
        stack = [self]
        while stack:
            span = stack.pop()
            yield span
            stack.extend(reversed(span.children))


@dataclass(slots=True)
class PathTrace:
    """One trace of the session: its root spans (true roots and orphans) by start time."""

    trace_id: str
    roots: list[PathSpan]
    unplaced_changes: list[StoredChange] = field(default_factory=list)
    """Audit log changes of this trace whose span is not in the path (not exported, or lost)."""

    @property
    def start_ns(self) -> int:
        return min((root.start_ns for root in self.roots), default=0)

    def walk(self) -> Iterator[PathSpan]:
        for root in self.roots:
            yield from root.walk()

    @property
    def span_count(self) -> int:
        return sum(1 for _ in self.walk())


@dataclass(slots=True)
class SessionPath:
    """Everything one session did: its traces ordered by first start time."""

    session_id: str
    traces: list[PathTrace]
    user_id: str | None = None
    trigger_source: str | None = None
    trigger_type: str | None = None
    audit_joined: bool = False
    """Whether the audit log was joined (``attach_changes``): then a span's change event without
    an audit row is news (rolled back, or written to another database)."""

    def walk(self) -> Iterator[PathSpan]:
        """Every span, trace by trace, depth first."""
        for trace in self.traces:
            yield from trace.walk()

    @property
    def span_count(self) -> int:
        return sum(1 for _ in self.walk())

    @property
    def trace_ids(self) -> list[str]:
        """The ids of the session's traces, in path order (what the audit log is joined on)."""
        return [trace.trace_id for trace in self.traces]

    @property
    def error_count(self) -> int:
        return sum(1 for span in self.walk() if span.is_error)

    @property
    def start_ns(self) -> int:
        return min((span.start_ns for span in self.walk()), default=0)

    @property
    def end_ns(self) -> int:
        return max((span.effective_end_ns for span in self.walk()), default=0)

    @property
    def duration_ns(self) -> int:
        """From the first span's start to the last span's end, across all traces."""
        return max(0, self.end_ns - self.start_ns)

    @property
    def services(self) -> list[str]:
        """Services involved, in the order they first appear in time."""
        spans = sorted(self.walk(), key=lambda span: span.start_ns)
        return list(dict.fromkeys(s.service_name for s in spans if s.service_name is not None))

    def first_failure(self) -> PathSpan | None:
        """The ERROR span that ended first: usually the cause, while its ancestors only
        report it. ``None`` when nothing failed."""
        errors = [span for span in self.walk() if span.is_error]
        return min(errors, key=lambda s: (s.effective_end_ns, s.start_ns), default=None)


def build_path(session_id: str, spans: Iterable[StoredSpan]) -> SessionPath:
    """Assemble ``spans`` (any order, duplicates ignored) into the path of ``session_id``."""
    by_trace: dict[str, dict[str, PathSpan]] = {}
    for stored in spans:
        trace = by_trace.setdefault(stored.trace_id, {})
        trace.setdefault(stored.span_id, PathSpan.from_stored(stored))

    traces = [_tree(trace_id, members) for trace_id, members in by_trace.items()]
    traces.sort(key=lambda t: (t.start_ns, t.trace_id))
    path = SessionPath(session_id=session_id, traces=traces)
    path.user_id = _first_attribute(path, semconv.USER_ID)
    path.trigger_source = _first_attribute(path, semconv.TRIGGER_SOURCE)
    path.trigger_type = _first_attribute(path, semconv.TRIGGER_TYPE)
    return path


def attach_changes(path: SessionPath, changes: Iterable[StoredChange]) -> SessionPath:
    """Put each change under the span that made it (same ``trace_id`` and ``span_id``); a change of
    one of the path's traces whose span is not in the path goes to its trace's ``unplaced_changes``,
    and changes of other traces are ignored. Changes keep their given order (the log's: by
    ``seq``). Attaching again replaces what was attached. Marks the path ``audit_joined`` and
    returns it (the same object, changed in place)."""
    traces = {trace.trace_id: trace for trace in path.traces}
    spans = {(span.trace_id, span.span_id): span for span in path.walk()}
    placed: dict[tuple[str, str], list[StoredChange]] = {}
    unplaced: dict[str, list[StoredChange]] = {}
    for change in changes:
        if change.trace_id not in traces:
            continue
        key = (change.trace_id, change.span_id or "")
        if key in spans:
            placed.setdefault(key, []).append(change)
        else:
            unplaced.setdefault(change.trace_id, []).append(change)
    for key, span in spans.items():
        span.changes = tuple(placed.get(key, ()))
    for trace_id, trace in traces.items():
        trace.unplaced_changes = unplaced.get(trace_id, [])
    path.audit_joined = True
    return path


def unmatched_change_events(span: PathSpan) -> list[StoredEvent]:
    """The span's ``DB_CHANGE_EVENT``s that no attached change accounts for, in order. Each event is
    paired with one change of the same table, record and type (and chain position, when the
    event knows it); what is left had no audit row."""
    unused = list(span.changes)
    left: list[StoredEvent] = []
    for event in span.events:
        if event.name != semconv.DB_CHANGE_EVENT:
            continue
        a = event.attributes
        seq = a.get(semconv.DB_AUDIT_SEQ)
        for index, change in enumerate(unused):
            if (
                change.table_name == a.get(semconv.DB_COLLECTION_NAME)
                and change.record_id == a.get(semconv.DB_RECORD_ID)
                and change.change_type == a.get(semconv.DB_CHANGE_TYPE)
                and (seq is None or change.seq is None or change.seq == seq)
            ):
                del unused[index]
                break
        else:
            left.append(event)
    return left


def _tree(trace_id: str, members: dict[str, PathSpan]) -> PathTrace:
    roots: list[PathSpan] = []
    for span in members.values():
        parent = members.get(span.parent_span_id) if span.parent_span_id else None
        if parent is None or parent is span:
            span.orphan = span.parent_span_id is not None
            roots.append(span)
        else:
            parent.children.append(span)
    for span in members.values():
        span.children.sort(key=_start_key)
    roots.sort(key=_start_key)
    trace = PathTrace(trace_id=trace_id, roots=roots)
    # Malformed data (a parent cycle) leaves spans unreachable from any root: cut each cycle at
    # its earliest span and surface that span as an orphan root, so nothing is hidden.
    reached = {span.span_id for span in trace.walk()}
    if len(reached) < len(members):
        for span in sorted(members.values(), key=_start_key):
            if span.span_id not in reached:
                members[span.parent_span_id or ""].children.remove(span)
                span.orphan = True
                roots.append(span)
                reached.update(s.span_id for s in span.walk())
        roots.sort(key=_start_key)
    return trace


def _start_key(span: PathSpan) -> tuple[int, str]:
    return (span.start_ns, span.span_id)


def _first_attribute(path: SessionPath, key: str) -> str | None:
    """The value the session's spans give ``key``, taking the earliest span that has it."""
    spans = sorted(
        (s for s in path.walk() if s.session_id == path.session_id and key in s.attributes),
        key=_start_key,
    )
    return str(spans[0].attributes[key]) if spans else None
