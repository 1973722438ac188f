"""The PostgreSQL audit log against a real server: the chain trigger hashes exactly what
``chain.py`` hashes, concurrent writers never fork it, the database refuses to change it, and the
trigger mode audits raw SQL from any client. Each module works in its own scratch database."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from sessiontrace import session
from sessiontrace.audit import chain
from sessiontrace.audit.postgres import (
    AuditSetupError,
    _Names,
    audit_tables,
    ensure_partitions,
    install,
    instrument_engine,
    set_context,
    unaudit_tables,
    uninstrument_engine,
)
from sessiontrace.cli import main

SERVER = os.environ.get("SESSIONTRACE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
KEY = b"test-audit-key"
CHAIN_COLUMNS = (
    "seq, table_name, record_id, change_type, changed_fields::text, previous_values::text, new_values::text,"
    " session_id::text, changed_by_user_id, change_timestamp, trace_id, span_id, transaction_id, db_user, source,"
    " prev_hash, row_hash"
)
# What the ORM mode inserts on PostgreSQL: no seq, prev_hash or row_hash.
ORM_INSERT = (
    "INSERT INTO {table} (table_name, record_id, change_type, changed_fields, previous_values, new_values,"
    " session_id, changed_by_user_id, change_timestamp, source)"
    " VALUES (:t, :r, :c, CAST(:f AS jsonb), CAST(:p AS jsonb), CAST(:n AS jsonb), :s, :u, :ts, 'orm')"
)


# --- scratch database --------------------------------------------------------------------------------


def _admin() -> Engine:
    return create_engine(f"{SERVER}/test", isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A database of its own (other engineers share the server); roles are suffixed the same way."""
    name = f"st_pg_{secrets.token_hex(5)}"
    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture(scope="module")
def roles(database: str) -> Iterator[tuple[str, str]]:
    suffix = database.removeprefix("st_pg_")
    owner, app = f"st_owner_{suffix}", f"st_app_{suffix}"
    yield owner, app
    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        for role in (owner, app):
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    admin.dispose()


@pytest.fixture(scope="module")
def engine(database: str) -> Iterator[Engine]:
    eng = create_engine(f"{SERVER}/{database}")
    yield eng
    eng.dispose()


def _psycopg(database: str) -> psycopg.Connection[Any]:
    return psycopg.connect(f"{SERVER.replace('+psycopg', '')}/{database}")


def chain_rows(engine: Engine, audit: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(f"SELECT {CHAIN_COLUMNS} FROM {audit} ORDER BY seq")).mappings()]


def assert_chain(rows: Sequence[Mapping[str, Any]], key: bytes) -> None:
    """Gap-free seq from 1, each prev_hash the previous row_hash, each row_hash recomputed in Python."""
    previous = chain.GENESIS
    for expected_seq, row in enumerate(rows, start=1):
        assert row["seq"] == expected_seq
        assert row["prev_hash"] == previous, f"fork at seq {expected_seq}"
        assert row["row_hash"] == chain.link(previous, chain.line(row), key), f"hash differs at seq {expected_seq}"
        previous = row["row_hash"]


def orm_insert(conn: Any, audit: str, **values: Any) -> None:
    row = {
        "t": "claims",
        "r": '{"id":1}',
        "c": "insert",
        "f": '["amount"]',
        "p": None,
        "n": '{"amount": 1}',
        "s": None,
        "u": None,
        "ts": datetime.now(timezone.utc),
    }
    row.update(values)
    conn.execute(text(ORM_INSERT.format(table=audit)), row)


# --- the chain ---------------------------------------------------------------------------------------


class TestChain:
    """The chain trigger computes ``chain.link(prev, chain.line(row), key)`` byte for byte."""

    def test_rows_hash_exactly_as_chain_py(self, engine: Engine) -> None:
        install(engine, key=KEY, schema="s_chain")
        audit = "s_chain.audit_log"
        with engine.begin() as conn:  # several rows in one transaction: the cached head
            orm_insert(conn, audit)
            orm_insert(
                conn,
                audit,
                c="update",
                p='{"amount": 1, "note": "línea\\n\\u0001 \\"quoted\\""}',
                n='{"amount": 2.50, "note": null, "nested": {"b": [1, 2], "a": true}}',
                s="0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b",
                u="user-ü",
            )
            orm_insert(conn, audit, c="delete", n=None, p='{"x": 1}', ts=datetime(1969, 7, 20, 20, 17, 40, 123456))
        with engine.begin() as conn:  # a second transaction reads the head from the table
            orm_insert(conn, audit, ts=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=5))))
        rows = chain_rows(engine, audit)
        assert len(rows) == 4
        assert_chain(rows, KEY)
        assert {r["db_user"] for r in rows} == {"postgres"}
        assert rows[0]["transaction_id"] == rows[2]["transaction_id"] != rows[3]["transaction_id"]

    def test_a_savepoint_rollback_keeps_the_chain(self, engine: Engine) -> None:
        install(engine, key=KEY, schema="s_chain")
        audit = "s_chain.audit_log"
        with engine.begin() as conn:
            orm_insert(conn, audit)
            savepoint = conn.begin_nested()
            orm_insert(conn, audit)
            orm_insert(conn, audit)
            savepoint.rollback()  # rolls back the rows, the cached head and (if taken there) the lock
            orm_insert(conn, audit)
        assert_chain(chain_rows(engine, audit), KEY)

    def test_a_forged_head_cache_cannot_hide_anything(self, engine: Engine) -> None:
        """Any role can write the cache setting; what it gets is a visibly broken link, not a quiet one."""
        install(engine, key=KEY, schema="s_chain")
        setting = _Names(schema="s_chain", table="audit_log").head_setting
        with engine.connect() as conn:
            xid = conn.execute(text("SELECT pg_current_xact_id()::text")).scalar_one()
            conn.execute(text("SELECT set_config(:n, :v, true)"), {"n": setting, "v": f"{xid}:999:{'f' * 64}"})
            orm_insert(conn, "s_chain.audit_log")
            forged = conn.execute(text(f"SELECT {CHAIN_COLUMNS} FROM s_chain.audit_log ORDER BY seq DESC LIMIT 1"))
            row = dict(forged.mappings().one())
            conn.rollback()
        assert (row["seq"], row["prev_hash"]) == (1000, "f" * 64)  # a gap and a foreign link: verify reports it
        assert row["row_hash"] == chain.link(row["prev_hash"], chain.line(row), KEY)
        with engine.begin() as conn:  # another transaction: the setting is gone, the chain continues
            conn.execute(text("SELECT set_config(:n, :v, true)"), {"n": setting, "v": f"1:999:{'f' * 64}"})
            orm_insert(conn, "s_chain.audit_log")
        assert_chain(chain_rows(engine, "s_chain.audit_log"), KEY)

    def test_the_head_cache_is_used_within_a_transaction(self, engine: Engine) -> None:
        install(engine, key=KEY, schema="s_chain")
        with engine.begin() as conn:
            orm_insert(conn, "s_chain.audit_log")
            setting = _Names(schema="s_chain", table="audit_log").head_setting
            value = conn.execute(text("SELECT current_setting(:n)"), {"n": setting}).scalar_one()
            xid, seq, row_hash = value.split(":")
            last = conn.execute(text("SELECT seq, row_hash FROM s_chain.audit_log ORDER BY seq DESC LIMIT 1")).one()
            assert (int(seq), row_hash) == (last.seq, last.row_hash)
            assert xid == conn.execute(text("SELECT pg_current_xact_id()::text")).scalar_one()

    def test_without_a_key_the_chain_uses_the_empty_key(self, engine: Engine) -> None:
        install(engine, schema="s_nokey")
        with engine.begin() as conn:
            orm_insert(conn, "s_nokey.audit_log")
            orm_insert(conn, "s_nokey.audit_log")
        assert_chain(chain_rows(engine, "s_nokey.audit_log"), b"")

    def test_install_is_idempotent_and_keeps_the_key(self, engine: Engine) -> None:
        install(engine, key=KEY, schema="s_idem")
        with engine.begin() as conn:
            orm_insert(conn, "s_idem.audit_log")
        install(engine, schema="s_idem")  # no key: keeps the installed one
        install(engine, key=KEY, schema="s_idem")
        with engine.begin() as conn:
            orm_insert(conn, "s_idem.audit_log")
        assert_chain(chain_rows(engine, "s_idem.audit_log"), KEY)
        with pytest.raises(AuditSetupError, match="different key"):
            install(engine, key=b"another key", schema="s_idem")
        with pytest.raises(AuditSetupError, match="not partitioned"):
            install(engine, schema="s_idem", partition_by_month=True)

    def test_rows_written_by_a_colleague_in_psql_are_chained_too(self, engine: Engine, database: str) -> None:
        install(engine, key=KEY, schema="s_chain")
        psql(
            database,
            "INSERT INTO s_chain.audit_log (table_name, record_id, change_type, changed_fields, change_timestamp,"
            " source, seq, prev_hash, row_hash) VALUES ('claims', '{\"id\":9}', 'insert', '[]', now(), 'orm',"
            " 1, 'forged', 'forged')",
        )
        rows = chain_rows(engine, "s_chain.audit_log")
        assert rows[-1]["prev_hash"] != "forged"
        assert_chain(rows, KEY)


# --- concurrency -------------------------------------------------------------------------------------


class TestConcurrentWriters:
    """Eight connections appending at once: seq stays gap-free and the chain never forks."""

    WRITERS = 8
    TRANSACTIONS = 60
    ROWS_PER_TRANSACTION = 5

    def test_eight_writers_never_fork_the_chain(self, engine: Engine, database: str) -> None:
        install(engine, key=KEY, schema="s_conc")
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE s_conc.items (id bigserial PRIMARY KEY, writer int, n int)"))
        audit_tables(engine, ["s_conc.items"], schema="s_conc")

        errors: list[BaseException] = []
        start = threading.Barrier(self.WRITERS)

        def write(writer: int) -> None:
            try:
                with _psycopg(database) as conn:
                    start.wait()
                    for n in range(self.TRANSACTIONS):
                        with conn.transaction():
                            for _ in range(self.ROWS_PER_TRANSACTION):
                                conn.execute("INSERT INTO s_conc.items (writer, n) VALUES (%s, %s)", (writer, n))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(self.WRITERS)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        assert not errors, errors

        rows = chain_rows(engine, "s_conc.audit_log")
        expected = self.WRITERS * self.TRANSACTIONS * self.ROWS_PER_TRANSACTION
        assert len(rows) == expected
        assert_chain(rows, KEY)
        print(
            f"\n{self.WRITERS} writers: {expected} audited inserts in {elapsed:.2f}s"
            f" = {expected / elapsed:,.0f} changes/s"
        )


# --- append-only ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(engine: Engine, roles: tuple[str, str]) -> tuple[str, str]:
    owner, app = roles
    install(engine, key=KEY, schema="s_imm", owner_role=owner, app_role=app)
    install(engine, key=KEY, schema="s_imm", owner_role=owner, app_role=app)  # idempotent with roles too
    with engine.begin() as conn:
        orm_insert(conn, "s_imm.audit_log")
    return owner, app


class TestAppendOnly:
    """The database refuses UPDATE, DELETE and TRUNCATE of the log; the app role may only add and read."""

    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE s_imm.audit_log SET record_id = 'x'",
            "DELETE FROM s_imm.audit_log",
            "TRUNCATE s_imm.audit_log",
            "SELECT key FROM s_imm.audit_log_secret",
        ],
    )
    def test_app_role_cannot_change_the_log_or_read_the_key(
        self, engine: Engine, installed: tuple[str, str], statement: str
    ) -> None:
        with engine.connect() as conn:
            conn.execute(text(f'SET ROLE "{installed[1]}"'))
            with pytest.raises(DBAPIError, match="permission denied"):
                conn.execute(text(statement))

    def test_app_role_can_insert_and_select(self, engine: Engine, installed: tuple[str, str]) -> None:
        with engine.begin() as conn:
            conn.execute(text(f'SET LOCAL ROLE "{installed[1]}"'))
            orm_insert(conn, "s_imm.audit_log", r='{"id":2}')
            assert conn.execute(text("SELECT count(*) FROM s_imm.audit_log")).scalar_one() == 2
        rows = chain_rows(engine, "s_imm.audit_log")
        assert rows[-1]["db_user"] == "postgres"  # session_user: who connected, not the SET ROLE
        assert_chain(rows, KEY)

    @pytest.mark.parametrize("as_role", ["owner", "superuser"])
    @pytest.mark.parametrize(
        "statement",
        ["UPDATE s_imm.audit_log SET record_id = 'x'", "DELETE FROM s_imm.audit_log", "TRUNCATE s_imm.audit_log"],
    )
    def test_even_the_owner_hits_the_trigger(
        self, engine: Engine, installed: tuple[str, str], statement: str, as_role: str
    ) -> None:
        with engine.connect() as conn:
            if as_role == "owner":
                conn.execute(text(f'SET ROLE "{installed[0]}"'))
            with pytest.raises(DBAPIError, match="append-only"):
                conn.execute(text(statement))

    def test_objects_belong_to_the_owner(self, engine: Engine, installed: tuple[str, str]) -> None:
        with engine.connect() as conn:
            owners = conn.execute(
                text(
                    "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class"
                    " WHERE relnamespace = 's_imm'::regnamespace AND relkind IN ('r', 'p')"
                )
            ).scalars()
            functions = conn.execute(
                text(
                    "SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc WHERE pronamespace = 's_imm'::regnamespace"
                )
            ).scalars()
            assert set(owners) == set(functions) == {installed[0]}


# --- trigger mode ---------------------------------------------------------------------------------------

CLAIMS = """
CREATE TABLE s_trig.claims (
    id int PRIMARY KEY,
    amount numeric,
    note text,
    ssn text,
    updated_at timestamptz,
    session_id uuid,
    changed_by_user_id varchar(256),
    change_timestamp timestamptz
)
"""
AUDIT_ROWS = (
    "SELECT record_id, change_type, changed_fields, previous_values, new_values, session_id::text AS session_id,"
    " changed_by_user_id, trace_id, span_id, db_user, source FROM s_trig.audit_log WHERE table_name = :t ORDER BY seq"
)


def audit_rows(engine: Engine, table: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(AUDIT_ROWS), {"t": table}).mappings()]


def psql(database: str, sql: str) -> None:
    exe = shutil.which("psql")
    assert exe, "psql is needed for the other-client test"
    done = subprocess.run(
        [exe, "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def provider() -> TracerProvider:
    return TracerProvider()


@pytest.fixture(scope="module")
def claims(engine: Engine) -> str:
    install(engine, key=KEY, schema="s_trig")
    with engine.begin() as conn:
        conn.execute(text(CLAIMS))
    audit_tables(
        engine,
        ["s_trig.claims"],
        exclude={"s_trig.claims": ["updated_at"]},
        mask={"s_trig.claims": ["ssn"]},
        schema="s_trig",
    )
    return "s_trig.claims"


class TestTriggerMode:
    """AFTER triggers audit raw SQL from any client, attributed through the per-transaction settings."""

    def test_raw_sql_with_set_context_is_attributed(
        self, engine: Engine, database: str, claims: str, provider: TracerProvider
    ) -> None:
        tracer = provider.get_tracer("test")
        with session(user_id="alice", open_span=False) as current, tracer.start_as_current_span("change") as span:
            with _psycopg(database) as conn, conn.transaction():
                set_context(conn)
                conn.execute("INSERT INTO s_trig.claims (id, amount, note, ssn) VALUES (1, 10.5, 'new', '123-45')")
                conn.execute("UPDATE s_trig.claims SET amount = 12, ssn = '999-99', updated_at = now() WHERE id = 1")
                conn.execute("DELETE FROM s_trig.claims WHERE id = 1")
            context = span.get_span_context()
        rows = audit_rows(engine, claims)
        assert [r["change_type"] for r in rows] == ["insert", "update", "delete"]
        for row in rows:
            assert row["record_id"] == '{"id":1}'
            assert row["session_id"] == current.id
            assert row["changed_by_user_id"] == "alice"
            assert row["trace_id"] == format(context.trace_id, "032x")
            assert row["span_id"] == format(context.span_id, "016x")
            assert row["source"] == "trigger"
            assert row["db_user"] == "postgres"
        insert, update, delete = rows
        assert insert["changed_fields"] == ["amount", "id", "note", "ssn"]  # sorted; no stamp, no excluded
        assert insert["previous_values"] is None
        assert insert["new_values"]["ssn"] == "[MASKED]"
        assert "updated_at" not in insert["new_values"]
        assert "session_id" not in insert["new_values"]  # stamp columns: in the audit row's own columns
        assert update["changed_fields"] == ["amount", "ssn"]
        assert update["previous_values"]["amount"] == 10.5
        assert update["new_values"]["amount"] == 12
        assert update["previous_values"]["ssn"] == update["new_values"]["ssn"] == "[MASKED]"
        assert delete["new_values"] is None
        assert delete["previous_values"]["id"] == 1
        assert_chain(chain_rows(engine, "s_trig.audit_log"), KEY)

    def test_business_row_gets_the_session_columns(self, engine: Engine, database: str, claims: str) -> None:
        with session(user_id="bob", open_span=False) as current, _psycopg(database) as conn:
            with conn.transaction():
                set_context(conn)
                conn.execute("INSERT INTO s_trig.claims (id, amount) VALUES (2, 1)")
            with conn.transaction():  # a later change without context is nobody's session
                conn.execute("UPDATE s_trig.claims SET amount = 2 WHERE id = 2")
                moment = conn.execute("SELECT statement_timestamp()").fetchone()
        with engine.connect() as c:
            first = c.execute(text("SELECT session_id::text, changed_by_user_id FROM s_trig.claims WHERE id = 2")).one()
        assert moment is not None
        assert tuple(first) == (None, None)
        rows = audit_rows(engine, claims)[-2:]
        assert rows[0]["session_id"] == current.id
        assert rows[0]["changed_by_user_id"] == "bob"
        assert rows[1]["session_id"] is None

    def test_a_client_without_context_is_audited_with_its_db_user(
        self, engine: Engine, database: str, claims: str
    ) -> None:
        psql(database, "INSERT INTO s_trig.claims (id, amount, note) VALUES (3, 5, 'from psql')")
        row = audit_rows(engine, claims)[-1]
        assert row["record_id"] == '{"id":3}'
        assert row["session_id"] is None
        assert row["changed_by_user_id"] is None
        assert row["trace_id"] is None
        assert row["db_user"] == "postgres"

    def test_an_update_that_changes_nothing_is_not_audited(self, engine: Engine, claims: str) -> None:
        before = len(audit_rows(engine, claims))
        with engine.begin() as conn:
            conn.execute(text("UPDATE s_trig.claims SET amount = amount, note = note WHERE id = 3"))
            conn.execute(text("UPDATE s_trig.claims SET updated_at = now() WHERE id = 3"))  # excluded only
        assert len(audit_rows(engine, claims)) == before

    def test_a_malformed_session_id_never_fails_the_write(self, engine: Engine, claims: str) -> None:
        with engine.begin() as conn:
            conn.execute(text("SELECT set_config('sessiontrace.session_id', 'not-a-uuid', true)"))
            conn.execute(text("SELECT set_config('sessiontrace.trace_id', 'zz', true)"))
            conn.execute(text("INSERT INTO s_trig.claims (id, amount) VALUES (4, 1)"))
        row = audit_rows(engine, claims)[-1]
        assert row["record_id"] == '{"id":4}'
        assert row["session_id"] is None
        assert row["trace_id"] is None

    def test_instrumented_engine_attributes_raw_sql(
        self, engine: Engine, claims: str, provider: TracerProvider
    ) -> None:
        instrument_engine(engine)
        try:
            tracer = provider.get_tracer("test")
            with session(user_id="carol", open_span=False) as current, engine.begin() as conn:
                with tracer.start_as_current_span("first") as first:
                    conn.exec_driver_sql("INSERT INTO s_trig.claims (id, amount) VALUES (5, 1)")
                with tracer.start_as_current_span("second") as second:
                    conn.exec_driver_sql("UPDATE s_trig.claims SET amount = 2 WHERE id = 5")
        finally:
            uninstrument_engine(engine)
        insert, update = audit_rows(engine, claims)[-2:]
        assert insert["session_id"] == update["session_id"] == current.id
        assert insert["changed_by_user_id"] == "carol"
        assert insert["span_id"] == format(first.get_span_context().span_id, "016x")
        assert update["span_id"] == format(second.get_span_context().span_id, "016x")
        with engine.begin() as conn:  # uninstrumented: no context any more
            conn.exec_driver_sql("UPDATE s_trig.claims SET amount = 3 WHERE id = 5")
        assert audit_rows(engine, claims)[-1]["session_id"] is None

    def test_composite_and_text_keys(self, engine: Engine) -> None:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE s_trig.lines (claim text, line int, qty int, PRIMARY KEY (line, claim))"))
        audit_tables(engine, ["s_trig.lines"], schema="s_trig")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO s_trig.lines VALUES ('C-\"1\"', 2, 3)"))
        (row,) = audit_rows(engine, "s_trig.lines")
        assert row["record_id"] == json.dumps(
            {"line": 2, "claim": 'C-"1"'}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        unaudit_tables(engine, ["s_trig.lines"])
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO s_trig.lines VALUES ('C2', 1, 1)"))
        assert len(audit_rows(engine, "s_trig.lines")) == 1

    def test_columns_added_or_dropped_after_setup_are_still_recorded(self, engine: Engine, claims: str) -> None:
        # audit_tables() hands the trigger the table's columns; a schema change it has not seen
        # must still give exact changed_fields (the trigger falls back to reading the row).
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE s_trig.reshaped (id int PRIMARY KEY, amount int, note text)"))
        audit_tables(engine, ["s_trig.reshaped"], schema="s_trig")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO s_trig.reshaped VALUES (1, 1, 'a')"))
            conn.execute(text("ALTER TABLE s_trig.reshaped ADD COLUMN priority int"))
            conn.execute(text("UPDATE s_trig.reshaped SET priority = 2 WHERE id = 1"))
            conn.execute(text("UPDATE s_trig.reshaped SET priority = 2 WHERE id = 1"))  # no change: no row
            conn.execute(text("ALTER TABLE s_trig.reshaped DROP COLUMN note"))
            conn.execute(text("INSERT INTO s_trig.reshaped VALUES (2, 1, 1)"))
            conn.execute(text("UPDATE s_trig.reshaped SET amount = 3 WHERE id = 2"))
        rows = audit_rows(engine, "s_trig.reshaped")
        assert [(r["change_type"], r["changed_fields"]) for r in rows] == [
            ("insert", ["amount", "id", "note"]),
            ("update", ["priority"]),
            ("insert", ["amount", "id", "priority"]),
            ("update", ["amount"]),
        ]
        assert rows[1]["previous_values"]["priority"] is None
        assert rows[1]["new_values"]["priority"] == 2

    def test_a_table_without_a_primary_key_is_refused(self, engine: Engine, claims: str) -> None:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE s_trig.events (at timestamptz, what text)"))
        with pytest.raises(AuditSetupError, match=r"s_trig\.events has no primary key"):
            audit_tables(engine, ["s_trig.events"], schema="s_trig")

    def test_unknown_masked_column_is_refused(self, engine: Engine, claims: str) -> None:
        with pytest.raises(AuditSetupError, match="unknown columns: sssn"):
            audit_tables(engine, ["s_trig.claims"], mask={"s_trig.claims": ["sssn"]}, schema="s_trig")
        with pytest.raises(AuditSetupError, match="not audited"):
            audit_tables(engine, ["s_trig.claims"], exclude={"s_trig.other": ["x"]}, schema="s_trig")


# --- partitioning -----------------------------------------------------------------------------------------


class TestPartitionedLog:
    """Monthly partitions: rows land in their month, seq stays unique and the chain intact."""

    def test_partitions_and_chain(self, engine: Engine) -> None:
        install(engine, key=KEY, schema="s_part", partition_by_month=True)
        install(engine, key=KEY, schema="s_part", partition_by_month=True)  # idempotent
        now = datetime.now(timezone.utc)
        this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        next_month = (this_month + timedelta(days=32)).replace(day=1)
        with engine.connect() as conn:
            partitions = sorted(
                conn.execute(
                    text(
                        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                        " WHERE i.inhparent = 's_part.audit_log'::regclass"
                    )
                ).scalars()
            )
        assert f"audit_log_p{this_month:%Y%m}" in partitions
        assert len([p for p in partitions if p.startswith("audit_log_p")]) >= 4

        created = ensure_partitions(engine, months_ahead=5, schema="s_part")
        assert len(created) == 2
        assert ensure_partitions(engine, months_ahead=5, schema="s_part") == []

        with engine.begin() as conn:
            orm_insert(conn, "s_part.audit_log", ts=now)
            orm_insert(conn, "s_part.audit_log", ts=next_month + timedelta(hours=1))
            orm_insert(conn, "s_part.audit_log", ts=now)
        with engine.begin() as conn:
            orm_insert(conn, "s_part.audit_log", ts=next_month)
        with engine.connect() as conn:
            placed = conn.execute(text("SELECT seq, tableoid::regclass::text FROM s_part.audit_log ORDER BY seq")).all()
        assert [p for _, p in placed] == [
            f"s_part.audit_log_p{this_month:%Y%m}",
            f"s_part.audit_log_p{next_month:%Y%m}",
            f"s_part.audit_log_p{this_month:%Y%m}",
            f"s_part.audit_log_p{next_month:%Y%m}",
        ]
        assert_chain(chain_rows(engine, "s_part.audit_log"), KEY)

        with engine.connect() as conn:
            with pytest.raises(DBAPIError, match="append-only"):
                conn.execute(text(f"TRUNCATE s_part.audit_log_p{next_month:%Y%m}"))
            conn.rollback()
            with pytest.raises(DBAPIError, match="append-only"):
                conn.execute(text("UPDATE s_part.audit_log SET record_id = 'x'"))
            conn.rollback()
            with pytest.raises(DBAPIError, match="no partition"):
                orm_insert(conn, "s_part.audit_log", ts=now + timedelta(days=800))
            conn.rollback()
            seq_indexes = conn.execute(
                text(
                    "SELECT count(*) FROM pg_indexes"
                    " WHERE schemaname = 's_part' AND indexdef LIKE 'CREATE UNIQUE%(seq)'"
                )
            ).scalar_one()
            assert seq_indexes == 6

    def test_trigger_mode_into_a_partitioned_log(self, engine: Engine, database: str) -> None:
        install(engine, key=KEY, schema="s_part", partition_by_month=True)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE s_part.items (id int PRIMARY KEY, v text)"))
        audit_tables(engine, ["s_part.items"], schema="s_part")
        psql(database, "INSERT INTO s_part.items VALUES (1, 'a'); UPDATE s_part.items SET v = 'b'")
        assert_chain(chain_rows(engine, "s_part.audit_log"), KEY)


# --- command line ---------------------------------------------------------------------------------------


class TestCliSetup:
    """``sessiontrace audit setup``: validates its input (exit 2), never prints the key."""

    def _run(self, *args: str, env: Mapping[str, str] | None = None) -> Any:
        return CliRunner().invoke(main, ["audit", "setup", *args], env=dict(env or {}), catch_exceptions=False)

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("not a url", "not a database URL"),
            ("sqlite:///x.db", "must be a PostgreSQL URL"),
            ("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", "127.0.0.1:1/nowhere"),
        ],
    )
    def test_bad_urls_exit_2(self, url: str, message: str) -> None:
        result = self._run("--db", url)
        assert result.exit_code == 2
        assert message in result.output
        assert "Traceback" not in result.output

    def test_missing_key_variable_exits_2(self, database: str) -> None:
        result = self._run("--db", f"{SERVER}/{database}", "--key-env", "ST_NO_SUCH_VARIABLE")
        assert result.exit_code == 2
        assert "ST_NO_SUCH_VARIABLE" in result.output

    def test_setup_installs_and_audits_tables(self, engine: Engine, database: str) -> None:
        with engine.begin() as conn:
            conn.execute(text("CREATE SCHEMA IF NOT EXISTS s_cli"))
            conn.execute(text("CREATE TABLE s_cli.orders (id int PRIMARY KEY, total int)"))
        url = f"{SERVER.replace('postgres@', 'postgres:hunter2@').replace('+psycopg', '')}/{database}"
        args = ("--db", url, "--key-env", "ST_CLI_KEY", "--schema", "s_cli", "--tables", "s_cli.orders")
        result = self._run(*args, env={"ST_CLI_KEY": "cli-secret-key"})
        assert result.exit_code == 0, result.output
        assert "cli-secret-key" not in result.output
        assert "hunter2" not in result.output
        assert "s_cli.orders" in result.output
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO s_cli.orders VALUES (1, 5)"))
        assert_chain(chain_rows(engine, "s_cli.audit_log"), b"cli-secret-key")
        assert self._run(*args, env={"ST_CLI_KEY": "cli-secret-key"}).exit_code == 0  # re-runnable
        changed = self._run(*args, env={"ST_CLI_KEY": "another-key"})
        assert changed.exit_code == 2
        assert "different key" in changed.output
        assert "another-key" not in changed.output
