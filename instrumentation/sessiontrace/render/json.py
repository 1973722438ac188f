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

When the audit log was joined (``path.attach_changes``, ``sessiontrace path --audit-db``), and only
then, three keys are added: each span gets ``"changes": [change]``, the audit rows written under it
in chain order (``seq``); each trace gets ``"unplaced_changes": [change]``, its rows whose span is
not in the path (not exported, or lost); and each ``db.change`` event gets ``"in_audit_log":
bool``, false for a change event no audit row accounts for (rolled back, or written to another
database)::

    change = {
      "seq": int|null, "table": str, "record_id": str, "change_type": "insert"|"update"|"delete",
      "changed_fields": [str], "previous_values": {str: value}|null, "new_values": {str: value}|null,
      "time_ns": int, "offset_ms": float, "user_id": str|null, "session_id": str|null,
      "source": str, "trace_id": str|null, "span_id": str|null
    }

A span or a change whose stored columns could not be read (malformed JSON, a wrong type: a damaged
or hand-edited store or log) has one more key, ``"unreadable": {column: str|null}``, each column's
stored text (null for NULL); its field in the document then holds a safe fallback (``{}``, ``[]``,
null, for a time the nearest one known).

``record_id`` is the primary key as the log keeps it (canonical JSON text, ``{"id":"CL-1"}``);
values are as the log encodes them (a ``Decimal`` as a string, a datetime in ISO 8601, masked
columns ``"[MASKED]"``), and any other non-JSON value is converted the same way, never an error.

Sessions listing, ``"schema": "sessiontrace.sessions/1"``: ``{"schema", "sessions": [{"id",
"start_ns", "end_ns", "duration_ms", "span_count", "error_count", "user_id", "trigger_source",
"root_name", "services"}]}``, newest first.
"""

from __future__ import annotations

import base64
import enum
import json
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from typing import Any

from sessiontrace import semconv
from sessiontrace.path import PathSpan, SessionPath, unmatched_change_events
from sessiontrace.records import SessionSummary, StoredChange

PATH_SCHEMA = "sessiontrace.path/1"
SESSIONS_SCHEMA = "sessiontrace.sessions/1"


def path_document(path: SessionPath) -> dict[str, Any]:
    """The path as plain JSON-ready data (see the module docstring for the schema)."""
    origin = path.start_ns
    failure = path.first_failure()
    joined = path.audit_joined
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
                "spans": _spans(trace.roots, origin, joined),
                **({"unplaced_changes": [_change(c, origin) for c in trace.unplaced_changes]} if joined else {}),
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
    """Indented, key order kept (it is part of the schema's readability), UTF-8 as is; strict JSON
    (no ``NaN``: non-finite floats are text in the document). Written iteratively, without
    ``json.dumps``'s recursion, so a trace nested thousands of spans deep is written too; the text
    is the same as ``json.dumps(document, indent=2, ensure_ascii=False)``."""
    out: list[str] = []
    # Work items: text to write as is, or a value to write at an indentation depth.
    pending: list[str | tuple[Any, int]] = [(document, 0)]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        value, depth = item
        if isinstance(value, Mapping) and value:
            pairs = list(value.items())
            inner, outer = "\n" + "  " * (depth + 1), "\n" + "  " * depth
            work: list[str | tuple[Any, int]] = ["{"]
            for index, (key, member) in enumerate(pairs):
                work.append(("," if index else "") + inner + _leaf(str(key)) + ": ")
                work.append((member, depth + 1))
            work.append(outer + "}")
            pending.extend(reversed(work))
        elif isinstance(value, (list, tuple)) and value:
            inner, outer = "\n" + "  " * (depth + 1), "\n" + "  " * depth
            work = ["["]
            for index, member in enumerate(value):
                work.append(("," if index else "") + inner)
                work.append((member, depth + 1))
            work.append(outer + "]")
            pending.extend(reversed(work))
        else:
            out.append(_leaf(value))
    return "".join(out)


def _leaf(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, (list, tuple)):
        return "[]"
    return json.dumps(_plain(value), ensure_ascii=False, allow_nan=False)


def _spans(roots: Sequence[PathSpan], origin: int, audit_joined: bool) -> list[dict[str, Any]]:
    """The documents of ``roots`` and, nested, of their descendants; iterative, for any depth."""
    documents = [_span(root, origin, audit_joined) for root in roots]
    pending = list(zip(roots, documents, strict=True))
    while pending:
        span, document = pending.pop()
        for child in span.children:
            child_document = _span(child, origin, audit_joined)
            document["children"].append(child_document)
            pending.append((child, child_document))
    return documents


def _span(span: PathSpan, origin: int, audit_joined: bool = False) -> dict[str, Any]:
    """The span's document, with an empty ``children`` list (``_spans`` fills it)."""
    # With the audit log joined, each change event says whether an audit row accounts for it.
    unaudited = {id(e) for e in unmatched_change_events(span)} if audit_joined else set()
    document: dict[str, Any] = {
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
        "attributes": _values(span.attributes),
        "events": [
            {
                "name": e.name,
                "time_ns": e.time_ns,
                "offset_ms": _ms(e.time_ns - origin),
                "attributes": _values(e.attributes),
                **(
                    {"in_audit_log": id(e) not in unaudited}
                    if audit_joined and e.name == semconv.DB_CHANGE_EVENT
                    else {}
                ),
            }
            for e in span.events
        ],
        "links": [
            {"trace_id": k.trace_id, "span_id": k.span_id, "attributes": _values(k.attributes)} for k in span.links
        ],
    }
    if span.unreadable:
        document["unreadable"] = dict(span.unreadable)
    if audit_joined:
        document["changes"] = [_change(c, origin) for c in span.changes]
    document["children"] = []
    return document


def _change(change: StoredChange, origin: int) -> dict[str, Any]:
    return {
        "seq": change.seq,
        "table": change.table_name,
        "record_id": change.record_id,
        "change_type": change.change_type,
        "changed_fields": list(change.changed_fields),
        "previous_values": _values(change.previous_values),
        "new_values": _values(change.new_values),
        "time_ns": change.time_ns,
        "offset_ms": _ms(change.time_ns - origin),
        "user_id": change.user_id,
        "session_id": change.session_id,
        "source": change.source,
        "trace_id": change.trace_id,
        "span_id": change.span_id,
        **({"unreadable": dict(change.unreadable)} if change.unreadable else {}),
    }


def _values(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if values is None else {str(k): _plain(v) for k, v in values.items()}


def _plain(value: Any) -> Any:
    """``value`` as JSON data, encoded as the audit log encodes it (``audit.encoding``): the log's
    own values pass unchanged; a ``Decimal``, UUID or anything unknown becomes its text, a datetime
    ISO 8601, bytes base64, an enum member its name, NaN and infinity their text (never an error)."""
    if isinstance(value, enum.Enum):  # first: a str or int enum is an enum here too, as in the log
        return value.name
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):  # in a stable order
        return sorted((_plain(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    return str(value)


def _ms(ns: int) -> float:
    return round(ns / 1e6, 3)
