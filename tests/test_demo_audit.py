"""The path joined with the audit log: ``sources.audit`` reads the audit rows of a session's traces,
``path.attach_changes`` puts each under the span that made it, and the tree shows the diffs (the
JSON document, ``--format json``, lists them under each span).

Real writes through the example's audited models (``claims_triage.records``) into SQLite files,
with spans exported to a real store; and the whole demo on a scratch PostgreSQL database, where the
audit log's chain trigger is installed at start-up."""

from __future__ import annotations

import contextlib
import enum
import io
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console
from sqlalchemy import create_engine, select

from _audit_db import scratch_postgres
from _pathdata import provider
from claims_triage.records import AUDIT_LOG, ClaimsDatabase
from claims_triage.triage import Claim
from sessiontrace import semconv
from sessiontrace.cli import main
from sessiontrace.context import new_session_id, session
from sessiontrace.path import PathSpan, SessionPath, attach_changes, build_path, unmatched_change_events
from sessiontrace.records import StoredChange, StoredEvent, StoredSpan
from sessiontrace.render.json import dumps, path_document
from sessiontrace.render.tree import MAX_CHANGES, render_tree
from sessiontrace.sources.audit import AuditLogError, database_url, load_changes, shown
from sessiontrace.sources.store import load_session_path
from sessiontrace.store import SpanStore

MS = 1_000_000
TRACE, OTHER_TRACE = "a" * 32, "b" * 32
SESSION = "0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b"


def _render(path: SessionPath) -> str:
    page = io.StringIO()
    Console(width=250, no_color=True, file=page).print(render_tree(path))
    return page.getvalue()


# --- real writes: a store and an audit database ------------------------------------------------------


@dataclass
class Written:
    store: Path
    audit: Path
    session_id: str
    claim_id: str
    span_ids: dict[str, str]
    """Span name → span id (hex) of the spans that wrote."""


def _write(tmp_path: Path, *, values_in_spans: bool = False, user_id: str | None = None) -> Written:
    """A session's request validates and classifies a claim; another session's request, in its own
    trace, closes it (that change must not appear in the first session's path). With ``user_id``
    the first session is current while it writes, so its audit rows carry its id and that user."""
    store, audit = tmp_path / "spans.sqlite3", tmp_path / "audit.sqlite3"
    database = ClaimsDatabase(f"sqlite:///{audit}", record_values_in_spans=values_in_spans)
    tracer_provider, _ = provider(store, "intake")
    tracer = tracer_provider.get_tracer("tests.demo_audit")
    session_id, claim = new_session_id(), Claim("CL-0000ABCD", "P-1042", "motor", 2400.0, "Branch fell on the car.")
    stamp = {semconv.SESSION_ID: session_id}
    span_ids: dict[str, str] = {}
    try:
        with (
            session(id=session_id, user_id=user_id, open_span=False) if user_id else contextlib.nullcontext(),
            tracer.start_as_current_span("POST /claims", attributes=stamp),
        ):
            with tracer.start_as_current_span("step validate claim", attributes=stamp) as span:
                database.file(claim)
                span_ids[span.name] = format(span.get_span_context().span_id, "016x")
            with tracer.start_as_current_span("step classify severity", attributes=stamp) as span:
                database.update_claim(claim.id, severity="medium", confidence=0.4041)
                span_ids[span.name] = format(span.get_span_context().span_id, "016x")
        with tracer.start_as_current_span("close claim", attributes={semconv.SESSION_ID: new_session_id()}):
            database.update_claim(claim.id, status="closed")
    finally:
        tracer_provider.shutdown()
        database.close()
    return Written(store, audit, session_id, claim.id, span_ids)


def _path(written: Written) -> SessionPath:
    store = SpanStore(written.store)
    try:
        return load_session_path(store, written.session_id)
    finally:
        store.close()


class TestSourcesAudit:
    """``load_changes`` reads the audit rows of the given traces, in chain order, values decoded."""

    def test_reads_the_rows_of_the_traces(self, tmp_path: Path) -> None:
        written = _write(tmp_path)
        path = _path(written)
        changes = load_changes(str(written.audit), path.trace_ids)
        assert [(c.table_name, c.change_type, c.span_id) for c in changes] == [
            ("claims", "insert", written.span_ids["step validate claim"]),
            ("claims", "update", written.span_ids["step classify severity"]),
        ]
        inserted, classified = changes
        assert inserted.record_id == '{"id":"CL-0000ABCD"}'
        assert inserted.new_values is not None
        assert inserted.new_values["amount"] == "2400.00"  # a Decimal, kept exactly as text
        assert inserted.previous_values is None
        assert classified.changed_fields == ("severity", "confidence")
        assert classified.previous_values == {"severity": None, "confidence": None}
        assert classified.new_values == {"severity": "medium", "confidence": 0.4041}
        assert [c.seq for c in changes] == [1, 2]
        assert {c.trace_id for c in changes} == set(path.trace_ids)
        assert 0 < inserted.time_ns <= classified.time_ns
        assert inserted.source == "orm"
        # The other session's change is in the log, but in another trace.
        assert len(load_changes(f"sqlite:///{written.audit}", [*path.trace_ids, "c" * 32])) == 2
        assert load_changes(str(written.audit), []) == []

    def test_a_missing_file_is_an_error_and_is_not_created(self, tmp_path: Path) -> None:
        missing = tmp_path / "nowhere.sqlite3"
        with pytest.raises(AuditLogError, match="no audit database at"):
            load_changes(str(missing), [TRACE])
        assert not missing.exists()

    def test_a_database_without_an_audit_log_is_an_error(self, tmp_path: Path) -> None:
        empty = tmp_path / "empty.sqlite3"
        engine = create_engine(f"sqlite:///{empty}")
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        engine.dispose()
        with pytest.raises(AuditLogError, match="no audit log table audit_log"):
            load_changes(str(empty), [TRACE])

    def test_urls(self, tmp_path: Path) -> None:
        url = database_url(str(tmp_path / "a.sqlite3"))
        assert (url.drivername, url.database) == ("sqlite", str(tmp_path / "a.sqlite3"))
        assert database_url("postgresql://u:secret@h/db").drivername == "postgresql+psycopg"
        assert database_url("postgresql+psycopg2://u@h/db").drivername == "postgresql+psycopg2"
        assert "secret" not in shown(database_url("postgresql://u:secret@h/db"))
        assert shown(url) == str(tmp_path / "a.sqlite3")
        with pytest.raises(AuditLogError, match="not a database URL"):
            database_url("no such scheme://x")


# --- the join, on hand-made records ------------------------------------------------------------------


def _span(span_id: str, parent: str | None, name: str, start: int, events: tuple[StoredEvent, ...] = ()) -> StoredSpan:
    return StoredSpan(
        trace_id=TRACE,
        span_id=span_id * 16,
        parent_span_id=parent * 16 if parent else None,
        name=name,
        kind="INTERNAL",
        start_ns=start * MS,
        end_ns=(start + 10) * MS,
        service_name="intake",
        session_id=SESSION,
        attributes={semconv.SESSION_ID: SESSION},
        events=events,
    )


def _change(
    span_id: str | None,
    at: int,
    change_type: str = "update",
    *,
    seq: int | None = None,
    trace_id: str = TRACE,
    table: str = "claims",
    record_id: str = '{"id":"CL-1"}',
    fields: tuple[str, ...] = ("severity", "confidence"),
    previous: Mapping[str, Any] | None = None,
    new: Mapping[str, Any] | None = None,
) -> StoredChange:
    if change_type == "update":
        previous = {"severity": None, "confidence": None} if previous is None else previous
        new = {"severity": "high", "confidence": 0.85} if new is None else new
    return StoredChange(
        table_name=table,
        record_id=record_id,
        change_type=change_type,
        changed_fields=fields,
        previous_values=previous,
        new_values=new,
        time_ns=at * MS,
        trace_id=trace_id,
        span_id=span_id * 16 if span_id else None,
        seq=seq,
    )


def _event(at: int, change_type: str = "update", *, seq: int | None = None, **values: str) -> StoredEvent:
    attributes: dict[str, Any] = {
        semconv.DB_SYSTEM_NAME: "sqlite",
        semconv.DB_COLLECTION_NAME: "claims",
        semconv.DB_RECORD_ID: '{"id":"CL-1"}',
        semconv.DB_CHANGE_TYPE: change_type,
        semconv.DB_CHANGED_FIELDS: ("severity", "confidence"),
        **values,
    }
    if seq is not None:
        attributes[semconv.DB_AUDIT_SEQ] = seq
    return StoredEvent(semconv.DB_CHANGE_EVENT, at * MS, attributes)


def _two_steps(*events: StoredEvent) -> SessionPath:
    return build_path(
        SESSION,
        [
            _span("1", None, "workflow claims-triage", 0),
            _span("2", "1", "step classify severity", 1, events),
            _span("3", "1", "step reserve funds", 5),
        ],
    )


class TestAttachChanges:
    """Pure: each change goes under its span; the rest of its trace's changes are kept aside."""

    def test_changes_go_under_their_spans(self) -> None:
        path = _two_steps()
        first, second = _change("2", 2, seq=1), _change("2", 3, seq=2)
        lost = _change("9", 4, seq=3)  # its span was never stored
        elsewhere = _change("2", 4, seq=4, trace_id=OTHER_TRACE)
        assert not path.audit_joined
        assert attach_changes(path, [first, second, lost, elsewhere]) is path
        spans = {span.name: span for span in path.walk()}
        assert spans["step classify severity"].changes == (first, second)
        assert spans["step reserve funds"].changes == ()
        assert path.traces[0].unplaced_changes == [lost]
        assert path.audit_joined
        assert path.trace_ids == [TRACE]
        # Attaching again replaces.
        attach_changes(path, [second])
        assert spans["step classify severity"].changes == (second,)
        assert path.traces[0].unplaced_changes == []

    def test_change_events_without_an_audit_row_are_left_over(self) -> None:
        # PostgreSQL: the trigger numbers rows, so events carry no seq; each row accounts for one event.
        matched, rolled_back = _event(2), _event(3)
        path = attach_changes(_two_steps(matched, rolled_back), [_change("2", 2)])
        assert unmatched_change_events(_named(path, "step classify severity")) == [rolled_back]
        # SQLite: events know their seq, and only the row with that seq accounts for them.
        seven, eight = _event(2, seq=7), _event(3, seq=8)
        path = attach_changes(_two_steps(seven, eight), [_change("2", 3, seq=8)])
        assert unmatched_change_events(_named(path, "step classify severity")) == [seven]


def _named(path: SessionPath, name: str) -> PathSpan:
    (span,) = [span for span in path.walk() if span.name == name]
    return span


class TestRenderChanges:
    """The tree shows each change under its span, with the diff."""

    def test_audit_rows_render_with_their_diff(self) -> None:
        path = attach_changes(_two_steps(_event(2, seq=3)), [_change("2", 2, seq=3)])
        out = _render(path)
        line = next(line for line in out.splitlines() if "update claims" in line)
        assert (
            '• update claims {"id": "CL-1"}  +2.0 ms  severity: null → "high", confidence: null → 0.85  audit #3'
            in line
        )
        assert out.count("update claims") == 1, "the event the row accounts for is not shown twice"
        assert out.index("step classify severity") < out.index("update claims") < out.index("step reserve funds")

    def test_an_event_with_no_audit_row_is_flagged(self) -> None:
        path = attach_changes(_two_steps(_event(2)), [])
        assert "update claims" in _render(path)
        assert "(not in the audit log)" in _render(path)
        assert "(not in the audit log)" not in _render(_two_steps(_event(2)))

    def test_span_events_alone(self) -> None:
        fields_only = _render(_two_steps(_event(2)))
        assert '• update claims {"id": "CL-1"}  +2.0 ms  severity, confidence changed' in fields_only
        with_values = _render(
            _two_steps(
                _event(
                    2,
                    **{
                        semconv.DB_PREVIOUS_VALUES: '{"confidence":null,"severity":null}',
                        semconv.DB_NEW_VALUES: '{"confidence":0.85,"severity":"high"}',
                    },
                )
            )
        )
        assert 'severity: null → "high", confidence: null → 0.85' in with_values
        # Values cut (or redacted) into something that is not JSON: the fields are still named.
        cut = _render(_two_steps(_event(2, **{semconv.DB_NEW_VALUES: '{"severity":"hi…'})))
        assert "severity, confidence changed" in cut

    def test_inserts_and_deletes(self) -> None:
        long = "Tree branch fell on the car roof in the storm, and then it rained for a week."
        insert = _change(
            "2",
            2,
            "insert",
            fields=("id", "policy", "severity", "ssn", "description"),
            new={"id": "CL-1", "policy": "P-1042", "severity": None, "ssn": "[MASKED]", "description": long},
        )
        delete = _change(
            "3", 6, "delete", table="reserves", fields=("id", "amount"), previous={"id": "R-1", "amount": "9.50"}
        )
        delete = StoredChange(**{**_fields(delete), "record_id": '{"id":"R-1"}'})
        out = _render(attach_changes(_two_steps(), [insert, delete]))
        line = next(line for line in out.splitlines() if "insert claims" in line)
        # The key is shown once, NULLs are left out, masked values say so, long values are cut.
        assert line.endswith('policy: "P-1042", ssn: "[MASKED]", description: "Tree branch fell on the car roof in th…')
        assert "severity" not in line
        assert '• delete reserves {"id": "R-1"}  +6.0 ms  amount: "9.50"' in out

    def test_many_changes_are_cut(self) -> None:
        changes = [_change("2", 2, seq=n) for n in range(MAX_CHANGES + 5)]
        out = _render(attach_changes(_two_steps(), changes))
        assert out.count("update claims") == MAX_CHANGES
        assert "… 5 more changes" in out

    def test_changes_whose_span_is_not_stored(self) -> None:
        out = _render(attach_changes(_two_steps(), [_change("9", 4, seq=1)]))
        assert "changes whose span is not stored" in out
        assert out.index("changes whose span is not stored") < out.index("update claims")


def _fields(change: StoredChange) -> dict[str, Any]:
    return {name: getattr(change, name) for name in StoredChange.__dataclass_fields__}


# --- the command line -------------------------------------------------------------------------------


def _run(store: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--store", str(store), *args], env={"COLUMNS": "200", "NO_COLOR": "1"})
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return _write(tmp_path_factory.mktemp("written"))


class TestPathCommand:
    """``sessiontrace path <id> --audit-db URL`` joins the audit log into the tree."""

    def test_joins_the_audit_log(self, written: Written) -> None:
        code, out, err = _run(written.store, "path", written.session_id, "--audit-db", str(written.audit))
        assert code == 0, err
        validate = out[out.index("step validate claim") : out.index("step classify severity")]
        assert f'• insert claims {{"id": "{written.claim_id}"}}' in validate
        assert 'amount: "2400.00"' in validate
        assert "audit #1" in validate
        classify = out[out.index("step classify severity") :]
        assert 'severity: null → "medium", confidence: null → 0.4041  audit #2' in classify
        assert '"closed"' not in out, "another session's change"
        # Without the join: the spans' events, which carry no values here (the default).
        code, out, err = _run(written.store, "path", written.session_id)
        assert code == 0, err
        assert "severity, confidence changed" in out
        assert "audit #" in out  # SQLite: the writer knows the chain position and puts it on the event

    def test_sqlite_url_and_errors(self, written: Written, tmp_path: Path) -> None:
        code, out, _ = _run(written.store, "path", written.session_id, "--audit-db", f"sqlite:///{written.audit}")
        assert code == 0
        assert "audit #2" in out
        code, _, err = _run(written.store, "path", written.session_id, "--audit-db", str(tmp_path / "none.sqlite3"))
        assert code == 2
        assert "no audit database at" in err
        code, out, err = _run(
            written.store, "path", written.session_id, "--audit-db", str(tmp_path / "none.sqlite3"), "--format", "json"
        )
        assert (code, out) == (2, "")
        assert "no audit database at" in err


# --- the JSON document ------------------------------------------------------------------------------

_JOINED_KEYS = frozenset({"changes", "unplaced_changes", "in_audit_log"})
"""What the join adds to the JSON document, and only the join."""
_SPAN_KEYS = [
    "trace_id", "span_id", "parent_span_id", "name", "kind", "service", "scope", "session_id", "start_ns", "end_ns",
    "offset_ms", "duration_ms", "status", "orphan", "attributes", "events", "links", "children",
]  # fmt: skip


def _json(store: Path, *args: str) -> dict[str, Any]:
    code, out, err = _run(store, "path", *args, "--format", "json")
    assert code == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


def _spans(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every span of the document by span id."""
    found: dict[str, dict[str, Any]] = {}
    stack = [span for trace in document["traces"] for span in trace["spans"]]
    while stack:
        span = stack.pop()
        found[span["span_id"]] = span
        stack.extend(span["children"])
    return found


def _without_join(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_join(v) for k, v in value.items() if k not in _JOINED_KEYS}
    if isinstance(value, list):
        return [_without_join(v) for v in value]
    return value


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value).union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()


_CHANGE_KEYS = [
    "seq", "table", "record_id", "change_type", "changed_fields", "previous_values", "new_values", "time_ns",
    "offset_ms", "user_id", "session_id", "source", "trace_id", "span_id",
]  # fmt: skip
_CLAIM_COLUMNS = ["id", "policy", "line", "amount", "description", "severity", "confidence", "status", "reserve_id"]


@pytest.fixture(scope="module")
def written_by_user(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return _write(tmp_path_factory.mktemp("written_by_user"), user_id="adjuster-7")


class TestPathJson:
    """``sessiontrace path <id> --audit-db URL --format json``: the same join, machine-readable."""

    def test_each_change_is_under_the_span_that_made_it(self, written_by_user: Written) -> None:
        written = written_by_user
        document = _json(written.store, written.session_id, "--audit-db", str(written.audit))
        (trace,) = document["traces"]
        spans = _spans(document)
        validate = spans[written.span_ids["step validate claim"]]
        classify = spans[written.span_ids["step classify severity"]]
        (root,) = trace["spans"]
        assert root["name"] == "POST /claims"
        assert root["changes"] == []
        assert trace["unplaced_changes"] == []
        (inserted,) = validate["changes"]
        (classified,) = classify["changes"]
        common = {
            "user_id": "adjuster-7",
            "session_id": written.session_id,
            "source": "orm",
            "trace_id": trace["trace_id"],
        }
        for change, span in ((inserted, validate), (classified, classify)):
            # The audit timestamp (microseconds) falls within the span that wrote it.
            assert span["start_ns"] // 1000 * 1000 <= change["time_ns"] <= span["end_ns"]
            assert change["offset_ms"] == round((change["time_ns"] - document["session"]["start_ns"]) / 1e6, 3)
        assert {k: v for k, v in inserted.items() if k not in ("time_ns", "offset_ms")} == {
            "seq": 1,
            "table": "claims",
            "record_id": '{"id":"CL-0000ABCD"}',
            "change_type": "insert",
            "changed_fields": _CLAIM_COLUMNS,
            "previous_values": None,
            "new_values": {
                "amount": "2400.00",  # a Decimal, as the log keeps it
                "confidence": None,
                "description": "Branch fell on the car.",
                "id": "CL-0000ABCD",
                "line": "motor",
                "policy": "P-1042",
                "reserve_id": None,
                "severity": None,
                "status": "validated",
            },
            **common,
            "span_id": written.span_ids["step validate claim"],
        }
        assert {k: v for k, v in classified.items() if k not in ("time_ns", "offset_ms")} == {
            "seq": 2,
            "table": "claims",
            "record_id": '{"id":"CL-0000ABCD"}',
            "change_type": "update",
            "changed_fields": ["severity", "confidence"],
            "previous_values": {"severity": None, "confidence": None},
            "new_values": {"severity": "medium", "confidence": 0.4041},
            **common,
            "span_id": written.span_ids["step classify severity"],
        }
        assert list(inserted) == _CHANGE_KEYS
        assert inserted["time_ns"] < classified["time_ns"]
        # Only this session's two changes: the other session's "closed" is in another trace.
        assert sum(len(span["changes"]) for span in spans.values()) == 2
        # Every change event of the spans has its audit row.
        events = [e for span in spans.values() for e in span["events"] if e["name"] == semconv.DB_CHANGE_EVENT]
        assert [e["in_audit_log"] for e in events] == [True, True]
        assert [e for span in spans.values() for e in span["events"] if "in_audit_log" in e] == events

    def test_without_the_audit_log_the_document_is_unchanged(self, written_by_user: Written) -> None:
        written = written_by_user
        joined = _json(written.store, written.session_id, "--audit-db", f"sqlite:///{written.audit}")
        plain = _json(written.store, written.session_id)
        assert not _keys(plain) & _JOINED_KEYS
        assert _keys(joined) >= _JOINED_KEYS
        assert plain == _without_join(joined)
        for span in _spans(plain).values():
            assert list(span) == _SPAN_KEYS
        # The same holds for the document built in-process: path_document adds nothing unjoined.
        assert path_document(_path(written)) == plain

    def test_events_without_an_audit_row_and_changes_without_a_span(self) -> None:
        audited, rolled_back = _event(2, seq=3), _event(3, seq=4)
        lost = _change("9", 4, seq=5)  # its span was never stored
        path = attach_changes(_two_steps(audited, rolled_back), [_change("2", 2, seq=3), lost])
        document = json.loads(dumps(path_document(path)))
        spans = _spans(document)
        step = spans["2" * 16]
        assert [e["in_audit_log"] for e in step["events"]] == [True, False]
        assert step["changes"] == [
            {
                "seq": 3,
                "table": "claims",
                "record_id": '{"id":"CL-1"}',
                "change_type": "update",
                "changed_fields": ["severity", "confidence"],
                "previous_values": {"severity": None, "confidence": None},
                "new_values": {"severity": "high", "confidence": 0.85},
                "time_ns": 2 * MS,
                "offset_ms": 2.0,
                "user_id": None,
                "session_id": None,
                "source": "orm",
                "trace_id": TRACE,
                "span_id": "2" * 16,
            }
        ]
        assert spans["1" * 16]["changes"] == spans["3" * 16]["changes"] == []
        (unplaced,) = document["traces"][0]["unplaced_changes"]
        assert (unplaced["seq"], unplaced["span_id"], unplaced["offset_ms"]) == (5, "9" * 16, 4.0)
        # Unjoined, the same spans give the document of old.
        assert not _keys(path_document(_two_steps(audited, rolled_back))) & _JOINED_KEYS

    def test_values_json_cannot_encode_never_break_the_document(self) -> None:
        class Line(enum.Enum):
            MOTOR = "motor"

        filed = datetime(2024, 5, 1, 12, 30, 0, 123456, tzinfo=timezone.utc)
        ref = uuid.UUID("12345678-1234-5678-1234-567812345678")
        raw = _change(
            "2",
            2,
            fields=("amount", "filed_at", "due", "ref", "scan", "ratio", "line", "tags", "extra", "seen"),
            previous={"amount": Decimal("2400.00"), "filed_at": None},
            new={
                "amount": Decimal("2400.10"),
                "filed_at": filed,
                "due": date(2024, 6, 1),
                "ref": ref,
                "scan": b"\x00\xff",
                "ratio": float("nan"),
                "line": Line.MOTOR,
                "tags": ("a", Decimal("1.5")),
                "extra": {"at": filed, 7: _Opaque()},
                "seen": frozenset({"b", "a"}),
            },
        )
        document = path_document(attach_changes(_two_steps(), [raw]))
        strict = json.dumps(document, allow_nan=False)  # no default=: the document is plain JSON data
        assert json.loads(strict) == json.loads(dumps(document))
        (change,) = _spans(json.loads(strict))["2" * 16]["changes"]
        assert change["previous_values"] == {"amount": "2400.00", "filed_at": None}
        assert change["new_values"] == {
            "amount": "2400.10",
            "filed_at": "2024-05-01T12:30:00.123456+00:00",
            "due": "2024-06-01",
            "ref": "12345678-1234-5678-1234-567812345678",
            "scan": "AP8=",
            "ratio": "nan",
            "line": "MOTOR",
            "tags": ["a", "1.5"],
            "extra": {"at": "2024-05-01T12:30:00.123456+00:00", "7": "opaque"},
            "seen": ["a", "b"],
        }

    def test_the_command_prints_values_json_cannot_encode(
        self, written: Written, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A source that hands back Python values (Decimal, datetime) rather than the log's JSON.
        from sessiontrace.sources import audit

        span_id = written.span_ids["step classify severity"]
        filed = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)

        def load_changes(url: str, trace_ids: list[str]) -> list[StoredChange]:
            (trace_id,) = trace_ids
            return [
                StoredChange(
                    table_name="claims",
                    record_id='{"id":"CL-0000ABCD"}',
                    change_type="update",
                    changed_fields=("amount", "filed_at"),
                    previous_values={"amount": Decimal("2400.00"), "filed_at": None},
                    new_values={"amount": Decimal("2500.00"), "filed_at": filed},
                    time_ns=1,
                    trace_id=trace_id,
                    span_id=span_id,
                    seq=9,
                )
            ]

        monkeypatch.setattr(audit, "load_changes", load_changes)
        document = _json(written.store, written.session_id, "--audit-db", str(written.audit))
        (change,) = _spans(document)[span_id]["changes"]
        assert change["previous_values"] == {"amount": "2400.00", "filed_at": None}
        assert change["new_values"] == {"amount": "2500.00", "filed_at": "2024-05-01T12:30:00+00:00"}


class _Opaque:
    def __str__(self) -> str:
        return "opaque"


# --- the whole demo on PostgreSQL --------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with scratch_postgres("demo") as url:
        yield url


@pytest.fixture(scope="module")
def postgres_demo(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("pgdemo")
    store = home / "spans.sqlite3"
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")  # the psycopg 3 driver is chosen
    result = subprocess.run(
        [str(Path(sys.executable).parent / "sessiontrace"), "--store", str(store), "demo", "--audit-db", plain],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(Path(sys.executable).parent), "NO_COLOR": "1", "HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr
    return store, result.stdout


class TestDemoOnPostgres:
    """``sessiontrace demo --audit-db postgresql://...``: both services write there, the chain
    trigger (installed at start-up) chains their rows, and the paths show the changes."""

    def test_changes_show_under_their_steps(self, postgres_demo: tuple[Path, str]) -> None:
        store, out = postgres_demo
        assert not (store.parent / "claims-audit.sqlite3").exists(), "the SQLite default is not used"
        assert "audit log: postgresql+psycopg://postgres@127.0.0.1:5432/st_demo_" in out
        clear = out[out.index("clear-cut claim ") : out.index("ambiguous claim ")]
        classify = clear[clear.index("step classify severity") : clear.index("step reserve funds")]
        assert re.search(
            r'update claims \{"id": "CL-[0-9A-F]{8}"\} .* severity: null → "high", confidence: null', classify
        )
        assert re.search(r"audit #\d+", classify)
        assert re.search(r'• insert reserves \{"id": "R-[0-9A-F]{8}"\}', clear)
        ambiguous = out[out.index("ambiguous claim ") :]
        assert 'status: "in_review" → "reviewed"' in ambiguous
        assert "(not in the audit log)" not in out

    def test_rows_are_chained_by_the_trigger_and_carry_their_spans(
        self, postgres_demo: tuple[Path, str], postgres_url: str
    ) -> None:
        store, out = postgres_demo
        engine = create_engine(postgres_url)
        try:
            with engine.connect() as conn:
                rows = [dict(row) for row in conn.execute(select(AUDIT_LOG).order_by(AUDIT_LOG.c.seq)).mappings()]
                triggers = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'audit_log'::regclass AND NOT tgisinternal"
                ).scalar_one()
        finally:
            engine.dispose()
        assert triggers > 0
        assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
        assert all(row["row_hash"] and row["prev_hash"] for row in rows)
        assert {row["transaction_id"] is not None for row in rows} == {True}
        session_ids = re.findall(r"^session\.id: (\S+)$", out, re.MULTILINE)
        assert {row["session_id"] for row in rows} == set(session_ids)
        spans = SpanStore(store)
        try:
            names = {s.span_id: s.name for session_id in session_ids for s in spans.session_spans(session_id)}
        finally:
            spans.close()
        assert {names[row["span_id"]] for row in rows} == {
            "step validate claim",
            "step classify severity",
            "step human review",
            "step record reserve",
            "step reserve funds",
        }

    def test_path_joins_the_postgres_audit_log(self, postgres_demo: tuple[Path, str], postgres_url: str) -> None:
        store, out = postgres_demo
        ambiguous_id = re.findall(r"^session\.id: (\S+)$", out, re.MULTILINE)[1]
        code, tree, err = _run(store, "path", ambiguous_id, "--audit-db", postgres_url)
        assert code == 0, err
        review = tree[tree.index("step human review") : tree.index("step reserve funds")]
        assert 'status: "validated" → "in_review"' in review
        assert re.search(r'status: "in_review" → "reviewed".*audit #\d+', review)

    def test_path_json_joins_the_postgres_audit_log(self, postgres_demo: tuple[Path, str], postgres_url: str) -> None:
        store, out = postgres_demo
        ambiguous_id = re.findall(r"^session\.id: (\S+)$", out, re.MULTILINE)[1]
        document = _json(store, ambiguous_id, "--audit-db", postgres_url)
        spans = _spans(document)
        (review,) = [span for span in spans.values() if span["name"] == "step human review"]
        assert [
            (c["change_type"], c["table"], c["previous_values"]["status"], c["new_values"]["status"])
            for c in review["changes"]
        ] == [("update", "claims", "validated", "in_review"), ("update", "claims", "in_review", "reviewed")]
        seqs = [c["seq"] for c in review["changes"]]
        assert all(isinstance(seq, int) for seq in seqs)
        assert seqs == sorted(seqs)
        for change in review["changes"]:
            assert re.fullmatch(r'\{"id":"CL-[0-9A-F]{8}"\}', change["record_id"])
            assert "status" in change["changed_fields"]
            assert (change["session_id"], change["source"]) == (ambiguous_id, "orm")
            assert (change["trace_id"], change["span_id"]) == (review["trace_id"], review["span_id"])
        # Every change sits under the span that made it, and every change event has its row.
        for span in spans.values():
            assert {(c["trace_id"], c["span_id"]) for c in span["changes"]} <= {(span["trace_id"], span["span_id"])}
            assert all(e["in_audit_log"] for e in span["events"] if e["name"] == semconv.DB_CHANGE_EVENT)
        assert all(trace["unplaced_changes"] == [] for trace in document["traces"])
