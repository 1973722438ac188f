"""ORM auditing on real databases: every change path writes exact audit rows in the change's own
transaction, on SQLite (a file) and PostgreSQL (a scratch database with the chain trigger)."""

from __future__ import annotations

import asyncio
import enum
import json
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from sqlalchemy import (
    DateTime,
    Engine,
    Enum,
    ForeignKey,
    LargeBinary,
    MetaData,
    Numeric,
    PickleType,
    RowMapping,
    String,
    Uuid,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

import sessiontrace
from _audit_db import reset_public_schema, scratch_postgres
from sessiontrace import semconv
from sessiontrace.audit import (
    MASKED,
    Audited,
    AuditEncodingError,
    AuditSetupError,
    audit_log_table,
    chain,
    decode_value,
    enable_auditing,
)
from sessiontrace.testing import CapturedSpans

KEY = b"orm-test-key"


class Color(enum.Enum):
    RED = 1
    BLUE = 2


class Base(DeclarativeBase):
    pass


class Claim(Audited, Base):
    __tablename__ = "claim"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(100))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    due: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ref: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    blob: Mapped[bytes | None] = mapped_column(LargeBinary)
    color: Mapped[Color | None] = mapped_column(Enum(Color))
    score: Mapped[float | None]
    ssn: Mapped[str | None] = mapped_column(String(20))  # masked
    notes: Mapped[str | None] = mapped_column(String(200))  # excluded
    extra: Mapped[Any] = mapped_column(PickleType, nullable=True)
    items: Mapped[list[Item]] = relationship(back_populates="claim", cascade="all, delete-orphan", order_by="Item.id")


class Item(Audited, Base):
    __tablename__ = "claim_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    claim_id: Mapped[int | None] = mapped_column(ForeignKey("claim.id"))
    label: Mapped[str] = mapped_column(String(50))
    claim: Mapped[Claim | None] = relationship(back_populates="items")


class Tag(Audited, Base):
    """Composite primary key."""

    __tablename__ = "claim_tag"
    claim_id: Mapped[int] = mapped_column(primary_key=True)
    tag: Mapped[str] = mapped_column(String(30), primary_key=True)
    weight: Mapped[int]


class Unaudited(Base):
    __tablename__ = "unaudited"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))


AUDIT = audit_log_table(MetaData())
EXCLUDE = {"claim": ["notes"]}
MASK = {"claim": ["ssn"]}
DUE = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
REF = uuid.UUID("0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b")
tracer = trace.get_tracer("tests.audit_orm")


@dataclass
class Db:
    backend: str
    url: str
    engine: Engine
    maker: sessionmaker[Session]

    def audit_rows(self) -> list[RowMapping]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(AUDIT).order_by(AUDIT.c.seq, AUDIT.c.id)).mappings())

    def count(self, model: type[Base]) -> int:
        with self.maker() as db:
            return len(db.scalars(select(model)).all())


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with scratch_postgres("orm") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path, capsession: CapturedSpans) -> Iterator[Db]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
        engine = create_engine(url)
        AUDIT.create(engine)
    else:
        from sessiontrace.audit import postgres as audit_postgres

        url = request.getfixturevalue("postgres_url")
        reset_public_schema(url)
        engine = create_engine(url)
        audit_postgres.install(engine, key=KEY)
    Base.metadata.create_all(engine)
    maker = sessionmaker(engine)
    enable_auditing(maker, audit_table=AUDIT, key=KEY, exclude=EXCLUDE, mask=MASK)
    yield Db(request.param, url, engine, maker)
    engine.dispose()


def decoded(table: Any, values: dict[str, Any] | None) -> dict[str, Any] | None:
    if values is None:
        return None
    return {name: value if value == MASKED else decode_value(table.c[name], value) for name, value in values.items()}


def full_claim(**overrides: Any) -> Claim:
    values: dict[str, Any] = {
        "id": 1,
        "title": "hail damage",
        "amount": Decimal("1234.50"),
        "due": DUE,
        "ref": REF,
        "blob": b"\x00\xffbytes",
        "color": Color.BLUE,
        "score": 0.25,
        "ssn": "123-45-6789",
        "notes": "secret notes",
    }
    values.update(overrides)
    return Claim(**values)


CLAIM_FIELDS = ["id", "title", "amount", "due", "ref", "blob", "color", "score", "ssn", "extra"]
CLAIM_TABLE = Claim.__table__


class TestUnitOfWork:
    """Session.add / attribute changes / Session.delete and relationship cascades are audited."""

    def test_insert_records_every_value_losslessly(self, db: Db, capsession: CapturedSpans) -> None:
        with sessiontrace.session(user_id="u-481") as s, tracer.start_as_current_span("work") as span:
            with db.maker.begin() as orm:
                orm.add(full_claim())
            context = span.get_span_context()
        [row] = db.audit_rows()
        assert row["table_name"] == "claim"
        assert row["record_id"] == '{"id":1}'
        assert row["change_type"] == "insert"
        assert row["changed_fields"] == CLAIM_FIELDS
        assert row["previous_values"] is None
        assert decoded(CLAIM_TABLE, row["new_values"]) == {
            "id": 1,
            "title": "hail damage",
            "amount": Decimal("1234.50"),
            "due": DUE,
            "ref": REF,
            "blob": b"\x00\xffbytes",
            "color": Color.BLUE,
            "score": 0.25,
            "ssn": MASKED,
            "extra": None,
        }
        assert "notes" not in row["new_values"]
        assert row["new_values"]["due"] == "2024-05-06T07:08:09.123456+02:00"
        assert (row["session_id"], row["changed_by_user_id"], row["source"]) == (s.id, "u-481", "orm")
        assert row["trace_id"] == format(context.trace_id, "032x")
        assert row["span_id"] == format(context.span_id, "016x")
        assert row["transaction_id"]
        assert row["db_user"] == ("postgres" if db.backend == "postgresql" else None)
        assert row["seq"] == 1  # chained (in Python on SQLite, by the trigger on PostgreSQL)
        assert row["row_hash"] is not None

        with db.maker() as orm:
            claim = orm.get_one(Claim, 1)
            assert (claim.session_id, claim.changed_by_user_id) == (s.id, "u-481")
            assert claim.change_timestamp is not None

        [event] = [e for e in capsession.named("work")[0].events if e.name == semconv.DB_CHANGE_EVENT]
        assert dict(event.attributes or {}) == {
            semconv.DB_SYSTEM_NAME: db.backend,
            semconv.DB_COLLECTION_NAME: "claim",
            semconv.DB_RECORD_ID: '{"id":1}',
            semconv.DB_CHANGE_TYPE: "insert",
            semconv.DB_CHANGED_FIELDS: tuple(CLAIM_FIELDS),
            **({semconv.DB_AUDIT_SEQ: 1} if db.backend == "sqlite" else {}),
        }

    def test_update_of_expired_object_records_previous_values(self, db: Db) -> None:
        with db.maker.begin() as orm:
            orm.add(full_claim())
        with sessiontrace.session(user_id="u-2") as s:
            orm = db.maker()
            claim = orm.get_one(Claim, 1)
            orm.commit()  # expires the object: the previous values are not in memory any more
            claim.amount = Decimal("99.99")
            claim.ssn = "000-00-0000"
            claim.notes = "changed, but excluded"
            claim.title = "hail damage"  # same value: not a change
            orm.commit()
            orm.close()
        row = db.audit_rows()[-1]
        assert (row["change_type"], row["record_id"]) == ("update", '{"id":1}')
        assert row["changed_fields"] == ["amount", "ssn"]
        assert decoded(CLAIM_TABLE, row["previous_values"]) == {"amount": Decimal("1234.50"), "ssn": MASKED}
        assert decoded(CLAIM_TABLE, row["new_values"]) == {"amount": Decimal("99.99"), "ssn": MASKED}
        assert row["session_id"] == s.id
        with db.maker() as orm:
            assert orm.get_one(Claim, 1).changed_by_user_id == "u-2"

    def test_object_set_back_to_its_values_is_neither_stamped_nor_audited(self, db: Db) -> None:
        with db.maker.begin() as orm:
            orm.add(full_claim())  # outside a session: no user
        with sessiontrace.session(user_id="u-9"), db.maker.begin() as orm:
            claim = orm.get_one(Claim, 1)
            claim.title = "a typo"
            claim.title = "hail damage"  # back to what the row holds: dirty, but no net change
            assert claim in orm.dirty
        assert [r["change_type"] for r in db.audit_rows()] == ["insert"]
        with db.maker() as orm:
            assert orm.get_one(Claim, 1).changed_by_user_id is None

    def test_only_excluded_column_changed_writes_no_audit_row(self, db: Db) -> None:
        with db.maker.begin() as orm:
            orm.add(full_claim())
        with db.maker.begin() as orm:
            orm.get_one(Claim, 1).notes = "other"
        assert [r["change_type"] for r in db.audit_rows()] == ["insert"]

    def test_delete_of_expired_object_records_the_whole_row(self, db: Db) -> None:
        with db.maker.begin() as orm:
            orm.add(full_claim())
        orm = db.maker()
        claim = orm.get_one(Claim, 1)
        orm.commit()
        orm.delete(claim)
        orm.commit()
        orm.close()
        row = db.audit_rows()[-1]
        assert (row["change_type"], row["record_id"], row["new_values"]) == ("delete", '{"id":1}', None)
        previous = decoded(CLAIM_TABLE, row["previous_values"])
        assert previous is not None
        assert previous["amount"] == Decimal("1234.50")
        assert previous["ref"] == REF
        assert previous["color"] is Color.BLUE

    def test_cascades_delete_orphan_and_foreign_key_changes(self, db: Db) -> None:
        with db.maker.begin() as orm:
            orm.add(full_claim(items=[Item(id=10, label="roof"), Item(id=11, label="gutter")]))
            orm.add(full_claim(id=2, title="other"))
        with db.maker.begin() as orm:
            first, second = orm.get_one(Claim, 1), orm.get_one(Claim, 2)
            roof, gutter = first.items
            first.items.remove(roof)  # delete-orphan
            gutter.claim = second  # foreign key change
        rows = [r for r in db.audit_rows() if r["table_name"] == "claim_item"][2:]
        by_type = {r["change_type"]: r for r in rows}
        assert set(by_type) == {"delete", "update"}
        assert by_type["delete"]["record_id"] == '{"id":10}'
        assert by_type["delete"]["previous_values"] == {"id": 10, "claim_id": 1, "label": "roof"}
        assert by_type["update"]["record_id"] == '{"id":11}'
        assert by_type["update"]["changed_fields"] == ["claim_id"]
        assert (by_type["update"]["previous_values"], by_type["update"]["new_values"]) == (
            {"claim_id": 1},
            {"claim_id": 2},
        )
        # Deleting the parent cascades to its remaining children.
        with db.maker.begin() as orm:
            orm.delete(orm.get_one(Claim, 2))
        deleted = [(r["table_name"], r["record_id"]) for r in db.audit_rows() if r["change_type"] == "delete"]
        assert sorted(deleted[1:]) == [("claim", '{"id":2}'), ("claim_item", '{"id":11}')]

    def test_composite_primary_key_record_id(self, db: Db) -> None:
        with db.maker.begin() as orm:
            orm.add(Tag(claim_id=7, tag="urgent", weight=1))
        with db.maker.begin() as orm:
            orm.get_one(Tag, (7, "urgent")).weight = 5
        rows = db.audit_rows()
        assert [r["record_id"] for r in rows] == ['{"claim_id":7,"tag":"urgent"}'] * 2
        assert rows[1]["changed_fields"] == ["weight"]
        assert (rows[1]["previous_values"], rows[1]["new_values"]) == ({"weight": 1}, {"weight": 5})

    def test_unaudited_models_write_no_rows(self, db: Db) -> None:
        with db.maker.begin() as orm:
            orm.add(Unaudited(id=1, name="x"))
        assert db.audit_rows() == []


class TestAtomicity:
    """The change and its audit row commit or roll back together."""

    def test_rollback_leaves_neither(self, db: Db) -> None:
        with db.maker() as orm:
            orm.add(full_claim())
            orm.flush()
            orm.execute(update(Claim).values(title="bulk"))
            orm.rollback()
        assert db.count(Claim) == 0
        assert db.audit_rows() == []

    def test_unencodable_value_fails_the_write(self, db: Db) -> None:
        with db.maker() as orm:
            orm.add(full_claim(extra={1, 2}))
            with pytest.raises(AuditEncodingError, match=r"claim\.extra"):
                orm.commit()
        assert db.count(Claim) == 0
        assert db.audit_rows() == []


class TestBulkStatements:
    """ORM-enabled insert()/update()/delete() through Session.execute are audited too."""

    def test_bulk_insert_update_delete(self, db: Db) -> None:
        with sessiontrace.session(user_id="u-bulk") as s, db.maker.begin() as orm:
            ids = orm.scalars(
                insert(Claim).returning(Claim.id),
                [{"id": 1, "title": "a", "amount": Decimal("1.10")}, {"id": 2, "title": "b", "amount": None}],
            ).all()
            assert sorted(ids) == [1, 2]  # the application's own RETURNING is untouched
            result = orm.execute(update(Claim).where(Claim.title == "a").values(amount=Decimal("2.20")))
            assert result.rowcount == 1
            orm.execute(update(Claim), [{"id": 2, "title": "b2"}])  # bulk UPDATE by primary key
            orm.execute(delete(Claim).where(Claim.id == 1))
        rows = db.audit_rows()
        assert [(r["change_type"], r["record_id"]) for r in rows] == [
            ("insert", '{"id":1}'),
            ("insert", '{"id":2}'),
            ("update", '{"id":1}'),
            ("update", '{"id":2}'),
            ("delete", '{"id":1}'),
        ]
        assert decoded(CLAIM_TABLE, rows[0]["new_values"])["amount"] == Decimal("1.10")  # type: ignore[index]
        assert rows[2]["changed_fields"] == ["amount"]
        assert decoded(CLAIM_TABLE, rows[2]["previous_values"]) == {"amount": Decimal("1.10")}
        assert decoded(CLAIM_TABLE, rows[2]["new_values"]) == {"amount": Decimal("2.20")}
        assert (rows[3]["previous_values"], rows[3]["new_values"]) == ({"title": "b"}, {"title": "b2"})
        assert rows[4]["previous_values"]["title"] == "a"
        assert {r["session_id"] for r in rows} == {s.id}
        with db.maker() as orm:
            claim = orm.get_one(Claim, 2)
            assert (claim.session_id, claim.changed_by_user_id) == (s.id, "u-bulk")  # stamped in SET

    def test_upsert_classifies_insert_and_update(self, db: Db) -> None:
        dialect_insert = postgresql.insert if db.backend == "postgresql" else sqlite.insert
        with db.maker.begin() as orm:
            orm.add(full_claim())
        with db.maker.begin() as orm:
            statement = dialect_insert(Claim).values([{"id": 1, "title": "renamed"}, {"id": 3, "title": "brand new"}])
            statement = statement.on_conflict_do_update(
                index_elements=[Claim.id], set_={"title": statement.excluded.title}
            )
            orm.execute(statement)
            nothing = dialect_insert(Claim).values([{"id": 1, "title": "ignored"}, {"id": 4, "title": "four"}])
            orm.execute(nothing.on_conflict_do_nothing(index_elements=["id"]))
        rows = db.audit_rows()[1:]
        assert sorted((r["change_type"], r["record_id"]) for r in rows) == [
            ("insert", '{"id":3}'),
            ("insert", '{"id":4}'),
            ("update", '{"id":1}'),
        ]
        [updated] = [r for r in rows if r["change_type"] == "update"]
        assert updated["changed_fields"] == ["title"]
        assert (updated["previous_values"], updated["new_values"]) == ({"title": "hail damage"}, {"title": "renamed"})

    # PostgreSQL only: SQLite writers cannot interleave (the first write takes the database's lock).
    @pytest.mark.parametrize("db", ["postgresql"], indirect=True)
    def test_upsert_that_races_an_insert_is_retried_and_recorded_as_an_update(self, db: Db) -> None:
        # Another client inserts the conflicting row after the upsert read which rows exist and
        # before the upsert runs: the row takes the UPDATE branch with previous values nobody read.
        raced: list[str] = []

        def insert_first(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if not raced and statement.startswith("INSERT INTO claim") and "ON CONFLICT" in statement:
                raced.append(statement)
                with db.engine.connect() as other:  # a second connection; commits before we go on
                    other.execute(text("INSERT INTO claim (id, title) VALUES (7, 'filed by phone')"))
                    other.commit()

        event.listen(db.engine, "before_cursor_execute", insert_first)
        try:
            with sessiontrace.session(user_id="u-race") as s, db.maker.begin() as orm:
                statement = postgresql.insert(Claim).values(id=7, title="filed online")
                orm.execute(
                    statement.on_conflict_do_update(index_elements=[Claim.id], set_={"title": statement.excluded.title})
                )
        finally:
            event.remove(db.engine, "before_cursor_execute", insert_first)
        assert raced
        with db.maker() as orm:
            assert orm.get_one(Claim, 7).title == "filed online"
        [change] = db.audit_rows()
        assert (change["change_type"], change["record_id"], change["session_id"]) == ("update", '{"id":7}', s.id)
        assert (change["previous_values"], change["new_values"]) == (
            {"title": "filed by phone"},
            {"title": "filed online"},
        )


def stamps(db: Db, model: type[Claim] | type[Item]) -> dict[int, tuple[str | None, str | None, datetime | None]]:
    """The mixin columns of every row, by id, as the table holds them."""
    with db.maker() as orm:
        return {r.id: (r.session_id, r.changed_by_user_id, r.change_timestamp) for r in orm.scalars(select(model))}


def as_utc(moment: datetime | None) -> datetime:
    """A stamp as an aware UTC datetime (SQLite hands back the naive UTC value it stored)."""
    assert moment is not None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


OTHER_SESSION = "0190b0a6-0000-7000-8000-000000000001"


class TestStatementStamps:
    """ORM-enabled insert() statements stamp the mixin columns of every row they write: each row of
    a multi-row VALUES, and the rows an upsert updates (the stamps go into its SET clause)."""

    def test_multi_row_values_stamps_every_row(self, db: Db) -> None:
        with sessiontrace.session(user_id="u-multi") as s, db.maker.begin() as orm:
            orm.execute(
                insert(Claim).values(
                    [
                        {"id": 1, "title": "a", "amount": None},
                        {Claim.id: 2, Claim.title: func.lower("B"), Claim.amount: None},  # a SQL expression
                        {"id": 3, "title": "c", "amount": Decimal("3.30")},
                    ]
                )
            )
        found = stamps(db, Claim)
        assert sorted(found) == [1, 2, 3]
        assert {(sid, user) for sid, user, _ in found.values()} == {(s.id, "u-multi")}
        assert len({moment for _, _, moment in found.values()}) == 1  # one statement, one moment
        assert None not in {moment for _, _, moment in found.values()}
        with db.maker() as orm:
            assert orm.get_one(Claim, 2).title == "b"  # the expression was kept
        rows = db.audit_rows()
        assert [(r["change_type"], r["record_id"]) for r in rows] == [
            ("insert", '{"id":1}'),
            ("insert", '{"id":2}'),
            ("insert", '{"id":3}'),
        ]
        assert {(r["session_id"], r["changed_by_user_id"]) for r in rows} == {(s.id, "u-multi")}
        assert [r["changed_fields"] for r in rows] == [CLAIM_FIELDS] * 3  # the stamps are not recorded as values
        assert decoded(CLAIM_TABLE, rows[1]["new_values"])["title"] == "b"  # type: ignore[index]
        assert decoded(CLAIM_TABLE, rows[2]["new_values"])["amount"] == Decimal("3.30")  # type: ignore[index]

    def test_multi_row_positional_values_are_stamped(self, db: Db) -> None:
        with sessiontrace.session(user_id="u-tuples") as s, db.maker.begin() as orm:
            orm.execute(insert(Item).values([(1, None, "roof"), (2, None, "gutter")]))  # table column order
        assert {(sid, user) for sid, user, _ in stamps(db, Item).values()} == {(s.id, "u-tuples")}
        assert [(r["record_id"], r["new_values"]) for r in db.audit_rows()] == [
            ('{"id":1}', {"id": 1, "claim_id": None, "label": "roof"}),
            ('{"id":2}', {"id": 2, "claim_id": None, "label": "gutter"}),
        ]

    def test_multi_row_values_stamps_replace_values_given(self, db: Db) -> None:
        # As in a single-row VALUES and the unit of work: the current session wins.
        given = datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        with sessiontrace.session(user_id="u-multi") as s, db.maker.begin() as orm:
            orm.execute(
                insert(Item).values(
                    [
                        {"id": 1, "label": "imported", "session_id": OTHER_SESSION, "changed_by_user_id": "importer"},
                        {"id": 2, "label": "ours"},
                        {"id": 3, "label": "dated", Item.change_timestamp: given},
                    ]
                )
            )
        found = stamps(db, Item)
        assert {row[:2] for row in found.values()} == {(s.id, "u-multi")}
        assert len({row[2] for row in found.values()}) == 1
        assert as_utc(found[3][2]) != given
        assert [r["change_type"] for r in db.audit_rows()] == ["insert"] * 3

    @pytest.mark.parametrize("shape", ["values", "multi_values", "executemany"])
    def test_upsert_restamps_the_rows_it_updates(self, db: Db, shape: str) -> None:
        dialect_insert = postgresql.insert if db.backend == "postgresql" else sqlite.insert
        with sessiontrace.session(user_id="u-first") as first, db.maker.begin() as orm:
            orm.add(full_claim())
        [(_, _, before)] = stamps(db, Claim).values()
        rows = [{"id": 1, "title": "renamed"}, {"id": 3, "title": "brand new"}]
        with sessiontrace.session(user_id="u-second") as second, db.maker.begin() as orm:
            if shape == "values":
                statement = dialect_insert(Claim).values(rows[0])
            elif shape == "multi_values":
                statement = dialect_insert(Claim).values(rows)
            else:
                statement = dialect_insert(Claim)
            statement = statement.on_conflict_do_update(
                index_elements=[Claim.id], set_={"title": statement.excluded.title}
            )
            orm.execute(statement, rows if shape == "executemany" else None)
        assert first.id != second.id
        found = stamps(db, Claim)
        assert found[1][:2] == (second.id, "u-second")  # the update branch was stamped too
        assert as_utc(found[1][2]) > as_utc(before)
        if shape != "values":
            assert found[3][:2] == (second.id, "u-second")
            assert found[3][2] == found[1][2]
        audit = db.audit_rows()[1:]
        assert sorted((r["change_type"], r["record_id"]) for r in audit) == sorted(
            [("update", '{"id":1}')] + ([("insert", '{"id":3}')] if shape != "values" else [])
        )
        [updated] = [r for r in audit if r["change_type"] == "update"]
        assert updated["changed_fields"] == ["title"]  # the stamp columns are not recorded as values
        assert (updated["previous_values"], updated["new_values"]) == ({"title": "hail damage"}, {"title": "renamed"})
        assert {(r["session_id"], r["changed_by_user_id"]) for r in audit} == {(second.id, "u-second")}

    def test_upsert_stamps_replace_its_set_and_keep_its_own_clauses(self, db: Db) -> None:
        dialect_insert = postgresql.insert if db.backend == "postgresql" else sqlite.insert
        with db.maker.begin() as orm:
            orm.add_all([full_claim(), full_claim(id=2, title="locked")])
        with sessiontrace.session(user_id="u-up") as s, db.maker.begin() as orm:
            statement = dialect_insert(Claim).values(
                [
                    {"id": 1, "title": "renamed", "changed_by_user_id": "importer"},
                    {"id": 2, "title": "unlocked", "changed_by_user_id": "importer"},
                ]
            )
            target: dict[str, Any] = (
                {"constraint": "claim_pkey"} if db.backend == "postgresql" else {"index_elements": ["id"]}
            )
            statement = statement.on_conflict_do_update(
                **target,
                set_={
                    "title": statement.excluded.title,
                    Claim.changed_by_user_id: statement.excluded.changed_by_user_id,
                },
                where=Claim.title != "locked",
            )
            ids = orm.scalars(statement.returning(Claim.id)).all()
            assert ids == [1]  # the application's RETURNING: row 2 was not updated (its WHERE held)
        found = stamps(db, Claim)
        assert found[1][:2] == (s.id, "u-up")  # set_ named changed_by_user_id: the session's value won
        assert found[1][2] is not None
        assert found[2] == (None, None, found[2][2])  # untouched: still as first written, outside a session
        assert as_utc(found[2][2]) < as_utc(found[1][2])
        audit = db.audit_rows()[2:]
        assert [(r["change_type"], r["record_id"], r["new_values"]) for r in audit] == [
            ("update", '{"id":1}', {"title": "renamed"})
        ]
        assert audit[0]["session_id"] == s.id

    def test_upsert_outside_a_session_restamps_only_the_time(self, db: Db) -> None:
        dialect_insert = postgresql.insert if db.backend == "postgresql" else sqlite.insert
        with sessiontrace.session(user_id="u-first") as first, db.maker.begin() as orm:
            orm.add(full_claim())
        [(_, _, before)] = stamps(db, Claim).values()
        with db.maker.begin() as orm:
            statement = dialect_insert(Claim).values(id=1, title="renamed")
            orm.execute(statement.on_conflict_do_update(index_elements=["id"], set_={"title": "renamed"}))
        [(session_id, user, after)] = stamps(db, Claim).values()
        assert (session_id, user) == (first.id, "u-first")  # nothing is overwritten with NULL
        assert as_utc(after) > as_utc(before)

    def test_a_reused_upsert_is_stamped_with_each_executions_session(self, db: Db) -> None:
        dialect_insert = postgresql.insert if db.backend == "postgresql" else sqlite.insert
        statement = dialect_insert(Claim).values(id=1, title="same")
        statement = statement.on_conflict_do_update(index_elements=[Claim.id], set_={"title": statement.excluded.title})
        seen = []
        for user in ("u-1", "u-2", "u-3"):  # the second and third hit the compiled cache
            with sessiontrace.session(user_id=user) as s, db.maker.begin() as orm:
                orm.execute(statement)
            [stamp] = stamps(db, Claim).values()
            assert stamp[:2] == (s.id, user)
            seen.append(stamp[2])
        assert len({as_utc(moment) for moment in seen}) == 3
        assert seen == sorted(seen)
        assert [r["change_type"] for r in db.audit_rows()] == ["insert"]  # same title: no change recorded

    @pytest.mark.parametrize("db", ["sqlite"], indirect=True)
    def test_each_do_update_of_several_sqlite_on_conflict_clauses_is_stamped(self, db: Db) -> None:
        if not hasattr(sqlite.Insert, "ext"):
            pytest.skip("several ON CONFLICT clauses need SQLAlchemy 2.1")
        with db.maker.begin() as orm:
            orm.add(Tag(claim_id=1, tag="a", weight=1))
        with sessiontrace.session(user_id="u-tags") as s, db.maker.begin() as orm:
            statement = sqlite.insert(Tag).values(
                [{"claim_id": 1, "tag": "a", "weight": 5}, {"claim_id": 2, "tag": "b", "weight": 2}]
            )
            statement = statement.on_conflict_do_update(
                index_elements=["claim_id", "tag"], set_={"weight": statement.excluded.weight}
            ).on_conflict_do_nothing()
            orm.execute(statement)
        with db.maker() as orm:
            found = {
                (t.claim_id, t.tag): (t.weight, t.session_id, t.changed_by_user_id) for t in orm.scalars(select(Tag))
            }
        assert found == {(1, "a"): (5, s.id, "u-tags"), (2, "b"): (2, s.id, "u-tags")}
        assert [(r["change_type"], r["new_values"]) for r in db.audit_rows()[1:]] == [
            ("update", {"weight": 5}),
            ("insert", {"claim_id": 2, "tag": "b", "weight": 2}),
        ]


class TestAsyncSession:
    """An AsyncSession's changes are audited through its sync session."""

    def test_async_sessionmaker(self, db: Db) -> None:
        from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

        url = db.url.replace("sqlite://", "sqlite+aiosqlite://")
        engine = create_async_engine(url)
        maker = async_sessionmaker(engine)
        enable_auditing(maker, audit_table=AUDIT, key=KEY)

        async def work() -> str:
            async with sessiontrace.session(user_id="u-async") as s:
                async with maker.begin() as orm:
                    orm.add(Item(id=1, label="async"))
                async with maker.begin() as orm:
                    (await orm.get_one(Item, 1)).label = "async2"
                    await orm.execute(update(Item).where(Item.id == 1).values(label="async3"))
            await engine.dispose()
            return s.id

        session_id = asyncio.run(work())
        rows = db.audit_rows()
        assert [(r["change_type"], r["new_values"]) for r in rows] == [
            ("insert", {"id": 1, "claim_id": None, "label": "async"}),
            ("update", {"label": "async2"}),
            ("update", {"label": "async3"}),
        ]
        assert {(r["session_id"], r["changed_by_user_id"]) for r in rows} == {(session_id, "u-async")}
        # Auditing went on a subclass of its own, not on every Session in the process.
        assert maker.kw["sync_session_class"] is not Session


class TestSpanValues:
    def test_values_in_span_events_only_on_request(self, db: Db, capsession: CapturedSpans) -> None:
        maker = sessionmaker(db.engine)
        enable_auditing(maker, audit_table=AUDIT, mask=MASK, exclude=EXCLUDE, record_values_in_spans=True)
        with tracer.start_as_current_span("work"), maker.begin() as orm:
            orm.add(full_claim(amount=Decimal("5.00")))
        [event] = [e for e in capsession.named("work")[0].events if e.name == semconv.DB_CHANGE_EVENT]
        attributes = dict(event.attributes or {})
        assert semconv.DB_PREVIOUS_VALUES not in attributes
        new_values = json.loads(str(attributes[semconv.DB_NEW_VALUES]))
        assert (new_values["amount"], new_values["ssn"]) == ("5.00", MASKED)
        assert "notes" not in new_values

    def test_outside_a_span_trace_columns_are_null(self, db: Db) -> None:
        with db.maker.begin() as orm:
            orm.add(Item(id=1, label="x"))
        [row] = db.audit_rows()
        assert (row["trace_id"], row["span_id"], row["session_id"]) == (None, None, None)


class TestHashChain:
    """Each row's hash recomputes from the text the database stores, with ``chain.py``."""

    def _changes(self, db: Db) -> None:
        with sessiontrace.session(user_id="u-chain"), tracer.start_as_current_span("work"):
            with db.maker.begin() as orm:
                orm.add(full_claim(title="naïve ✓", items=[Item(id=1, label="a")]))
            with db.maker.begin() as orm:
                orm.get_one(Claim, 1).amount = Decimal("7.77")
                orm.execute(delete(Item))

    @pytest.mark.parametrize("db", ["sqlite"], indirect=True)
    def test_sqlite_chain_recomputes_from_raw_text(self, db: Db) -> None:
        self._changes(db)
        raw = sqlite3.connect(db.url.removeprefix("sqlite:///"))
        raw.row_factory = sqlite3.Row
        rows = raw.execute("SELECT * FROM audit_log ORDER BY seq").fetchall()
        raw.close()
        assert [r["seq"] for r in rows] == [1, 2, 3, 4]
        prev = chain.GENESIS
        for row in rows:
            assert isinstance(row["new_values"] or row["previous_values"], str)  # stored as text
            fields = {name: row[name] for name in chain.LINE_FIELDS}
            fields["change_timestamp"] = datetime.fromisoformat(row["change_timestamp"])
            assert row["prev_hash"] == prev
            prev = chain.link(prev, chain.line(fields), KEY)
            assert row["row_hash"] == prev
        assert any('"title":"naïve ✓"' in (r["new_values"] or "") for r in rows)  # canonical JSON, UTF-8 kept

    @pytest.mark.parametrize("db", ["postgresql"], indirect=True)
    def test_postgresql_chain_recomputes(self, db: Db) -> None:
        self._changes(db)
        columns = ", ".join(
            f"{name}::text AS {name}" if name in ("changed_fields", "previous_values", "new_values") else name
            for name in chain.LINE_FIELDS
        )
        with db.engine.connect() as conn:
            rows = list(conn.execute(text(f"SELECT {columns}, prev_hash, row_hash FROM audit_log ORDER BY seq")))
        assert [r.seq for r in rows] == [1, 2, 3, 4]
        prev = chain.GENESIS
        for row in rows:
            fields = {name: getattr(row, name) for name in chain.LINE_FIELDS}
            assert row.prev_hash == prev
            prev = chain.link(prev, chain.line(fields), KEY)
            assert row.row_hash == prev


class TestBadInput:
    """Mistakes fail clearly, naming what is wrong."""

    def test_hand_set_session_id_must_be_a_uuid(self) -> None:
        with pytest.raises(ValueError, match=r"Claim\.session_id must be a UUID"):
            Claim(id=1, title="x", session_id="not-a-uuid")

    def test_unknown_excluded_column(self) -> None:
        with pytest.raises(AuditSetupError, match=r"'claim' has no column.*'nope'"):
            enable_auditing(sessionmaker(), audit_table=AUDIT, exclude={"claim": ["nope"]})

    def test_enabling_twice_and_the_shared_async_class_are_refused(self) -> None:
        from sqlalchemy.ext.asyncio import AsyncSession

        maker: sessionmaker[Session] = sessionmaker()
        enable_auditing(maker, audit_table=AUDIT)
        with pytest.raises(AuditSetupError, match="already enabled"):
            enable_auditing(maker, audit_table=AUDIT)
        with pytest.raises(AuditSetupError, match="AsyncSession subclass"):
            enable_auditing(AsyncSession, audit_table=AUDIT)

    def test_table_without_primary_key_is_refused_at_setup(self) -> None:
        # In a child process: an Audited class without a primary key would stay registered here.
        script = textwrap.dedent(
            """
            from sqlalchemy import Column, Integer, MetaData, String, Table
            from sqlalchemy.orm import registry, sessionmaker
            from sessiontrace.audit import Audited, AuditSetupError, audit_log_table, enable_auditing

            reg = registry()
            ledger = Table("ledger", reg.metadata, Column("entry", Integer), Column("memo", String))

            class Ledger(Audited):
                pass

            reg.map_imperatively(Ledger, ledger, primary_key=[ledger.c.entry])
            try:
                enable_auditing(sessionmaker(), audit_table=audit_log_table(MetaData()))
            except AuditSetupError as exc:
                print(exc)
            """
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "table 'ledger' has no primary key" in done.stdout


class TestPublicApi:
    """``sessiontrace.audit`` exports exactly these names; changing them is deliberate."""

    def test_exported_names_are_pinned(self) -> None:
        import sessiontrace.audit

        assert set(sessiontrace.audit.__all__) >= {
            "AUDITED_COLUMNS",
            "MASKED",
            "AuditEncodingError",
            "AuditError",
            "AuditSetupError",
            "Audited",
            "Change",
            "audit_log_table",
            "canonical_json",
            "decode_value",
            "enable_auditing",
            "encode_value",
            "write_changes",
        }
        for name in sessiontrace.audit.__all__:
            assert hasattr(sessiontrace.audit, name), name
