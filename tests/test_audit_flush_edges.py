"""Unit-of-work auditing at the edges: a row switch, values set while expired, execution order
within one table, SQL expressions, columns an UPDATE generates, primary keys the database
normalises, enum members in plain columns, record ids, JSON ``1`` vs ``true``. Each on SQLite (a
file) and PostgreSQL (a scratch database with the chain trigger) where it can happen there."""

from __future__ import annotations

import enum
import itertools
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import (
    CHAR,
    JSON,
    Computed,
    DateTime,
    Engine,
    Enum,
    ForeignKey,
    MetaData,
    String,
    Uuid,
    create_engine,
    event,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker
from sqlalchemy.orm.attributes import flag_modified

import sessiontrace
from _audit_db import empty_audit_log, scratch_postgres
from sessiontrace.audit import Audited, audit_log_table, enable_auditing
from sessiontrace.audit.auditor import Auditor
from sessiontrace.audit.revert import revert_session

KEY = b"flush-edges-key"


class Base(DeclarativeBase):
    pass


class EdgeClaim(Audited, Base):
    __tablename__ = "edge_claim"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(20))
    code: Mapped[str | None] = mapped_column(String(20))
    n: Mapped[int | None]


class EdgeNode(Audited, Base):
    __tablename__ = "edge_node"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("edge_node.id"))
    name: Mapped[str] = mapped_column(String(20))
    parent: Mapped[EdgeNode | None] = relationship(remote_side=[id])


class EdgeSlot(Audited, Base):
    __tablename__ = "edge_slot"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    code: Mapped[str] = mapped_column(String(20), unique=True)


_versions = itertools.count(1)


class EdgeCounted(Audited, Base):
    """Columns every UPDATE changes without the application setting them."""

    __tablename__ = "edge_counted"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(20))
    n: Mapped[int]
    revision: Mapped[int] = mapped_column(default=0, onupdate=lambda: next(_versions))
    doubled: Mapped[int] = mapped_column(Computed("n * 2", persisted=True))


class EdgeVersioned(Audited, Base):
    __tablename__ = "edge_versioned"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(20))
    version: Mapped[int] = mapped_column(nullable=False)
    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": version}


class EdgeBranch(Audited, Base):
    __tablename__ = "edge_branch"
    code: Mapped[str] = mapped_column(CHAR(5), primary_key=True)
    name: Mapped[str] = mapped_column(String(20))


class EdgeDoc(Audited, Base):
    __tablename__ = "edge_doc"
    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    name: Mapped[str] = mapped_column(String(20))


class Status(str, enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Kind(enum.Enum):
    CLAIM = "c"
    QUOTE = "q"


class EdgeTicket(Audited, Base):
    __tablename__ = "edge_ticket"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(20))
    priority: Mapped[int]
    kind: Mapped[Kind] = mapped_column(Enum(Kind))  # an Enum column: stores the name


class EdgeReading(Audited, Base):
    __tablename__ = "edge_reading"
    sensor: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    value: Mapped[int]


class EdgeSetting(Audited, Base):
    __tablename__ = "edge_setting"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    value: Mapped[Any] = mapped_column(JSON)


AUDIT = audit_log_table(MetaData())
AT = datetime(2024, 5, 6, 9, 0, tzinfo=timezone(timedelta(hours=2)))


@dataclass
class Db:
    backend: str
    engine: Engine
    maker: sessionmaker[Session]

    def audit(self, table: str | None = None) -> list[tuple[Any, ...]]:
        """(record id, change type, changed fields, previous, new) per audit row, in chain order."""
        with self.engine.connect() as conn:
            query = select(AUDIT).order_by(AUDIT.c.seq, AUDIT.c.id)
            if table is not None:
                query = query.where(AUDIT.c.table_name == table)
            rows = conn.execute(query).mappings().all()
        return [
            (
                json.loads(row["record_id"]),
                row["change_type"],
                _json(row["changed_fields"]),
                _json(row["previous_values"]),
                _json(row["new_values"]),
            )
            for row in rows
        ]

    def table(self, sql: str) -> list[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with scratch_postgres("flush_edges") as url:
        yield url


def _database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    if backend == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'app.sqlite3'}")
        event.listen(engine, "connect", lambda conn, record: conn.execute("PRAGMA foreign_keys=ON"))
    else:
        engine = create_engine(request.getfixturevalue("postgres_url"))
    empty_audit_log(engine, AUDIT, KEY)
    Base.metadata.create_all(engine)
    maker = sessionmaker(engine)
    enable_auditing(maker, audit_table=AUDIT, key=KEY)
    yield Db(backend, engine, maker)
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    yield from _database(request.param, request, tmp_path)


@pytest.fixture
def pg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """PostgreSQL alone: it normalises values SQLite keeps as given."""
    yield from _database("postgresql", request, tmp_path)


class TestRowSwitch:
    def test_delete_and_re_add_of_a_key_is_an_update_from_the_deleted_values(self, db: Db) -> None:
        with db.maker.begin() as orm:
            orm.add(EdgeClaim(id=1, status="open", code="a", n=1))
        with sessiontrace.session() as second, db.maker.begin() as orm:
            orm.delete(orm.get_one(EdgeClaim, 1))
            orm.add(EdgeClaim(id=1, status="replaced", n=2))  # code not set: the UPDATE keeps it

        assert db.audit()[1:] == [
            ({"id": 1}, "update", ["status", "n"], {"status": "open", "n": 1}, {"status": "replaced", "n": 2})
        ]
        assert db.table("SELECT id, status, code, n FROM edge_claim") == [(1, "replaced", "a", 2)]
        revert_session(db.engine, second.id, tables=Base.metadata, key=KEY)
        assert db.table("SELECT id, status, code, n FROM edge_claim") == [(1, "open", "a", 1)]

    def test_the_row_switched_in_is_stamped_with_the_new_session(self, db: Db) -> None:
        with sessiontrace.session(user_id="alice"), db.maker.begin() as orm:
            orm.add(EdgeClaim(id=1, status="open", code="a", n=1))
        with sessiontrace.session(user_id="bob") as bob, db.maker.begin() as orm:
            orm.delete(orm.get_one(EdgeClaim, 1))
            orm.add(EdgeClaim(id=1, status="replaced", n=2))  # one UPDATE of the keys set on it
        ((session_id, user_id),) = db.table("SELECT session_id, changed_by_user_id FROM edge_claim")
        assert (str(uuid.UUID(str(session_id))), user_id) == (bob.id, "bob")

    def test_the_deleted_objects_expired_values_are_read(self, db: Db) -> None:
        with db.maker.begin() as orm:
            orm.add(EdgeClaim(id=1, status="open", code="a", n=1))
        with db.maker.begin() as orm:
            old = orm.get_one(EdgeClaim, 1)
            orm.expire(old)
            orm.delete(old)
            orm.add(EdgeClaim(id=1, status="open", code="b", n=1))

        assert db.audit()[1:] == [({"id": 1}, "update", ["code"], {"code": "a"}, {"code": "b"})]


class TestValueSetWhileExpired:
    def test_a_delete_records_the_value_the_row_held(self, db: Db) -> None:
        with db.maker() as orm:
            claim = EdgeClaim(id=1, status="open", code="a", n=1)
            orm.add(claim)
            orm.commit()  # expires every attribute
            claim.status = "closed"  # set while expired: the previous value is unknown to the ORM
            orm.delete(claim)
            orm.commit()

        assert db.audit()[1] == (
            {"id": 1},
            "delete",
            ["id", "status", "code", "n"],
            {"id": 1, "status": "open", "code": "a", "n": 1},
            None,
        )


class TestExecutionOrder:
    def test_rows_of_one_table_are_logged_in_the_order_the_flush_ran_them(self, db: Db) -> None:
        with sessiontrace.session() as inserting, db.maker.begin() as orm:
            root = EdgeNode(id=1, name="root")
            orm.add(EdgeNode(id=2, name="child", parent=root))  # the root is cascaded in after the child

        assert [(r[0], r[1]) for r in db.audit()] == [({"id": 1}, "insert"), ({"id": 2}, "insert")]
        revert_session(db.engine, inserting.id, tables=Base.metadata, key=KEY)  # deletes the child first
        assert db.table("SELECT id FROM edge_node") == []

    def test_a_mappers_updates_are_logged_before_its_inserts_as_they_ran(self, db: Db) -> None:
        with db.maker.begin() as orm:
            orm.add(EdgeSlot(id=1, code="x"))
        with sessiontrace.session() as second, db.maker.begin() as orm:
            orm.get_one(EdgeSlot, 1).code = "y"  # frees "x" ...
            orm.add(EdgeSlot(id=2, code="x"))  # ... for the new row: the UPDATE must run first

        assert [(r[0], r[1]) for r in db.audit()[1:]] == [({"id": 1}, "update"), ({"id": 2}, "insert")]
        revert_session(db.engine, second.id, tables=Base.metadata, key=KEY)
        assert db.table("SELECT id, code FROM edge_slot") == [(1, "x")]


class TestSqlExpressionOnInsert:
    def test_the_value_the_database_computed_is_recorded(self, db: Db) -> None:
        with db.maker.begin() as orm:
            orm.add(EdgeClaim(id=1, status="open", code=func.upper("abc"), n=literal(40) + 2))

        assert db.audit() == [
            (
                {"id": 1},
                "insert",
                ["id", "status", "code", "n"],
                None,
                {"id": 1, "status": "open", "code": "ABC", "n": 42},
            )
        ]


class TestColumnsTheUpdateGenerates:
    def test_onupdate_and_computed_columns_are_in_a_unit_of_work_update(self, db: Db) -> None:
        with db.maker() as orm:
            counted = EdgeCounted(id=1, status="open", n=1)
            orm.add(counted)
            orm.commit()
            counted.status = "closed"
            orm.commit()  # expired: the previous revision and doubled are read
            revision = db.table("SELECT revision FROM edge_counted")[0][0]
            counted = orm.get_one(EdgeCounted, 1)
            counted.n = 5
            orm.commit()  # loaded: kept before the UPDATE, the computed column read after it

        rows = db.audit()
        assert rows[0][4] == {"id": 1, "status": "open", "n": 1, "revision": 0, "doubled": 2}
        assert rows[1] == (
            {"id": 1},
            "update",
            ["status", "revision"],
            {"status": "open", "revision": 0},
            {"status": "closed", "revision": revision},
        )
        assert rows[2] == (
            {"id": 1},
            "update",
            ["n", "revision", "doubled"],
            {"n": 1, "revision": revision, "doubled": 2},
            {"n": 5, "revision": revision + 1, "doubled": 10},
        )

    def test_the_unit_of_work_and_a_bulk_update_record_the_same_fields(self, db: Db) -> None:
        with db.maker() as orm:
            orm.add(EdgeCounted(id=1, status="open", n=1))
            orm.commit()
            orm.get_one(EdgeCounted, 1).status = "closed"
            orm.commit()
            orm.execute(update(EdgeCounted).where(EdgeCounted.id == 1).values(status="reopened"))
            orm.commit()

        unit_of_work, bulk = db.audit()[1:]
        assert unit_of_work[2] == bulk[2] == ["status", "revision"]

    def test_the_version_counter_is_in_every_update(self, db: Db) -> None:
        with db.maker() as orm:
            versioned = EdgeVersioned(id=1, status="open")
            orm.add(versioned)
            orm.flush()
            versioned.status = "closed"
            orm.commit()

        assert db.audit() == [
            ({"id": 1}, "insert", ["id", "status", "version"], None, {"id": 1, "status": "open", "version": 1}),
            (
                {"id": 1},
                "update",
                ["status", "version"],
                {"status": "open", "version": 1},
                {"status": "closed", "version": 2},
            ),
        ]


class TestNormalisedPrimaryKeys:
    def test_an_expired_object_with_a_padded_or_lower_cased_key_can_be_changed(self, pg: Db) -> None:
        upper = "0190B0A6-1F3C-7D2E-9A4B-5C6D7E8F9A0B"
        with pg.maker() as orm:
            branch, doc = EdgeBranch(code="ab", name="old"), EdgeDoc(id=upper, name="old")
            orm.add_all([branch, doc])
            orm.commit()  # expires both: the previous names must be read by key
            branch.name = doc.name = "new"
            orm.commit()
        with pg.maker.begin() as orm:  # the same rows loaded afresh: keys as the database gives them
            orm.get_one(EdgeBranch, "ab").name = "newer"
            orm.get_one(EdgeDoc, upper.lower()).name = "newer"

        branch_ids = [r[0] for r in pg.audit("edge_branch")]
        doc_ids = [r[0] for r in pg.audit("edge_doc")]
        assert branch_ids == [{"code": "ab   "}] * 3
        assert doc_ids == [{"id": upper.lower()}] * 3
        assert [r[3] for r in pg.audit("edge_branch")[1:]] == [{"name": "old"}, {"name": "new"}]

    def test_an_insert_with_a_normalised_key_is_read_back(self, pg: Db) -> None:
        with pg.maker.begin() as orm:
            orm.add(EdgeBranch(code="cd", name=func.lower("X")))  # expired by the flush: read back by key

        assert pg.audit() == [({"code": "cd   "}, "insert", ["code", "name"], None, {"code": "cd", "name": "x"})]

    def test_a_key_the_database_compares_differently_is_read_on_its_own(self, tmp_path: Path) -> None:
        from sessiontrace.audit.snapshot import select_requested

        engine = create_engine(f"sqlite:///{tmp_path / 'nocase.sqlite3'}")
        with engine.begin() as conn:  # a collation none of the known key forms covers
            conn.execute(text("CREATE TABLE edge_branch (code CHAR(5) COLLATE NOCASE PRIMARY KEY, name VARCHAR(20))"))
            conn.execute(text("INSERT INTO edge_branch VALUES ('ab', 'kept')"))
        plan = Auditor(AUDIT, None, {}, {}, False).plan_for(EdgeBranch.__mapper__)
        assert plan is not None
        with engine.connect() as conn:
            rows = select_requested(conn, plan, [("AB",), ("zz",)])
        engine.dispose()
        assert rows == {("AB",): {"code": "ab", "name": "kept"}}


class TestEnumMembersInPlainColumns:
    def test_members_are_recorded_as_the_column_stores_them(self, db: Db) -> None:
        with db.maker() as orm:
            ticket = EdgeTicket(id=1, status=Status.OPEN, priority=Priority.HIGH, kind=Kind.CLAIM)
            orm.add(ticket)
            orm.flush()
            with sessiontrace.session() as deleting:
                orm.delete(ticket)  # the previous values are the members still in memory
                orm.flush()
            orm.commit()

        stored = {"id": 1, "status": "open", "priority": 2, "kind": "CLAIM"}
        assert [(r[1], r[3], r[4]) for r in db.audit()] == [("insert", None, stored), ("delete", stored, None)]
        revert_session(db.engine, deleting.id, tables=Base.metadata, key=KEY)
        assert db.table("SELECT status, priority, kind FROM edge_ticket") == [("open", 2, "CLAIM")]


class TestRecordIds:
    def test_a_row_keeps_one_record_id_whatever_offset_its_key_was_given_with(self, db: Db) -> None:
        with sessiontrace.session() as first, db.maker.begin() as orm:
            orm.add(EdgeReading(sensor=1, at=AT, value=10))
        with sessiontrace.session(), db.maker.begin() as orm:
            orm.scalars(select(EdgeReading)).one().value = 20  # a later session corrects the reading

        ids = [r[0] for r in db.audit()]
        assert ids[0] == ids[1]
        if db.backend == "postgresql":
            assert ids[0] == {"sensor": 1, "at": "2024-05-06T07:00:00+00:00"}
        else:  # SQLite keeps the wall time without its offset
            assert ids[0] == {"sensor": 1, "at": "2024-05-06T09:00:00"}
        plan = revert_session(db.engine, first.id, tables=Base.metadata, key=KEY, dry_run=True)
        assert [c.field for c in plan.conflicts] == ["value"]  # so a revert cannot delete the later work


class TestJsonBooleansAndNumbers:
    def test_a_bulk_update_from_1_to_true_is_audited(self, db: Db) -> None:
        with db.maker() as orm:
            orm.add(EdgeSetting(id=1, value={"enabled": 1, "ids": [0]}))
            orm.commit()
            orm.execute(update(EdgeSetting).where(EdgeSetting.id == 1).values(value={"enabled": True, "ids": [False]}))
            orm.commit()

        assert db.audit()[1] == (
            {"id": 1},
            "update",
            ["value"],
            {"value": {"enabled": 1, "ids": [0]}},
            {"value": {"enabled": True, "ids": [False]}},
        )

    def test_the_unit_of_work_records_what_it_writes(self, db: Db) -> None:
        with db.maker() as orm:
            setting = EdgeSetting(id=1, value={"enabled": 1})
            orm.add(setting)
            orm.commit()
            assert setting.value == {"enabled": 1}  # loaded again
            setting.value = {"enabled": True}  # equal to SQLAlchemy: it writes nothing ...
            orm.commit()
            assert len(db.audit()) == 1
            stored = _json(db.table("SELECT value FROM edge_setting")[0][0])
            assert stored == {"enabled": 1}
            assert type(stored["enabled"]) is int
            setting.value = {"enabled": True}
            flag_modified(setting, "value")  # ... unless told the value changed
            orm.commit()

        assert db.audit()[1] == (
            {"id": 1},
            "update",
            ["value"],
            {"value": {"enabled": 1}},
            {"value": {"enabled": True}},
        )
