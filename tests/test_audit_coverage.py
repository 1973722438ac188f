"""Which write paths each capture mode audits: every row of the README's coverage table, tested.

ORM mode sees what goes through an audited SQLAlchemy ``Session``; trigger mode (PostgreSQL) sees
every row change the database makes, whoever sends it. A ✗ in the table is tested too: that path
really leaves no audit row in that mode, so the table cannot overstate what we capture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
from sqlalchemy import Engine, ForeignKey, Numeric, String, create_engine, delete, insert, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from _audit_db import scratch_postgres
from sessiontrace.audit import Audited, audit_log_table, enable_auditing
from sessiontrace.audit.postgres import audit_tables, install

KEY = b"coverage-key"


class Base(DeclarativeBase):
    pass


AUDIT = audit_log_table(Base.metadata)


class Order(Audited, Base):
    __tablename__ = "cov_orders"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(20))
    total: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    lines: Mapped[list[Line]] = relationship(back_populates="order", cascade="all, delete-orphan")


class Line(Audited, Base):
    __tablename__ = "cov_lines"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    order_id: Mapped[int] = mapped_column(ForeignKey("cov_orders.id", ondelete="CASCADE"))
    item: Mapped[str] = mapped_column(String(40))
    order: Mapped[Order] = relationship(back_populates="lines")


Path = Callable[[sessionmaker[Session], int], None]


def _unit_of_work(maker: sessionmaker[Session], n: int) -> None:
    with maker.begin() as db:
        db.add(Order(id=n, status="new", total=Decimal("1.00")))
    with maker.begin() as db:
        order = db.get(Order, n)
        assert order is not None
        order.status = "paid"
    with maker.begin() as db:
        db.delete(db.get(Order, n))


def _relationship_cascade(maker: sessionmaker[Session], n: int) -> None:
    with maker.begin() as db:
        db.add(Order(id=n, status="new", total=Decimal("1.00"), lines=[Line(id=n, item="roof tiles")]))
    with maker.begin() as db:
        db.delete(db.get(Order, n))  # the ORM deletes the line first (cascade="all, delete-orphan")


def _orm_bulk_statements(maker: sessionmaker[Session], n: int) -> None:
    with maker.begin() as db:
        db.execute(insert(Order), [{"id": n, "status": "new", "total": Decimal("1.00")}])
        db.execute(update(Order).where(Order.id == n).values(status="paid"))
        db.execute(delete(Order).where(Order.id == n))


def _legacy_bulk_methods(maker: sessionmaker[Session], n: int) -> None:
    with maker.begin() as db:
        db.bulk_insert_mappings(Order, [{"id": n, "status": "new", "total": Decimal("1.00")}])
        db.bulk_update_mappings(Order, [{"id": n, "status": "paid"}])
    with maker.begin() as db:
        order = db.get_one(Order, n)
        order.status = "shipped"
        db.bulk_save_objects([order])


def _upsert(maker: sessionmaker[Session], n: int) -> None:
    for status in ("new", "paid"):  # the first inserts, the second updates
        statement = pg_insert(Order).values(id=n, status=status, total=Decimal("1.00"))
        with maker.begin() as db:
            db.execute(statement.on_conflict_do_update(index_elements=[Order.id], set_={"status": status}))


def _core_statement(maker: sessionmaker[Session], n: int) -> None:
    table = Order.__table__
    with maker.kw["bind"].begin() as conn:
        conn.execute(table.insert().values(id=n, status="new", total=Decimal("1.00")))
        conn.execute(table.update().where(table.c.id == n).values(status="paid"))


def _raw_sql(maker: sessionmaker[Session], n: int) -> None:
    with maker.begin() as db:
        db.execute(text("INSERT INTO cov_orders (id, status, total) VALUES (:n, 'new', 1)"), {"n": n})


def _database_cascade(maker: sessionmaker[Session], n: int) -> None:
    with maker.kw["bind"].begin() as conn:  # ON DELETE CASCADE: the database deletes the line itself
        conn.execute(text("INSERT INTO cov_orders (id, status, total) VALUES (:n, 'new', 1)"), {"n": n})
        conn.execute(text("INSERT INTO cov_lines (id, order_id, item) VALUES (:n, :n, 'x')"), {"n": n})
    with maker.kw["bind"].begin() as conn:
        conn.execute(text("DELETE FROM cov_orders WHERE id = :n"), {"n": n})


# (path, what it must leave in the log under ORM mode, and under trigger mode): (table, change types)
COVERAGE: list[tuple[str, Path, list[tuple[str, str]], list[tuple[str, str]]]] = [
    (
        "ORM unit of work",
        _unit_of_work,
        [("cov_orders", "insert"), ("cov_orders", "update"), ("cov_orders", "delete")],
        [("cov_orders", "insert"), ("cov_orders", "update"), ("cov_orders", "delete")],
    ),
    (
        "relationship cascade",
        _relationship_cascade,
        [("cov_orders", "insert"), ("cov_lines", "insert"), ("cov_lines", "delete"), ("cov_orders", "delete")],
        [("cov_orders", "insert"), ("cov_lines", "insert"), ("cov_lines", "delete"), ("cov_orders", "delete")],
    ),
    (
        "ORM bulk insert/update/delete",
        _orm_bulk_statements,
        [("cov_orders", "insert"), ("cov_orders", "update"), ("cov_orders", "delete")],
        [("cov_orders", "insert"), ("cov_orders", "update"), ("cov_orders", "delete")],
    ),
    (
        "legacy Session.bulk_* methods",
        _legacy_bulk_methods,
        [("cov_orders", "insert"), ("cov_orders", "update"), ("cov_orders", "update")],
        [("cov_orders", "insert"), ("cov_orders", "update"), ("cov_orders", "update")],
    ),
    (
        "upsert",
        _upsert,
        [("cov_orders", "insert"), ("cov_orders", "update")],
        [("cov_orders", "insert"), ("cov_orders", "update")],
    ),
    (
        "Core statement on a Table",
        _core_statement,
        [],
        [("cov_orders", "insert"), ("cov_orders", "update")],
    ),
    ("raw SQL", _raw_sql, [], [("cov_orders", "insert")]),
    (
        "ON DELETE CASCADE in the database",
        _database_cascade,
        [],
        # the parent's row trigger fires before the cascade's
        [("cov_orders", "insert"), ("cov_lines", "insert"), ("cov_orders", "delete"), ("cov_lines", "delete")],
    ),
]


def _rows(engine: Engine, table: str | None, n: int) -> list[tuple[str, str]]:
    query = "SELECT table_name, change_type FROM audit_log WHERE record_id = :rid"
    if table is not None:
        query += " AND table_name = :table"
    with engine.connect() as conn:
        rows = conn.execute(text(query + " ORDER BY seq"), {"rid": f'{{"id":{n}}}', "table": table}).all()
    return [(str(row[0]), str(row[1])) for row in rows]


@pytest.fixture(scope="module", params=["orm", "trigger"])
def mode(request: pytest.FixtureRequest) -> Iterator[tuple[str, sessionmaker[Session]]]:
    with scratch_postgres(f"cov_{request.param}") as url:
        engine = create_engine(url)
        install(engine, key=KEY)
        Base.metadata.create_all(engine)
        maker = sessionmaker(engine)
        if request.param == "orm":
            enable_auditing(maker, audit_table=AUDIT, key=KEY)
        else:
            audit_tables(engine, ["cov_orders", "cov_lines"])
        try:
            yield request.param, maker
        finally:
            engine.dispose()


@pytest.mark.parametrize(("path", "run", "orm_rows", "trigger_rows"), COVERAGE, ids=[row[0] for row in COVERAGE])
def test_coverage_table(
    mode: tuple[str, sessionmaker[Session]],
    path: str,
    run: Path,
    orm_rows: list[tuple[str, str]],
    trigger_rows: list[tuple[str, str]],
) -> None:
    name, maker = mode
    n = 1000 + [row[0] for row in COVERAGE].index(path)
    run(maker, n)
    expected = orm_rows if name == "orm" else trigger_rows
    assert _rows(maker.kw["bind"], None, n) == expected, f"{path} in {name} mode"


def test_truncate_row(mode: tuple[str, sessionmaker[Session]]) -> None:
    """The table's TRUNCATE row: ORM mode cannot see it (no audit row), trigger mode refuses it."""
    name, maker = mode
    engine = maker.kw["bind"]
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS cov_scratch (id int PRIMARY KEY)"))
        conn.execute(text("INSERT INTO cov_scratch VALUES (1) ON CONFLICT DO NOTHING"))
    if name == "trigger":
        audit_tables(engine, ["cov_scratch"])
        with pytest.raises(DBAPIError, match=r"TRUNCATE of .*cov_scratch refused"), engine.begin() as conn:
            conn.execute(text("TRUNCATE cov_scratch"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM cov_scratch")).scalar_one() == 1
    else:
        with engine.connect() as conn:
            before = conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one()
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE cov_scratch"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one() == before
            assert conn.execute(text("SELECT count(*) FROM cov_scratch")).scalar_one() == 0
