"""Auditing ORM-enabled ``insert()`` / ``update()`` / ``delete()`` run with ``Session.execute``.

These bypass the unit of work, so ``do_orm_execute`` audits them around the statement, on the
session's connection in the same transaction:

- ``update`` / ``delete``: select the rows the statement's WHERE matches (``FOR UPDATE`` on
  PostgreSQL), run it, read the updated rows again by primary key, record the differences. Bulk
  UPDATE by primary key (a list of parameter dicts) is read by those keys.
- ``insert``: add ``RETURNING`` of the audited columns and record every returned row. The
  ``Audited`` columns are stamped on every row: in the single-row VALUES, in each row of a
  multi-row VALUES, or in every parameter set of an executemany.
- upserts (``on_conflict_do_update`` of the PostgreSQL and SQLite dialects): before running,
  select the rows that already hold the conflict target's values; each returned row whose key was
  there is an update (with its previous values), the others are inserts. On PostgreSQL RETURNING
  also says which branch each row took, and an upsert that raced another transaction's insert is
  undone to a savepoint and run again. ``on_conflict_do_nothing`` returns only the rows it
  inserted. ``on_conflict_do_update`` also gets the ``Audited`` columns in its SET clause, so the
  rows it updates are stamped too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BindParameter,
    ClauseElement,
    Column,
    ColumnClause,
    Connection,
    Delete,
    Insert,
    Result,
    Update,
    literal_column,
)
from sqlalchemy.dialects.postgresql.dml import OnConflictDoNothing as PgDoNothing
from sqlalchemy.dialects.postgresql.dml import OnConflictDoUpdate as PgDoUpdate
from sqlalchemy.dialects.sqlite.dml import OnConflictDoNothing as SqliteDoNothing
from sqlalchemy.dialects.sqlite.dml import OnConflictDoUpdate as SqliteDoUpdate
from sqlalchemy.orm import ORMExecuteState

from sessiontrace.audit.auditor import Auditor
from sessiontrace.audit.errors import AuditError
from sessiontrace.audit.mixin import Audited, stamp_values
from sessiontrace.audit.plan import Field, TablePlan
from sessiontrace.audit.snapshot import PkValues, Rows, pk_condition, select_by_pk, select_where
from sessiontrace.audit.writer import Change


def do_orm_execute(auditor: Auditor, state: ORMExecuteState) -> Result[Any] | None:
    if not (state.is_insert or state.is_update or state.is_delete):
        return None  # SELECTs: the common case, one attribute check
    mapper = state.bind_mapper
    plan = auditor.plan_for(mapper) if mapper is not None else None
    if plan is None:
        return None
    connection = state.session.connection(bind_arguments={"mapper": plan.mapper})
    moment = datetime.now(timezone.utc)
    if state.is_insert:
        result, changes = _insert(state, plan, connection, moment)
    else:
        result, changes = _update_or_delete(state, plan, connection, moment)
    auditor.write(connection, changes, moment)
    return result


def _stamp(plan: TablePlan, moment: datetime) -> dict[str, Any] | None:
    return stamp_values(moment) if issubclass(plan.mapper.class_, Audited) else None


def _param_list(state: ORMExecuteState) -> list[Mapping[str, Any]]:
    params = state.parameters
    if isinstance(params, Mapping):
        return [params] if params else []
    return list(params or [])


def _update_or_delete(
    state: ORMExecuteState, plan: TablePlan, connection: Connection, moment: datetime
) -> tuple[Result[Any], list[Change]]:
    statement = state.statement
    assert isinstance(statement, (Update, Delete))
    updating = isinstance(statement, Update)
    stamp = _stamp(plan, moment) if updating else None
    by_pk = state.is_executemany  # bulk UPDATE by primary key: one parameter dict per row
    if by_pk:
        params = _param_list(state)
        keys = [_pk_of(plan, p) for p in params]
        if any(k is None for k in keys):
            raise AuditError(
                f"cannot audit a bulk {statement.__visit_name__} of {plan.table_name} without primary keys"
            )
        before = select_by_pk(connection, plan, [k for k in keys if k is not None], lock=True)
        result = state.invoke_statement(params=[stamp] * len(params) if stamp else None)
    else:
        before = select_where(connection, plan, statement.whereclause, lock=True)
        if stamp and isinstance(statement, Update):
            statement = statement.values(**stamp)
        result = state.invoke_statement(statement=statement)
    if not updating:
        return result, [plan.deleted(row) for row in before.values()]
    after = select_by_pk(connection, plan, before.keys())
    changes: list[Change] = []
    for key, row in before.items():
        new_row = after.get(key)
        if new_row is None:
            raise AuditError(f"cannot audit a bulk update of {plan.table_name} that changes primary keys")
        change = plan.updated(key, row, new_row)
        if change is not None:
            changes.append(change)
    return result, changes


def _pk_of(plan: TablePlan, params: Mapping[str, Any]) -> PkValues | None:
    values = []
    for f in plan.pk:
        if f.key in params:
            values.append(params[f.key])
        elif f.name in params:
            values.append(params[f.name])
        else:
            return None
    return tuple(values)


def _insert(
    state: ORMExecuteState, plan: TablePlan, connection: Connection, moment: datetime
) -> tuple[Result[Any], list[Change]]:
    statement = state.statement
    assert isinstance(statement, Insert)
    stamp = _stamp(plan, moment)
    params = _param_list(state)
    invoke_params: list[dict[str, Any]] | dict[str, Any] | None = None
    if stamp:
        if state.is_executemany:
            invoke_params = [stamp] * len(params)
        elif statement._multi_values:
            statement = _stamp_multi_values(statement, plan, stamp)
        else:
            statement = statement.values(**stamp)
        statement = _stamp_upsert_set(statement, plan, stamp)
    conflict = statement._post_values_clause
    upsert = conflict is not None and not isinstance(conflict, (PgDoNothing, SqliteDoNothing))
    if not upsert or conflict is None:
        return _run_insert(state, statement, invoke_params, plan, {}, checked=False)
    if connection.dialect.name != "postgresql":
        # SQLite: the write lock is taken by the first write, so another writer's insert between
        # our read and our upsert makes our write fail (busy), never take the wrong branch.
        existing = _conflicting_rows(statement, conflict, plan, params, connection)
        return _run_insert(state, statement, invoke_params, plan, existing, checked=False)
    # PostgreSQL: another transaction may insert a conflicting row after we read which rows exist
    # and before our upsert runs; our row then takes the UPDATE branch and its previous values
    # were never read. RETURNING says which branch each row took; on a mismatch the upsert is
    # undone to a savepoint and run again, now seeing that row.
    for _ in range(_UPSERT_ATTEMPTS):
        connection.exec_driver_sql(f"SAVEPOINT {_SAVEPOINT}")
        existing = _conflicting_rows(statement, conflict, plan, params, connection)
        try:
            outcome = _run_insert(state, statement, invoke_params, plan, existing, checked=True)
        except _RaceLost:
            connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            continue
        connection.exec_driver_sql(f"RELEASE SAVEPOINT {_SAVEPOINT}")
        return outcome
    raise AuditError(
        f"cannot audit an upsert into {plan.table_name}: other transactions kept inserting rows with its "
        f"conflict target's values while it ran ({_UPSERT_ATTEMPTS} attempts); the upsert was undone"
    )


_UPSERT_ATTEMPTS = 5
_SAVEPOINT = "sessiontrace_upsert"
# PostgreSQL, in RETURNING: true for a row the statement inserted, false for one it updated.
_INSERTED: ColumnClause[Any] = literal_column("xmax = 0")


class _RaceLost(Exception):
    """A row took the UPDATE branch of an upsert although no row with its key existed when read."""


def _run_insert(
    state: ORMExecuteState,
    statement: Insert,
    invoke_params: list[dict[str, Any]] | dict[str, Any] | None,
    plan: TablePlan,
    existing: Rows,
    *,
    checked: bool,
) -> tuple[Result[Any], list[Change]]:
    """Run the INSERT with RETURNING of the audited columns; a returned row whose key was in
    ``existing`` is an update from those values, any other an insert. ``checked``: also return
    which branch each row took (PostgreSQL) and raise ``_RaceLost`` when that disagrees."""
    user_columns = len(statement._returning)
    statement = statement.returning(*(f.column for f in plan.selected), *([_INSERTED] if checked else []))
    result = state.invoke_statement(statement=statement, params=invoke_params)
    keys = [f.key for f in plan.selected]
    width = len(plan.pk)
    if user_columns:
        frozen = result.freeze()
        rows = [tuple(row)[user_columns:] for row in frozen()]
        result = frozen().columns(*range(user_columns))
    else:
        rows = [tuple(row) for row in result]
    changes: list[Change] = []
    for row in rows:
        if checked:
            row, inserted = row[:-1], row[-1]
            if not inserted and tuple(row[:width]) not in existing:
                raise _RaceLost
        values = dict(zip(keys, row, strict=True))
        previous = existing.get(tuple(row[:width]))
        if previous is None:
            changes.append(plan.inserted(values))
        else:
            change = plan.updated(tuple(row[:width]), previous, values)
            if change is not None:
                changes.append(change)
    return result, changes


def _names(keys: Iterable[Any]) -> set[str]:
    """The names VALUES / SET keys go by: strings (attribute or column keys) and columns' keys and names."""
    names: set[str] = set()
    for key in keys:
        if isinstance(key, str):
            names.add(key)
        else:
            names.update(n for n in (getattr(key, "key", None), getattr(key, "name", None)) if isinstance(n, str))
    return names


def _stamped(plan: TablePlan, stamp: Mapping[str, Any], given: Mapping[Any, Any]) -> dict[Any, Any]:
    """``given`` (a VALUES row or a SET clause) with the stamp columns set to ``stamp``: a value it
    gives one of them itself is replaced, as in every other ORM write (the current session wins)."""
    columns = {plan.mapper.columns[key]: value for key, value in stamp.items()}
    names = _names(columns) | set(stamp)
    kept = {key: value for key, value in given.items() if _names([key]).isdisjoint(names)}
    return {**kept, **columns}


def _stamp_multi_values(statement: Insert, plan: TablePlan, stamp: Mapping[str, Any]) -> Insert:
    """``statement`` with ``stamp`` merged into every row of its multi-row VALUES.

    SQLAlchemy has no public way to replace a multi-row VALUES: ``values([...])`` adds rows to
    those already there, ``values(**stamp)`` cannot be mixed with it, and a new ``insert()`` would
    drop the rest of the statement (RETURNING, ON CONFLICT, hints, options). So the rows are
    rebuilt here, each a mapping (positional rows are in table column order, as SQLAlchemy reads
    them) with the stamp columns set, and set on a copy of the statement, as the statement's own
    generative methods do (``_generate``; ``_multi_values`` holds one list of rows per
    ``values([...])`` call, flattened into one here)."""
    rows: list[dict[Any, Any]] = []
    for given_rows in statement._multi_values:
        for given in given_rows:
            row: Mapping[Any, Any] = (
                given if isinstance(given, Mapping) else dict(zip(plan.table.columns, given, strict=False))
            )
            rows.append(_stamped(plan, stamp, row))
    stamped = statement._generate()
    stamped._multi_values = (rows,)
    return stamped


def _stamp_upsert_set(statement: Insert, plan: TablePlan, stamp: Mapping[str, Any]) -> Insert:
    """``statement`` with ``stamp`` added to the SET clause of its ``on_conflict_do_update``, so
    that the rows it updates are stamped like the ones it inserts; unchanged if it is no such upsert.

    The clause is rebuilt with its own constructor from its public attributes (conflict target,
    SET, WHERE) and set on a copy of the statement (``_generate``) as ``_post_values_clause``
    directly, as ``on_conflict_do_update`` itself does: there is no public way to replace the
    clause (a second ``on_conflict_do_update`` is refused on PostgreSQL and, on SQLite with
    SQLAlchemy 2.1, adds a second clause; 2.0 has no ``ext()``). SQLAlchemy 2.1 keeps several
    SQLite ON CONFLICT clauses in one list element there: each DO UPDATE in it is stamped."""
    conflict = statement._post_values_clause
    if conflict is None:
        return statement
    several: Sequence[Any] | None = getattr(conflict, "clauses", None)  # SQLAlchemy 2.1's list element
    clauses = list(several) if several is not None else [conflict]
    stamped = [_stamped_do_update(c, plan, stamp) for c in clauses]
    if all(new is old for new, old in zip(stamped, clauses, strict=True)):
        return statement
    element_list: Any = type(conflict)
    copy = statement._generate()
    copy._post_values_clause = element_list(stamped) if several is not None else stamped[0]
    return copy


def _stamped_do_update(clause: Any, plan: TablePlan, stamp: Mapping[str, Any]) -> Any:
    """An ``on_conflict_do_update`` clause like ``clause`` whose SET also assigns the stamp columns;
    ``clause`` itself if it is not one."""
    if not stamp or not isinstance(clause, (PgDoUpdate, SqliteDoUpdate)):
        return clause
    set_ = _stamped(plan, stamp, dict(clause.update_values_to_set))
    target: dict[str, Any] = {
        "index_elements": clause.inferred_target_elements,
        "index_where": clause.inferred_target_whereclause,
    }
    if isinstance(clause, PgDoUpdate) and clause.constraint_target is not None:
        target = {"constraint": clause.constraint_target}
    return type(clause)(**target, set_=set_, where=clause.update_whereclause)


def _conflicting_rows(
    statement: Insert,
    conflict: ClauseElement,
    plan: TablePlan,
    params: Sequence[Mapping[str, Any]],
    connection: Connection,
) -> Rows:
    """The rows an upsert will update: those already holding its conflict target's values."""
    target = _conflict_columns(conflict, plan)
    names = [c.name for c in target]
    candidates: list[PkValues] = []
    for row in _inserted_values(statement, plan, params):
        if any(name not in row for name in names):
            raise AuditError(
                f"cannot audit an upsert into {plan.table_name}: the values of its conflict target {names} "
                "must be given as plain values"
            )
        candidates.append(tuple(row[name] for name in names))
    if not candidates:
        return {}
    fields = [Field(c.name, c, c.name, f"{plan.table_name}.{c.name}", False) for c in target]
    return select_where(connection, plan, pk_condition(fields, candidates), lock=True)


def _conflict_columns(conflict: ClauseElement, plan: TablePlan) -> list[Column[Any]]:
    table = plan.table
    elements = getattr(conflict, "inferred_target_elements", None)
    if elements:
        return [table.c[e] if isinstance(e, str) else table.c[e.name] for e in elements]
    name = getattr(conflict, "constraint_target", None)
    if name:
        for constraint in table.constraints:
            if constraint.name == name:
                return list(constraint.columns)  # type: ignore[attr-defined]
        for index in table.indexes:
            if index.name == name:
                return [c for c in index.columns]
    return [f.column for f in plan.pk]


def _inserted_values(statement: Insert, plan: TablePlan, params: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows an INSERT carries, by column name; values that are SQL expressions are left out."""
    raw: list[Mapping[Any, Any]] = list(params)
    if not raw and statement._multi_values:
        for given_rows in statement._multi_values:  # one list of rows per values([...]) call
            for given_row in given_rows:
                if isinstance(given_row, Mapping):
                    raw.append(given_row)
                else:  # positional, in table column order
                    raw.append(dict(zip(plan.table.columns, given_row, strict=False)))
    if not raw and statement._values:
        raw.append(statement._values)
    rows: list[dict[str, Any]] = []
    for given in raw:
        row: dict[str, Any] = {}
        for key, value in given.items():
            name = key if isinstance(key, str) else getattr(key, "key", None)
            field = plan.lookup.get(name) if isinstance(name, str) else None
            column_name = field.name if field is not None else name
            if isinstance(value, BindParameter):
                value = value.value
            elif isinstance(value, ClauseElement):
                continue
            if isinstance(column_name, str):
                row[column_name] = value
        rows.append(row)
    return rows
