"""Reading back what someone else stored. A span store file and an audit log are input like any other:
another version, a hand edit, a superuser with the triggers off or a damaged disk can leave any value in
any column. Readers check each stored value's shape: a damaged value falls back to a safe one and its
stored text is kept (``unreadable``, shown in the tree and the JSON document), so the rest of the path
still shows; ``audit verify`` reports such a row as broken, naming its seq; ``audit revert`` refuses,
naming the row. Never a traceback, never a silently dropped value.

The hostile rows are written with SQL behind the readers' back: on SQLite directly (tables rebuilt
without NOT NULL where a NULL is the point), on PostgreSQL as the superuser with the append-only
triggers off (``session_replication_role = replica``), in a scratch database of this module.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanContext, TraceFlags
from sqlalchemy import Engine, MetaData, Numeric, String, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import sessiontrace
from _audit_db import reset_public_schema, scratch_postgres
from _pathdata import provider
from sessiontrace import semconv
from sessiontrace.audit import Audited, audit_log_table, enable_auditing
from sessiontrace.audit import postgres as audit_postgres
from sessiontrace.audit.revert import RevertError, revert_session
from sessiontrace.audit.verify import HASH_MISMATCH, SEQ_OUT_OF_RANGE, verify
from sessiontrace.cli import main
from sessiontrace.sources.audit import load_changes
from sessiontrace.store import SpanStore

SID = "0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b"
DAMAGED = "0000000000000002"  # the span the store tests damage; 1 is its parent, 3 its sibling
TOO_DEEP = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError
DEEP = "[" * 900 + "]" * 900  # loads, but would exhaust the renderers' recursion


def _loosen(conn: sqlite3.Connection, *tables: str) -> None:
    """Rebuild ``tables`` without NOT NULL: a store or log someone rebuilt by hand."""
    for table in tables:
        ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        conn.execute(f"ALTER TABLE {table} RENAME TO old_{table}")
        conn.execute(ddl.replace("NOT NULL", "").replace("WITHOUT ROWID", "").replace("PRIMARY KEY", "UNIQUE"))
        conn.execute(f"INSERT INTO {table} SELECT * FROM old_{table}")
        conn.execute(f"DROP TABLE old_{table}")
    conn.commit()


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


# --- the span store ------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Three spans of session ``SID`` in one trace: 1 the root, 2 and 3 its children."""
    path = tmp_path / "spans.sqlite3"
    spans = []
    for i in range(1, 4):
        ctx = SpanContext(0xABC, i, is_remote=False, trace_flags=TraceFlags(1))
        parent = SpanContext(0xABC, 1, is_remote=False) if i > 1 else None
        spans.append(
            ReadableSpan(f"op{i}", context=ctx, parent=parent, attributes={semconv.SESSION_ID: SID, "k": "v"},
                         events=[Event("ev", {"a": 1}, timestamp=1_500)], start_time=1_000 + i, end_time=2_000 + i)
        )  # fmt: skip
    with SpanStore(path) as written:
        written.write(spans)
    conn = sqlite3.connect(path)
    _loosen(conn, "spans", "sessions", "resources")
    conn.close()
    return path


def _damage(path: Path, sql: str, *params: Any) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def _spans(path: Path) -> dict[str, Any]:
    with SpanStore(path, readonly=True) as read:
        return {span.span_id: span for span in read.session_spans(SID)}


class TestSpanStore:
    @pytest.mark.parametrize(
        ("column", "stored"),
        [
            ("attributes", "{not json"),
            ("attributes", "[1, 2]"),
            ("attributes", '"a string"'),
            ("attributes", None),
            ("attributes", b"\xff\x00"),
            ("attributes", '{"a": ' + TOO_DEEP + "}"),
            ("attributes", '{"a": ' + DEEP + "}"),
            ("events", "[{"),
            ("events", '{"name": "x"}'),
            ("events", '["x"]'),
            ("events", '[{"name": "x"}]'),
            ("events", '[{"name": 5, "time_ns": "x", "attributes": [1]}]'),
            ("events", "7"),
            ("links", "nope"),
            ("links", '[{"trace_id": 1}]'),
        ],
    )
    def test_a_damaged_json_column_keeps_its_text_and_the_path_shows(
        self, store: Path, column: str, stored: object
    ) -> None:
        _damage(store, f"UPDATE spans SET {column} = ? WHERE span_id = ?", stored, DAMAGED)

        spans = _spans(store)

        assert set(spans) == {"0000000000000001", DAMAGED, "0000000000000003"}
        damaged = spans[DAMAGED]
        expected = stored.decode("utf-8", "replace") if isinstance(stored, bytes) else stored
        assert damaged.unreadable == {column: expected}
        assert (damaged.name, damaged.start_ns) == ("op2", 1_002)  # the rest of the span is read
        fallback = {"attributes": {}, "events": (), "links": ()}[column]
        assert getattr(damaged, column) == fallback
        assert spans["0000000000000003"].unreadable == {}
        assert spans["0000000000000003"].events[0].attributes == {"a": 1}

    @pytest.mark.parametrize(
        ("column", "stored", "field", "read", "kept"),
        [
            ("name", None, "name", "", None),
            ("name", b"op\xff", "name", "op\ufffd", "op\ufffd"),
            ("kind", None, "kind", "INTERNAL", None),
            ("kind", "x", "kind", "x", "x"),
            ("status_code", None, "status_code", "UNSET", None),
            ("status_code", "ERROR", "status_code", "ERROR", "ERROR"),
            ("start_ns", None, "start_ns", 2_002, None),  # its end, the best time known
            ("start_ns", "abc", "start_ns", 2_002, "abc"),
            ("start_ns", 1.5e300, "start_ns", 2_002, "1.5e+300"),
            ("end_ns", "x", "end_ns", None, "x"),
            ("service_name", b"svc", "service_name", "svc", "svc"),  # a number would be stored as text
            ("session_id", b"\x00", "session_id", "\x00", "\x00"),
        ],
    )
    def test_a_wrong_typed_column_falls_back_and_is_marked(
        self, store: Path, column: str, stored: object, field: str, read: object, kept: str | None
    ) -> None:
        _damage(store, f"UPDATE spans SET {column} = ? WHERE span_id = ?", stored, DAMAGED)

        damaged = _spans(store)[DAMAGED]

        assert getattr(damaged, field) == read
        assert isinstance(damaged.start_ns, int)
        assert damaged.unreadable == {column: kept}

    def test_text_that_is_not_utf8_is_read_with_replacement_characters(self, store: Path) -> None:
        _damage(store, "UPDATE spans SET name = CAST(X'6f7032ff' AS TEXT) WHERE span_id = ?", DAMAGED)

        assert _spans(store)[DAMAGED].name == "op2\ufffd"

    @pytest.mark.parametrize(
        "sql",
        [
            "UPDATE sessions SET services = '{'",
            "UPDATE sessions SET services = NULL",
            "UPDATE sessions SET services = '[1, null, [2], \"web\"]'",
            "UPDATE sessions SET first_start_ns = NULL, span_count = 'x', error_count = NULL",
            "UPDATE sessions SET last_end_ns = 'later', user_id = X'ff'",
        ],
    )
    def test_a_damaged_session_summary_is_listed(self, store: Path, sql: str) -> None:
        _damage(store, sql)

        with SpanStore(store, readonly=True) as read:
            (summary,) = read.sessions()

        assert summary.session_id == SID
        assert all(isinstance(n, int) for n in (summary.first_start_ns, summary.last_end_ns, summary.span_count))
        assert all(isinstance(s, str) for s in summary.services)
        for fmt in ("table", "json"):
            code, _, err = _run("sessions", "--store", str(store), "--format", fmt)
            assert code == 0, err

    def test_the_cli_shows_a_damaged_span_and_keeps_its_stored_text(self, store: Path) -> None:
        _damage(store, "UPDATE spans SET attributes = '[1]', events = '{', kind = NULL WHERE span_id = ?", DAMAGED)

        code, tree, err = _run("path", SID, "--store", str(store))
        assert code == 0, err
        assert "op2" in tree
        assert "op3" in tree
        assert "unreadable in the store: kind, attributes, events" in tree

        code, out, err = _run("path", SID, "--store", str(store), "--format", "json")
        assert code == 0, err
        (root,) = json.loads(out)["traces"][0]["spans"]
        damaged = next(child for child in root["children"] if child["span_id"] == DAMAGED)
        assert damaged["unreadable"] == {"kind": None, "attributes": "[1]", "events": "{"}
        assert "unreadable" not in root  # only a damaged span has the key


# --- the audit log -------------------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class HrClaim(Audited, Base):
    __tablename__ = "hr_claim"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(100))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))


AUDIT = audit_log_table(MetaData())
AuditedSession = type("HostileAuditedSession", (Session,), {})
enable_auditing(AuditedSession, audit_table=AUDIT)


class Log:
    """A session's changes in an audit log, its spans in a store: seq 1 inserts claim 1, seq 2
    updates it (the row the tests damage), seq 3 inserts claim 2."""

    def __init__(self, engine: Engine, store: Path) -> None:
        self.engine, self.url, self.store = engine, engine.url.render_as_string(hide_password=False), store
        tp, exporter = provider(store, "claims")
        tracer = tp.get_tracer("tests.hostile")
        maker = sessionmaker(engine, class_=AuditedSession)
        with (
            sessiontrace.session(user_id="u-1", open_span=False) as scope,
            tracer.start_as_current_span("save", attributes={semconv.SESSION_ID: scope.id}) as span,
        ):
            with maker.begin() as orm:
                orm.add(HrClaim(id=1, title="hail", amount=Decimal("1.10")))
            with maker.begin() as orm:
                orm.get_one(HrClaim, 1).title = "hail, revised"
            with maker.begin() as orm:
                orm.add(HrClaim(id=2, title="flood", amount=None))
        exporter.shutdown()
        self.session_id = scope.id
        self.trace_id = format(span.get_span_context().trace_id, "032x")

    def damage(self, assignments: str) -> None:
        """Set ``assignments`` on seq 2, around the append-only guard where there is one."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text(f"UPDATE audit_log SET {assignments} WHERE seq = 2"))


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with scratch_postgres("hostile") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Log]:
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'app.sqlite3'}")
        AUDIT.create(engine)
        with engine.begin() as conn:  # as a hand-rebuilt log may be: no NOT NULL to stop a NULL
            raw = conn.connection.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            _loosen(raw, "audit_log")
    else:
        url = request.getfixturevalue("postgres_url")
        reset_public_schema(url)
        engine = create_engine(url)
        audit_postgres.install(engine)
        with engine.begin() as conn:  # the superuser's way to a NULL: drop the constraint
            for column in ("record_id", "change_type", "changed_fields", "change_timestamp", "table_name"):
                conn.execute(text(f"ALTER TABLE audit_log ALTER COLUMN {column} DROP NOT NULL"))
    Base.metadata.create_all(engine)
    yield Log(engine, tmp_path / "spans.sqlite3")
    engine.dispose()


# Wrong shapes a reader must survive, on either database: (assignment, the column it damages).
WRONG_SHAPES = [
    ("changed_fields = '{\"a\": 1}'", "changed_fields"),
    ("changed_fields = '\"title\"'", "changed_fields"),
    ("changed_fields = '5'", "changed_fields"),
    ("changed_fields = '[1, [2], {\"a\": 3}]'", "changed_fields"),
    ("changed_fields = NULL", "changed_fields"),
    ("changed_fields = '" + TOO_DEEP[:10_000] + TOO_DEEP[-10_000:] + "'", "changed_fields"),
    ("previous_values = '[1, 2]'", "previous_values"),
    ("previous_values = '\"abc\"'", "previous_values"),
    ("new_values = '5'", "new_values"),
    ('new_values = \'{"title": ' + DEEP + "}'", "new_values"),
    ("record_id = NULL", "record_id"),
    ("record_id = 'CL-1'", "record_id"),
    ('record_id = \'{"id": ' + DEEP + "}'", "record_id"),
    ("change_type = NULL", "change_type"),
]
SQLITE_ONLY = [  # what PostgreSQL's types refuse to store
    ("changed_fields = '[tit'", "changed_fields"),
    ("previous_values = '{'", "previous_values"),
    ("new_values = X'ff00'", "new_values"),
    ("change_timestamp = 'not a date'", "change_timestamp"),
    ("change_timestamp = '0000-01-01 00:00:00'", "change_timestamp"),
    ("change_timestamp = NULL", "change_timestamp"),
    ("session_id = 'zz'", "session_id"),
    ("seq = 2.5", "seq"),
]
POSTGRES_ONLY = [
    ("change_timestamp = 'infinity'", "change_timestamp"),
    ("change_timestamp = '-infinity'", "change_timestamp"),
]


def _shapes(log: Log) -> list[tuple[str, str]]:
    return WRONG_SHAPES + (SQLITE_ONLY if log.engine.dialect.name == "sqlite" else POSTGRES_ONLY)


class TestAuditJoin:
    def test_every_wrong_shape_is_read_and_its_stored_text_kept(self, log: Log) -> None:
        with log.engine.begin() as conn:
            conn.execute(text("CREATE TABLE pristine AS SELECT * FROM audit_log"))
        for assignment, column in _shapes(log):
            log.damage(assignment)

            changes = load_changes(log.url, [log.trace_id])

            assert len(changes) == 3, assignment
            damaged = next(c for c in changes if c.seq in (2, None) or column in c.unreadable)
            assert column in damaged.unreadable, assignment
            assert isinstance(damaged.time_ns, int)
            assert isinstance(damaged.changed_fields, tuple)
            assert all(isinstance(f, str) for f in damaged.changed_fields)
            assert damaged.previous_values is None or isinstance(damaged.previous_values, dict)
            assert damaged.new_values is None or isinstance(damaged.new_values, dict)
            assert isinstance(damaged.record_id, str)
            assert isinstance(damaged.change_type, str)
            if column == "change_timestamp":  # placed at the time of the change before it
                assert damaged.time_ns == changes[0].time_ns
            for fmt in ("tree", "json"):
                args = ("path", log.session_id, "--store", str(log.store), "--audit-db", log.url, "--format", fmt)
                code, out, err = _run(*args)
                assert code == 0, (assignment, err)
                assert "unreadable in the audit log" in out if fmt == "tree" else '"unreadable"' in out
            with log.engine.begin() as conn:  # undamaged again, for the next shape
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SET LOCAL session_replication_role = replica"))
                conn.execute(text("DELETE FROM audit_log"))
                conn.execute(text("INSERT INTO audit_log SELECT * FROM pristine"))

    def test_an_unknown_change_type_and_a_missing_trace_are_shown_as_stored(self, log: Log) -> None:
        log.damage("change_type = 'upsert', span_id = NULL")

        code, out, err = _run("path", log.session_id, "--store", str(log.store), "--audit-db", log.url)

        assert code == 0, err
        assert "upsert hr_claim" in out
        assert "changes whose span is not stored" in out


class TestAuditVerify:
    @pytest.mark.parametrize(
        "assignment",
        ["change_timestamp = 'not a date'", "change_timestamp = '0000-01-01 00:00:00'", "change_timestamp = NULL"],
    )
    def test_an_unreadable_timestamp_is_a_modified_row(self, tmp_path: Path, assignment: str) -> None:
        log = _sqlite_log(tmp_path)
        log.damage(assignment)

        report = verify(log.engine)

        assert report.broken is not None
        assert (report.broken.seq, report.broken.reason) == (2, HASH_MISMATCH)

    def test_a_seq_that_is_not_a_whole_number_is_out_of_the_chain(self, tmp_path: Path) -> None:
        log = _sqlite_log(tmp_path)
        log.damage("seq = 2.5")

        report = verify(log.engine)

        assert report.broken is not None
        assert report.broken.reason == SEQ_OUT_OF_RANGE
        assert "2.5" in report.broken.detail
        code, _, err = _run("audit", "verify", "--db", log.url)
        assert code == 1
        assert "2.5" in err

    @pytest.mark.parametrize("moment", ["infinity", "-infinity"])
    def test_an_infinite_timestamp_on_postgres_is_a_modified_row(
        self, postgres_url: str, tmp_path: Path, moment: str
    ) -> None:
        log = _postgres_log(postgres_url, tmp_path)
        log.damage(f"change_timestamp = '{moment}'")

        code, _, err = _run("audit", "verify", "--db", log.url)

        assert code == 1, err
        assert "broken at seq 2: hash mismatch" in err


def _sqlite_log(tmp_path: Path) -> Log:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.sqlite3'}")
    AUDIT.create(engine)
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        _loosen(raw, "audit_log")
    Base.metadata.create_all(engine)
    return Log(engine, tmp_path / "spans.sqlite3")


def _postgres_log(url: str, tmp_path: Path) -> Log:
    reset_public_schema(url)
    engine = create_engine(url)
    audit_postgres.install(engine)
    Base.metadata.create_all(engine)
    return Log(engine, tmp_path / "spans.sqlite3")


LATER_CHANGE = """
INSERT INTO audit_log (seq, table_name, record_id, change_type, changed_fields, previous_values, new_values,
                       session_id, change_timestamp, source)
SELECT 4, table_name, record_id, change_type, changed_fields, new_values, previous_values, 'zz', change_timestamp,
       source
  FROM audit_log WHERE seq = 2
"""


class TestAuditRevert:
    @pytest.mark.parametrize(
        ("assignment", "named"),
        [
            ("changed_fields = '5'", "changed_fields"),
            ("changed_fields = 'null'", "changed_fields"),
            ("changed_fields = '[1, [2]]'", "changed_fields"),
            ("changed_fields = '[tit'", "changed_fields"),
            ("changed_fields = '" + TOO_DEEP + "'", "changed_fields"),
            ("previous_values = '[1, 2]'", "previous_values"),
            ("previous_values = '\"abc\"'", "previous_values"),
            ("record_id = 'CL-1'", "record_id"),
            ("record_id = '[1, 2]'", "record_id"),
            ("record_id = NULL", "record_id"),
            ("change_type = 'upsert'", "change_type"),
            ("change_type = NULL", "change_type"),
            ("table_name = 'gone_table'", "gone_table"),
            ("table_name = 'hr\x1b[2Jclaim'", "'hr\\x1b[2Jclaim'"),  # escaped, not sent to the terminal
        ],
    )
    def test_a_damaged_row_of_the_session_is_refused_by_name(self, tmp_path: Path, assignment: str, named: str) -> None:
        log = _sqlite_log(tmp_path)
        log.damage(assignment)

        for dry_run in (True, False):
            with pytest.raises(RevertError, match=f"seq 2.*{re.escape(named)}"):
                revert_session(log.engine, log.session_id, dry_run=dry_run)
        code, _, err = _run("audit", "revert", log.session_id, "--db", log.url, "--dry-run")
        assert code == 4
        assert "seq 2" in err
        assert named in err
        with sessionmaker(log.engine)() as orm:  # nothing was changed
            assert orm.get_one(HrClaim, 1).title == "hail, revised"

    def test_a_damaged_later_change_by_another_session_is_refused_by_name(self, tmp_path: Path) -> None:
        log = _sqlite_log(tmp_path)
        log.damage("session_id = NULL, changed_fields = '{\"title\": 1}'")  # now another session's change

        with pytest.raises(RevertError, match=r"seq 2.*changed_fields"):
            revert_session(log.engine, log.session_id, dry_run=True)

    def test_a_later_change_by_a_session_id_that_is_no_uuid_is_a_conflict(self, tmp_path: Path) -> None:
        log = _sqlite_log(tmp_path)
        with log.engine.begin() as conn:  # seq 4: someone else's later change to the same field
            conn.execute(text(LATER_CHANGE))

        plan = revert_session(log.engine, log.session_id, dry_run=True)

        assert [(c.field, c.later_seq, c.later_session) for c in plan.conflicts] == [("title", 4, "zz")]

    def test_stored_text_in_the_plan_does_not_reach_the_terminal(self, tmp_path: Path) -> None:
        log = _sqlite_log(tmp_path)
        with log.engine.begin() as conn:  # a later change by a "session" whose id clears the screen
            conn.execute(text(LATER_CHANGE.replace("'zz'", "'z\x1b[2Jz'")))

        code, _, err = _run("audit", "revert", log.session_id, "--db", log.url, "--dry-run")

        assert code == 3
        assert "then by session z\\x1b[2Jz at seq 4" in err
        assert "\x1b" not in err

    def test_a_damaged_row_on_postgres_is_refused_by_name(self, postgres_url: str, tmp_path: Path) -> None:
        log = _postgres_log(postgres_url, tmp_path)
        log.damage("previous_values = '[1]'")

        code, _, err = _run("audit", "revert", log.session_id, "--db", log.url, "--dry-run")

        assert code == 4, err
        assert "seq 2" in err
        assert "previous_values" in err
