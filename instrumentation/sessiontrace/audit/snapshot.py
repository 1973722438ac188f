"""Reading audited rows as they are now, inside the writing transaction.

Used where the ORM does not hold the values an audit row needs: rows a bulk statement is about to
change (selected with its own WHERE, ``FOR UPDATE`` on PostgreSQL so nobody changes them in
between), the values after it, and attributes that were expired when the application changed or
deleted an object.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, select, tuple_

from sessiontrace.audit.plan import Field, TablePlan

PkValues = tuple[Any, ...]
Rows = dict[PkValues, dict[str, Any]]
"""Rows by primary key values; each row maps attribute keys to values."""

# Bound parameters per IN list: far below SQLite's (32,766) and PostgreSQL's (65,535) limits.
_CHUNK = 8_000


def _rows(connection: Connection, plan: TablePlan, where: ColumnElement[bool] | None, lock: bool) -> Rows:
    statement = select(*(f.column for f in plan.selected)).select_from(plan.table)
    if where is not None:
        statement = statement.where(where)
    if lock and connection.dialect.name == "postgresql":
        statement = statement.with_for_update()
    width = len(plan.pk)
    keys = [f.key for f in plan.selected]
    found: Rows = {}
    for row in connection.execute(statement):
        found[tuple(row[:width])] = dict(zip(keys, row, strict=True))
    return found


def select_where(connection: Connection, plan: TablePlan, where: ColumnElement[bool] | None, *, lock: bool) -> Rows:
    """The rows ``where`` matches (all rows if ``None``)."""
    return _rows(connection, plan, where, lock)


def pk_condition(pk: Sequence[Field], values: Collection[PkValues]) -> ColumnElement[bool]:
    if len(pk) == 1:
        return pk[0].column.in_([v[0] for v in values])
    return tuple_(*(f.column for f in pk)).in_(list(values))


def select_by_pk(connection: Connection, plan: TablePlan, values: Collection[PkValues], *, lock: bool = False) -> Rows:
    """The rows with these primary key values (missing ones are simply absent)."""
    found: Rows = {}
    ordered = list(dict.fromkeys(values))
    step = max(1, _CHUNK // len(plan.pk))
    for start in range(0, len(ordered), step):
        found.update(_rows(connection, plan, pk_condition(plan.pk, ordered[start : start + step]), lock))
    return found


def select_requested(connection: Connection, plan: TablePlan, values: Collection[PkValues]) -> Rows:
    """The rows with these primary key values, by the values *as given* (``select_by_pk`` keys them
    as the database returns them, which may differ: ``CHAR(n)`` padded, UUID text lower-cased).

    One SELECT; a key that matches no returned row as given is matched by ``TablePlan.key_form``,
    and one that still matches none is read on its own, compared by the database itself (a
    collation or type our forms do not know). Missing rows are simply absent."""
    requested = list(dict.fromkeys(values))
    found = select_by_pk(connection, plan, requested)
    rows: Rows = {}
    unmatched: list[PkValues] = []
    for key in requested:
        row = found.get(key)
        if row is None:
            unmatched.append(key)
        else:
            rows[key] = row
    if not unmatched:
        return rows
    dialect = connection.dialect
    by_form = {plan.key_form(key, dialect): row for key, row in found.items()}
    for key in unmatched:
        row = by_form.get(plan.key_form(key, dialect))
        if row is None:
            one = _rows(connection, plan, and_(*(f.column == v for f, v in zip(plan.pk, key, strict=True))), False)
            row = next(iter(one.values())) if len(one) == 1 else None
        if row is not None:
            rows[key] = row
    return rows
