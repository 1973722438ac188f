"""Reverting trigger-mode changes on real PostgreSQL, column type by column type: the value the
revert writes back is the value the row had, to the last digit and byte (compared as the server
renders it), and columns the database computes are left to it: ``GENERATED ... STORED`` columns
are recomputed, a ``GENERATED ALWAYS`` identity is re-inserted with its recorded value."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Column, Computed, Engine, Identity, Integer, MetaData, Table, create_engine, text

from _audit_db import scratch_postgres
from sessiontrace.audit import postgres as audit_postgres
from sessiontrace.audit.revert import revert_session
from sessiontrace.audit.verify import verify

KEY = b"revert-types-chain-key"


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with scratch_postgres("revtypes") as url:
        eng = create_engine(url)
        audit_postgres.install(eng, key=KEY)
        yield eng
        eng.dispose()


def audited_table(engine: Engine, name: str, ddl: str, *rows: str) -> None:
    """Create ``name`` (``ddl`` is its column list), insert ``rows`` (VALUES lists), then audit it."""
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {name} ({ddl})"))
        for row in rows:
            conn.execute(text(f"INSERT INTO {name} VALUES ({row})"))
    audit_postgres.audit_tables(engine, [name])


def as_session(engine: Engine, *statements: str) -> str:
    """Run ``statements`` in one transaction attributed to a new session; return its id."""
    session_id = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(text("SELECT set_config('sessiontrace.session_id', :s, true)"), {"s": session_id})
        for statement in statements:
            conn.execute(text(statement))
    return session_id


def rendered(engine: Engine, query: str) -> list[tuple[str | None, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(query))]


# (column type, the value the row had, the value a session set); each renders back as the server wrote it
CASES = [
    ("numeric[]", "'{12345678901234567.89, 0.10, 3}'", "'{0}'"),
    ("numeric[]", "'{{1.10, 2}, {3, 4.000}}'", "NULL"),
    ("numeric[]", "'{NaN, 1e-7}'", "'{}'"),
    (
        "jsonb",
        """'{"balance": 12345678901234567.89, "rate": 1.10, "list": [1, 2.50, {"tiny": 0.0000001}],"""
        """ "text": "ü\\n\\"", "yes": true, "none": null, "big": 1e30}'""",
        "'{}'",
    ),
    ("jsonb", "'[0.10, -0.5, 100]'", "'1'"),
    ("jsonb", "'1.10'", "'[]'"),
    ("json", """'{"rate": 1.10, "balance": 12345678901234567.89}'""", "'{}'"),
    ("bytea[]", "ARRAY['\\x0102'::bytea, '\\x'::bytea, NULL]", "ARRAY['\\xff'::bytea]"),
    ("bytea[]", "ARRAY[ARRAY['\\x00'::bytea], ARRAY['\\xff'::bytea]]", "NULL"),
    ("float8[]", "'{0.1, 1e-7, NaN, -Infinity}'", "'{1}'"),
    ("timestamptz", "'infinity'", "'2000-01-01 00:00:00+00'"),
    ("timestamptz", "'2024-01-02 03:04:05.123456+00'", "'-infinity'"),
    ("timestamp", "'-infinity'", "'2000-01-01'"),
    ("date", "'infinity'", "'2000-01-01'"),
    ("date", "'0044-03-15 BC'", "'2000-01-01'"),
    ("timestamptz[]", "'{infinity, 2024-01-02 03:04:05.123456+00}'", "'{}'"),
]


@pytest.mark.parametrize("change", ["update", "delete"])
@pytest.mark.parametrize(
    ("index", "column_type", "before", "after"),
    [pytest.param(i, *case, id=f"{case[0]}-{i}") for i, case in enumerate(CASES)],
)
def test_a_reverted_value_is_the_value_the_row_had(
    engine: Engine, change: str, index: int, column_type: str, before: str, after: str
) -> None:
    name = f"t_{change}_{index}"
    audited_table(engine, name, f"id int PRIMARY KEY, v {column_type}", f"1, {before}")
    original = rendered(engine, f"SELECT id::text, v::text FROM {name}")
    statement = f"UPDATE {name} SET v = {after}" if change == "update" else f"DELETE FROM {name}"
    session_id = as_session(engine, statement)
    assert rendered(engine, f"SELECT id::text, v::text FROM {name}") != original

    revert_session(engine, session_id)

    assert rendered(engine, f"SELECT id::text, v::text FROM {name}") == original
    assert verify(engine).ok


class TestColumnsTheDatabaseComputes:
    DDL = (
        "id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, amount int NOT NULL,"
        " doubled int GENERATED ALWAYS AS (amount * 2) STORED"
    )

    @staticmethod
    def declared(name: str) -> MetaData:
        """The table as an application declares it (``tables=``), rather than reflected."""
        metadata = MetaData()
        Table(
            name,
            metadata,
            Column("id", Integer, Identity(always=True), primary_key=True),
            Column("amount", Integer, nullable=False),
            Column("doubled", Integer, Computed("amount * 2", persisted=True)),
        )
        return metadata

    @pytest.mark.parametrize("given", [False, True], ids=["reflected", "declared"])
    def test_deleted_rows_come_back_with_their_identity(self, engine: Engine, given: bool) -> None:
        name = f"t_ident_{'declared' if given else 'reflected'}"
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TABLE {name} ({self.DDL})"))
            conn.execute(text(f"INSERT INTO {name} (amount) VALUES (100), (7)"))
        audit_postgres.audit_tables(engine, [name])
        original = rendered(engine, f"SELECT id::text, amount::text, doubled::text FROM {name} ORDER BY id")
        session_id = as_session(engine, f"DELETE FROM {name} WHERE amount = 100")

        revert_session(engine, session_id, tables=self.declared(name) if given else None)

        assert rendered(engine, f"SELECT id::text, amount::text, doubled::text FROM {name} ORDER BY id") == original
        with engine.begin() as conn:  # the identity goes on from where it was
            conn.execute(text(f"INSERT INTO {name} (amount) VALUES (1)"))
        assert rendered(engine, f"SELECT max(id)::text FROM {name}") == [("3",)]
        assert verify(engine).ok

    @pytest.mark.parametrize("given", [False, True], ids=["reflected", "declared"])
    def test_generated_columns_are_recomputed(self, engine: Engine, given: bool) -> None:
        name = f"t_gen_{'declared' if given else 'reflected'}"
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TABLE {name} ({self.DDL})"))
            conn.execute(text(f"INSERT INTO {name} (amount) VALUES (100)"))
        audit_postgres.audit_tables(engine, [name])
        original = rendered(engine, f"SELECT id::text, amount::text, doubled::text FROM {name}")
        session_id = as_session(engine, f"UPDATE {name} SET amount = 5")
        assert rendered(engine, f"SELECT doubled::text FROM {name}") == [("10",)]

        revert_session(engine, session_id, tables=self.declared(name) if given else None)

        assert rendered(engine, f"SELECT id::text, amount::text, doubled::text FROM {name}") == original
        assert verify(engine).ok
