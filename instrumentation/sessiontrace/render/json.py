"""The session path (and the sessions listing) as a stable JSON document.

Path document, ``"schema": "sessiontrace.path/1"``::

    {
      "schema": "sessiontrace.path/1",
      "session": {
        "id": str, "user_id": str|null, "trigger_source": str|null, "trigger_type": str|null,
        "start_ns": int, "end_ns": int, "duration_ms": float,
        "span_count": int, "error_count": int, "services": [str],
        "first_failure": {"trace_id": str, "span_id": str, "name": str, "message": str|null}|null
      },
      "traces": [{"trace_id": str, "start_ns": int, "span_count": int, "spans": [span]}]
    }

    span = {
      "trace_id": str, "span_id": str, "parent_span_id": str|null, "name": str,
      "kind": "INTERNAL"|"SERVER"|"CLIENT"|"PRODUCER"|"CONSUMER",
      "service": str|null, "scope": str|null, "session_id": str|null,
      "start_ns": int, "end_ns": int|null, "offset_ms": float, "duration_ms": float,
      "status": {"code": "UNSET"|"OK"|"ERROR", "message": str|null},
      "orphan": bool, "attributes": {str: value},
      "events": [{"name": str, "time_ns": int, "offset_ms": float, "attributes": {}}],
      "links": [{"trace_id": str, "span_id": str, "attributes": {}}],
      "children": [span]
    }

Traces are ordered by first start time, ``spans`` holds each trace's roots, children are ordered
by start time; offsets are from the session's first span. Keys are only ever added to this schema;
a change that removes or renames one bumps the version in ``schema``.

Sessions listing, ``"schema": "sessiontrace.sessions/1"``: ``{"schema", "sessions": [{"id",
"start_ns", "end_ns", "duration_ms", "span_count", "error_count", "user_id", "trigger_source",
"root_name", "services"}]}``, newest first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sessiontrace.path import PathSpan, SessionPath
from sessiontrace.records import SessionSummary

PATH_SCHEMA = "sessiontrace.path/1"
SESSIONS_SCHEMA = "sessiontrace.sessions/1"


def path_document(path: SessionPath) -> dict[str, Any]:
    """The path as plain JSON-ready data (see the module docstring for the schema)."""
    origin = path.start_ns
    failure = path.first_failure()
    return {
        "schema": PATH_SCHEMA,
        "session": {
            "id": path.session_id,
            "user_id": path.user_id,
            "trigger_source": path.trigger_source,
            "trigger_type": path.trigger_type,
            "start_ns": path.start_ns,
            "end_ns": path.end_ns,
            "duration_ms": _ms(path.duration_ns),
            "span_count": path.span_count,
            "error_count": path.error_count,
            "services": path.services,
            "first_failure": None
            if failure is None
            else {
                "trace_id": failure.trace_id,
                "span_id": failure.span_id,
                "name": failure.name,
                "message": failure.status_message,
            },
        },
        "traces": [
            {
                "trace_id": trace.trace_id,
                "start_ns": trace.start_ns,
                "span_count": trace.span_count,
                "spans": [_span(root, origin) for root in trace.roots],
            }
            for trace in path.traces
        ],
    }


def sessions_document(sessions: Sequence[SessionSummary]) -> dict[str, Any]:
    return {
        "schema": SESSIONS_SCHEMA,
        "sessions": [
            {
                "id": s.session_id,
                "start_ns": s.first_start_ns,
                "end_ns": s.last_end_ns,
                "duration_ms": _ms(s.duration_ns),
                "span_count": s.span_count,
                "error_count": s.error_count,
                "user_id": s.user_id,
                "trigger_source": s.trigger_source,
                "root_name": s.root_name,
                "services": list(s.services),
            }
            for s in sessions
        ],
    }


def dumps(document: dict[str, Any]) -> str:
    """Indented, key order kept (it is part of the schema's readability), UTF-8 as is."""
    return json.dumps(document, indent=2, ensure_ascii=False, default=str)


def _span(span: PathSpan, origin: int) -> dict[str, Any]:
    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "name": span.name,
        "kind": span.kind,
        "service": span.service_name,
        "scope": span.scope_name,
        "session_id": span.session_id,
        "start_ns": span.start_ns,
        "end_ns": span.end_ns,
        "offset_ms": _ms(span.start_ns - origin),
        "duration_ms": _ms(span.duration_ns),
        "status": {"code": span.status_code, "message": span.status_message},
        "orphan": span.orphan,
        "attributes": dict(span.attributes),
        "events": [
            {
                "name": e.name,
                "time_ns": e.time_ns,
                "offset_ms": _ms(e.time_ns - origin),
                "attributes": dict(e.attributes),
            }
            for e in span.events
        ],
        "links": [{"trace_id": k.trace_id, "span_id": k.span_id, "attributes": dict(k.attributes)} for k in span.links],
        "children": [_span(child, origin) for child in span.children],
    }


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)
