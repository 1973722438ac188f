"""ORM statements at the edges of what ``statements.py`` audits, on SQLite (a file) and PostgreSQL
(a scratch database with the chain trigger): statements the ORM narrows beyond their WHERE, a
statement whose audit fails (undone, not left in the transaction), the session's objects after a
statement, the legacy ``Session.bulk_*`` methods, ``INSERT ... SELECT``, ``ordered_values()`` and
an SQLite upsert giving one key twice."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Engine,
    MetaData,
    RowMapping,
    String,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    literal,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker, with_loader_criteria
from sqlalchemy.orm.exc import ObjectDeletedError

import sessiontrace
from _audit_db import empty_audit_log, scratch_postgres
from sessiontrace.audit import Audited, AuditEncodingError, AuditError, audit_log_table, enable_auditing
from sessiontrace.audit.revert import revert_session
from sessiontrace.testing import CapturedSpans

KEY = b"statement-edges-key"


class Base(DeclarativeBase):
    pass


# Audited mappers are process-wide: names of their own keep other modules' exclude/mask rules off them.
class EdgeClaim(Audited, Base):
    __tablename__ = "edge_claim"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    tenant: Mapped[str] = mapped_column(String(20), default="a")
    status: Mapped[str] = mapped_column(String(20))
    score: Mapped[float | None]
    a: Mapped[int | None]
    b: Mapped[int | None]


class EdgeParty(Audited, Base):
    """Single-table inheritance: the ORM adds the discriminator to a subclass's statements."""

    __tablename__ = "edge_party"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "party"}  # noqa: RUF012


class EdgeInsurer(EdgeParty):
    __mapper_args__ = {"polymorphic_identity": "insurer"}  # noqa: RUF012


class EdgeBroker(EdgeParty):
    __mapper_args__ = {"polymorphic_identity": "broker"}  # noqa: RUF012


class EdgeCounter(Audited, Base):
    """A primary key the database generates."""

    __tablename__ = "edge_counter"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(20))


class EdgePlain(Base):
    __tablename__ = "edge_plain"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(String(20))


AUDIT = audit_log_table(MetaData())


@dataclass
class Db:
    backend: str
    engine: Engine
    maker: sessionmaker[Session]

    def changes(self) -> list[tuple[str, str, str, Any, Any]]:
        """(table, record id, change type, previous values, new values) of every audit row, in order."""
        with self.engine.connect() as conn:
            rows: list[RowMapping] = list(conn.execute(select(AUDIT).order_by(AUDIT.c.seq)).mappings())
        return [
            (r["table_name"], r["record_id"], r["change_type"], r["previous_values"], r["new_values"]) for r in rows
        ]

    def rows(self, query: str) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query))]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with scratch_postgres("edges") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path, capsession: CapturedSpans) -> Iterator[Db]:
    sqlite_url = f"sqlite:///{tmp_path / 'edges.sqlite3'}"
    engine = create_engine(sqlite_url if request.param == "sqlite" else request.getfixturevalue("postgres_url"))
    empty_audit_log(engine, AUDIT, KEY)
    Base.metadata.create_all(engine)
    maker = sessionmaker(engine)
    enable_auditing(maker, audit_table=AUDIT, key=KEY)
    yield Db(request.param, engine, maker)
    engine.dispose()


def claims(db: Db, *values: dict[str, Any]) -> None:
    """Rows to start from, committed (their insert audit rows come first in the log)."""
    with db.maker.begin() as orm:
        orm.add_all(EdgeClaim(**{"status": "open", **v}) for v in values)


def record(n: int) -> str:
    return f'{{"id":{n}}}'


def inserted(**values: Any) -> dict[str, Any]:
    """An ``edge_claim`` insert's recorded values: ``values`` and the other columns' defaults."""
    return {"tenant": "a", "score": None, "a": None, "b": None, **values}


class TestStatementsNarrowedByTheOrm:
    """The ORM adds criteria a statement's WHERE does not show: only the rows it changed are audited."""

    def test_bulk_delete_with_loader_criteria_records_only_the_rows_it_deleted(self, db: Db) -> None:
        claims(db, {"id": 1, "tenant": "a"}, {"id": 2, "tenant": "b"})
        with db.maker.begin() as orm:
            orm.execute(
                delete(EdgeClaim)
                .where(EdgeClaim.status == "open")
                .options(with_loader_criteria(EdgeClaim, EdgeClaim.tenant == "a"))
            )
        assert db.rows("SELECT id FROM edge_claim") == [(2,)]
        assert [(c[1], c[2]) for c in db.changes()[2:]] == [(record(1), "delete")]

    def test_bulk_update_with_loader_criteria_records_only_the_rows_it_updated(self, db: Db) -> None:
        claims(db, {"id": 1, "tenant": "a"}, {"id": 2, "tenant": "b"})
        with db.maker.begin() as orm:
            orm.execute(
                update(EdgeClaim)
                .where(EdgeClaim.status == "open")
                .values(status="closed")
                .options(with_loader_criteria(EdgeClaim, EdgeClaim.tenant == "a"))
            )
        assert db.rows("SELECT id, status FROM edge_claim ORDER BY id") == [(1, "closed"), (2, "open")]
        assert [c[1:] for c in db.changes()[2:]] == [(record(1), "update", {"status": "open"}, {"status": "closed"})]

    def test_bulk_delete_of_a_subclass_records_only_its_rows(self, db: Db) -> None:
        with db.maker.begin() as orm:
            orm.add_all([EdgeInsurer(id=1, name="acme"), EdgeBroker(id=2, name="bob")])
        with db.maker.begin() as orm:
            orm.execute(delete(EdgeInsurer).where(EdgeInsurer.name.in_(["acme", "bob"])))
        assert db.rows("SELECT id, kind FROM edge_party") == [(2, "broker")]
        assert [(c[1], c[2]) for c in db.changes()[2:]] == [(record(1), "delete")]


class TestRefusedStatementsAreUndone:
    """A statement whose audit fails is undone before the error reaches the caller: a caller that
    handles the error and commits commits the rest of its work, audited, and never that change."""

    def test_refused_bulk_update_is_undone_and_the_transaction_goes_on(self, db: Db) -> None:
        claims(db, {"id": 1, "score": 1.5})
        with db.maker() as orm:
            claim = orm.get_one(EdgeClaim, 1)
            orm.add(EdgeClaim(id=2, status="other work"))
            orm.flush()
            with pytest.raises(AuditEncodingError, match=r"edge_claim\.score"):
                orm.execute(update(EdgeClaim).where(EdgeClaim.id == 1).values(score=math.inf))
            # The ORM had copied the undone value into the object: it is read again.
            assert claim.score == 1.5
            claim.status = "after"
            orm.commit()
        assert db.rows("SELECT id, status, score FROM edge_claim ORDER BY id") == [
            (1, "after", 1.5),
            (2, "other work", None),
        ]
        assert [c[1:3] for c in db.changes()] == [(record(1), "insert"), (record(2), "insert"), (record(1), "update")]
        assert db.changes()[2][3:] == ({"status": "open"}, {"status": "after"})

    def test_refused_statements_that_are_the_transactions_first_writes_are_undone(self, db: Db) -> None:
        claims(db, {"id": 1, "score": 1.5})
        with db.maker() as orm:
            with pytest.raises(AuditEncodingError):
                orm.execute(update(EdgeClaim).values(score=math.inf))
            with pytest.raises(AuditEncodingError):
                orm.execute(insert(EdgeClaim).values(id=3, status="new", score=-math.inf))
            orm.commit()
        assert db.rows("SELECT id, status, score FROM edge_claim") == [(1, "open", 1.5)]
        assert [c[2] for c in db.changes()] == ["insert"]

    def test_a_statement_that_is_the_transactions_first_write_rolls_back_with_it(self, db: Db) -> None:
        # SQLite: pysqlite opens its transaction only before the first write, so a savepoint opened
        # before the statement would be the outermost one, and releasing it would commit.
        claims(db, {"id": 1})
        with db.maker() as orm:
            orm.execute(update(EdgeClaim).where(EdgeClaim.id == 1).values(status="rolled back"))
            orm.rollback()
        assert db.rows("SELECT status FROM edge_claim") == [("open",)]
        assert [c[2] for c in db.changes()] == ["insert"]

    def test_primary_key_change_is_refused_and_undone(self, db: Db) -> None:
        claims(db, {"id": 1})
        with db.maker() as orm:
            with pytest.raises(AuditError, match="changes primary keys"):
                orm.execute(update(EdgeClaim).where(EdgeClaim.id == 1).values(id=50))
            orm.commit()
        assert db.rows("SELECT id FROM edge_claim") == [(1,)]
        assert len(db.changes()) == 1


class TestSessionObjectsAfterAStatement:
    """The next flush records, as previous values, what the rows held after the statement."""

    def test_update_without_synchronize_session_then_a_flush(self, db: Db) -> None:
        with db.maker() as orm:
            claim = EdgeClaim(id=1, status="open")
            orm.add(claim)
            orm.flush()
            orm.execute(
                update(EdgeClaim).where(EdgeClaim.id == 1).values(status="approved"),
                execution_options={"synchronize_session": False},
            )
            assert claim.status == "approved"
            claim.status = "paid"
            orm.commit()
        assert [c[2:] for c in db.changes()[1:]] == [
            ("update", {"status": "open"}, {"status": "approved"}),
            ("update", {"status": "approved"}, {"status": "paid"}),
        ]

    def test_a_change_not_flushed_yet_is_kept_against_the_rows_new_value(self, db: Db) -> None:
        claims(db, {"id": 1})
        with db.maker() as orm:
            claim = orm.get_one(EdgeClaim, 1)
            with orm.no_autoflush:
                claim.status = "mine"
                orm.execute(
                    update(EdgeClaim).where(EdgeClaim.id == 1).values(status="theirs"),
                    execution_options={"synchronize_session": False},
                )
            orm.commit()
        assert db.rows("SELECT status FROM edge_claim") == [("mine",)]
        assert [c[3:] for c in db.changes()[1:]] == [
            ({"status": "open"}, {"status": "theirs"}),
            ({"status": "theirs"}, {"status": "mine"}),
        ]

    def test_delete_without_synchronize_session_expires_the_deleted_object(self, db: Db) -> None:
        claims(db, {"id": 1}, {"id": 2})
        with db.maker() as orm:
            claim, other = orm.get_one(EdgeClaim, 1), orm.get_one(EdgeClaim, 2)
            orm.execute(delete(EdgeClaim).where(EdgeClaim.id == 1), execution_options={"synchronize_session": False})
            with pytest.raises(ObjectDeletedError):
                _ = claim.status
            assert other.status == "open"
            orm.commit()
        assert [(c[1], c[2]) for c in db.changes()[2:]] == [(record(1), "delete")]

    def test_upsert_of_a_loaded_object_then_a_flush(self, db: Db) -> None:
        dialect_insert = postgresql.insert if db.backend == "postgresql" else sqlite.insert
        claims(db, {"id": 1})
        with db.maker() as orm:
            claim = orm.get_one(EdgeClaim, 1)
            statement = dialect_insert(EdgeClaim).values(id=1, status="upserted")
            orm.execute(statement.on_conflict_do_update(index_elements=["id"], set_={"status": "upserted"}))
            claim.status = "paid"
            orm.commit()
        assert [c[2:] for c in db.changes()[1:]] == [
            ("update", {"status": "open"}, {"status": "upserted"}),
            ("update", {"status": "upserted"}, {"status": "paid"}),
        ]


class TestLegacyBulkMethods:
    """``bulk_insert_mappings`` / ``bulk_update_mappings`` / ``bulk_save_objects`` fire no event:
    on an audited session they are audited like the statements they stand for."""

    def test_each_change_is_audited(self, db: Db) -> None:
        with sessiontrace.session(user_id="u-legacy") as s, db.maker() as orm:
            orm.bulk_insert_mappings(EdgeClaim, [{"id": 1, "status": "open"}, {"id": 2, "status": "open"}])
            orm.bulk_update_mappings(EdgeClaim, [{"id": 1, "status": "closed"}])
            orm.bulk_save_objects([EdgeClaim(id=3, status="new")])
            orm.commit()
        assert db.rows("SELECT id, status FROM edge_claim ORDER BY id") == [(1, "closed"), (2, "open"), (3, "new")]
        assert [c[1:] for c in db.changes()] == [
            (record(1), "insert", None, inserted(id=1, status="open")),
            (record(2), "insert", None, inserted(id=2, status="open")),
            (record(1), "update", {"status": "open"}, {"status": "closed"}),
            (record(3), "insert", None, inserted(id=3, status="new")),
        ]
        with db.maker() as orm:
            stamped = orm.execute(select(EdgeClaim.session_id, EdgeClaim.changed_by_user_id))
            assert set(stamped) == {(s.id, "u-legacy")}

    def test_a_changed_persistent_object_is_audited_once(self, db: Db) -> None:
        claims(db, {"id": 1})
        with db.maker() as orm:
            claim = orm.get_one(EdgeClaim, 1)
            claim.status = "saved in bulk"
            orm.bulk_save_objects([claim])
            orm.commit()  # the object's change is in the row already: the flush has nothing to write
        assert db.rows("SELECT status FROM edge_claim") == [("saved in bulk",)]
        assert [c[2:] for c in db.changes()[1:]] == [("update", {"status": "open"}, {"status": "saved in bulk"})]

    def test_an_object_without_changes_is_left_alone(self, db: Db) -> None:
        claims(db, {"id": 1})
        stamped = db.rows("SELECT change_timestamp FROM edge_claim")
        with sessiontrace.session(user_id="u-idle"), db.maker() as orm:
            orm.bulk_save_objects([orm.get_one(EdgeClaim, 1)])
            orm.bulk_update_mappings(EdgeClaim, [{"id": 1}])
            orm.commit()
        assert db.rows("SELECT change_timestamp FROM edge_claim") == stamped  # not even stamped
        assert len(db.changes()) == 1

    def test_return_defaults_hands_back_the_generated_keys(self, db: Db) -> None:
        mappings: list[dict[str, Any]] = [{"label": "first"}, {"label": "second"}]
        counter = EdgeCounter(label="third")
        with db.maker() as orm:
            orm.bulk_insert_mappings(EdgeCounter, mappings, return_defaults=True)
            orm.bulk_save_objects([counter], return_defaults=True)
            orm.commit()
        assert [m["id"] for m in mappings] == [1, 2]
        assert counter.id == 3
        assert inspect(counter).detached  # it has its identity, and was not added to the session
        assert [(c[1], c[4]) for c in db.changes()] == [
            (record(1), {"id": 1, "label": "first"}),
            (record(2), {"id": 2, "label": "second"}),
            (record(3), {"id": 3, "label": "third"}),
        ]

    def test_classes_not_audited_keep_the_legacy_methods(self, db: Db) -> None:
        with db.maker() as orm:
            orm.bulk_insert_mappings(EdgePlain, [{"id": 1, "label": "one"}])
            orm.bulk_update_mappings(EdgePlain, [{"id": 1, "label": "uno"}])
            orm.bulk_save_objects([EdgePlain(id=2, label="two"), EdgeClaim(id=1, status="audited")])
            orm.commit()
        assert db.rows("SELECT id, label FROM edge_plain ORDER BY id") == [(1, "uno"), (2, "two")]
        assert [(c[0], c[2]) for c in db.changes()] == [("edge_claim", "insert")]


class TestStatementShapes:
    """``INSERT ... SELECT`` and ``ordered_values()`` run, stamped and audited."""

    def test_insert_from_select_is_audited_and_stamped(self, db: Db) -> None:
        claims(db, {"id": 1})
        with sessiontrace.session(user_id="u-copy") as s, db.maker.begin() as orm:
            orm.execute(insert(EdgeClaim).from_select(["id", "status"], select(EdgeClaim.id + 100, EdgeClaim.status)))
            # a SELECT of another kind, naming a stamp column itself: the current session's value wins
            union = union_all(
                select(literal(7), literal("seven"), literal(None)), select(literal(8), literal("eight"), literal(None))
            )
            orm.execute(insert(EdgeClaim).from_select([EdgeClaim.id, EdgeClaim.status, EdgeClaim.session_id], union))
        assert [(c[1], c[2], c[4]["status"]) for c in db.changes()[1:]] == [
            (record(101), "insert", "open"),
            (record(7), "insert", "seven"),
            (record(8), "insert", "eight"),
        ]
        with db.maker() as orm:
            stamped = orm.execute(select(EdgeClaim.session_id, EdgeClaim.changed_by_user_id).where(EdgeClaim.id > 1))
            assert set(stamped) == {(s.id, "u-copy")}

    def test_upsert_from_select_is_refused(self, db: Db) -> None:
        dialect_insert = postgresql.insert if db.backend == "postgresql" else sqlite.insert
        claims(db, {"id": 1})
        statement = dialect_insert(EdgeClaim).from_select(
            ["id", "status"], select(EdgeClaim.id, literal("copied")).where(EdgeClaim.id > 0)
        )
        with db.maker() as orm:
            with pytest.raises(AuditError, match="from a SELECT"):
                orm.execute(statement.on_conflict_do_update(index_elements=["id"], set_={"status": "copied"}))
            orm.commit()
        assert db.rows("SELECT status FROM edge_claim") == [("open",)]

    def test_ordered_values_update_is_audited_and_stamped(self, db: Db) -> None:
        claims(db, {"id": 1, "a": 1, "b": 2})
        with sessiontrace.session(user_id="u-swap") as s, db.maker.begin() as orm:
            orm.execute(
                update(EdgeClaim)
                .where(EdgeClaim.id == 1)
                .ordered_values((EdgeClaim.a, EdgeClaim.b), (EdgeClaim.b, EdgeClaim.a))
            )
        assert db.rows("SELECT a, b, changed_by_user_id FROM edge_claim") == [(2, 1, "u-swap")]
        assert db.changes()[1][2:] == ("update", {"a": 1, "b": 2}, {"a": 2, "b": 1})
        with db.maker() as orm:
            assert orm.get_one(EdgeClaim, 1).session_id == s.id


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # PostgreSQL refuses a key twice in one upsert
def test_sqlite_upsert_giving_one_key_twice_is_an_insert_then_an_update(db: Db) -> None:
    with sessiontrace.session() as s, db.maker.begin() as orm:
        statement = sqlite.insert(EdgeClaim).values([{"id": 5, "status": "a"}, {"id": 5, "status": "b"}])
        orm.execute(statement.on_conflict_do_update(index_elements=["id"], set_={"status": statement.excluded.status}))
    assert db.rows("SELECT id, status FROM edge_claim") == [(5, "b")]
    assert [c[2:] for c in db.changes()] == [
        ("insert", None, inserted(id=5, status="a")),
        ("update", {"status": "a"}, {"status": "b"}),
    ]
    revert_session(db.engine, s.id, tables=Base.metadata, key=KEY)
    assert db.rows("SELECT id FROM edge_claim") == []


class TestRowsAddedWhileAStatementRuns:
    """Between the audit's read of the matching rows and the statement itself, other transactions
    commit rows that match: the statement's new snapshot changes them too."""

    @staticmethod
    def _statement(kind: str) -> Any:
        if kind == "update":
            return update(EdgeClaim).where(EdgeClaim.status == "open").values(status="closed")
        return delete(EdgeClaim).where(EdgeClaim.status == "open")

    @pytest.mark.parametrize("db", ["postgresql"], indirect=True)
    @pytest.mark.parametrize("kind", ["update", "delete"])
    def test_a_matching_row_committed_meanwhile_is_changed_and_audited(self, db: Db, kind: str) -> None:
        claims(db, {"id": 1})
        other = db.engine.connect()
        raced: list[str] = []

        def commit_a_matching_row_once(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith(kind.upper()) and not raced:
                raced.append(statement)
                other.execute(text("INSERT INTO edge_claim (id, tenant, status) VALUES (2, 'a', 'open')"))
                other.commit()

        with db.maker() as orm:
            connection = orm.connection()
            event.listen(connection, "before_cursor_execute", commit_a_matching_row_once)
            try:
                with sessiontrace.session():
                    orm.execute(self._statement(kind))  # run again after the race, now reading row 2
            finally:
                event.remove(connection, "before_cursor_execute", commit_a_matching_row_once)
            orm.commit()
        other.close()
        assert raced
        if kind == "update":
            assert db.rows("SELECT id, status FROM edge_claim ORDER BY id") == [(1, "closed"), (2, "closed")]
            assert [(c[2], c[3]) for c in db.changes()] == [
                ("insert", None),
                ("update", {"status": "open"}),
                ("update", {"status": "open"}),
            ]
        else:
            assert db.rows("SELECT id FROM edge_claim") == []
            assert [c[2] for c in db.changes()] == ["insert", "delete", "delete"]
        assert sorted(c[1] for c in db.changes()[1:]) == [record(1), record(2)]

    @pytest.mark.parametrize("db", ["postgresql"], indirect=True)
    def test_objects_in_the_session_see_the_statement_once(self, db: Db) -> None:
        # The ORM copies an UPDATE's SET into loaded objects (synchronize_session="auto"): the
        # undone first run must not leave its increment behind for the second to add to.
        claims(db, {"id": 1, "a": 10})
        other = db.engine.connect()
        raced: list[str] = []

        def commit_a_matching_row_once(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("UPDATE") and not raced:
                raced.append(statement)
                other.execute(text("INSERT INTO edge_claim (id, tenant, status, a) VALUES (2, 'a', 'open', 20)"))
                other.commit()

        with db.maker() as orm:
            loaded = orm.get_one(EdgeClaim, 1)
            connection = orm.connection()
            event.listen(connection, "before_cursor_execute", commit_a_matching_row_once)
            try:
                orm.execute(update(EdgeClaim).where(EdgeClaim.status == "open").values(a=EdgeClaim.a + 1))
            finally:
                event.remove(connection, "before_cursor_execute", commit_a_matching_row_once)
            assert loaded.a == 11
            orm.commit()
        other.close()
        assert raced
        assert db.rows("SELECT id, a FROM edge_claim ORDER BY id") == [(1, 11), (2, 21)]
        assert [(c[1], c[3], c[4]) for c in db.changes()[1:]] == [
            (record(1), {"a": 10}, {"a": 11}),
            (record(2), {"a": 20}, {"a": 21}),
        ]

    @pytest.mark.parametrize("db", ["postgresql"], indirect=True)
    def test_rows_committed_meanwhile_every_time_are_refused_not_changed_unaudited(self, db: Db) -> None:
        claims(db, {"id": 1})
        other = db.engine.connect()
        added = iter(range(2, 100))

        def commit_a_matching_row(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("UPDATE"):
                other.execute(
                    text("INSERT INTO edge_claim (id, tenant, status) VALUES (:i, 'a', 'open')"), {"i": next(added)}
                )
                other.commit()

        with db.maker() as orm:
            connection = orm.connection()
            event.listen(connection, "before_cursor_execute", commit_a_matching_row)
            try:
                with pytest.raises(AuditError, match=r"other transactions kept adding matching rows while it ran \(5 "):
                    orm.execute(self._statement("update"))
            finally:
                event.remove(connection, "before_cursor_execute", commit_a_matching_row)
            orm.commit()
        other.close()
        assert db.rows("SELECT DISTINCT status FROM edge_claim") == [("open",)]
        assert [c[2] for c in db.changes()] == ["insert"]
