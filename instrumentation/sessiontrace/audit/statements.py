"""Auditing ORM-enabled ``insert()`` / ``update()`` / ``delete()`` run with ``Session.execute``.

These bypass the unit of work, so ``do_orm_execute`` audits them around the statement, on the
session's connection in the same transaction, inside a savepoint: when the audit fails (a value
that cannot be encoded, a changed primary key, the audit row refused) the statement is undone to
it, so a caller that handles the error and commits does not commit an unaudited change.

- ``update`` / ``delete``: select the rows the statement's WHERE matches (``FOR UPDATE`` on
  PostgreSQL), run it, read those rows again by primary key, record the differences: a row
  still there was not deleted, one unchanged was not updated (options such as
  ``with_loader_criteria`` narrow the statement beyond its WHERE). A statement that changed a row
  another transaction committed after that select is undone to a savepoint and run again. Bulk
  UPDATE by primary key (a list of parameter dicts) is read by those keys. Objects in the session
  whose rows changed are brought up to date where the ORM did not (``synchronize_session=False``,
  changes not flushed yet), so that the next flush records the values the rows really held.
- ``insert``: add ``RETURNING`` of the audited columns and record every returned row. The
  ``Audited`` columns are stamped on every row: in the single-row VALUES, in each row of a
  multi-row VALUES, in every parameter set of an executemany, or as extra columns of an
  ``INSERT ... SELECT``.
- upserts (``on_conflict_do_update`` of the PostgreSQL and SQLite dialects): before running,
  select the rows that already hold the conflict target's values; each returned row whose key was
  there (or came earlier in the same statement) is an update (with its previous values), the
  others are inserts. On PostgreSQL RETURNING also says which branch each row took, and an upsert
  that raced another transaction's insert is undone to a savepoint and run again.
  ``on_conflict_do_nothing`` returns only the rows it inserted. ``on_conflict_do_update`` also
  gets the ``Audited`` columns in its SET clause, so the rows it updates are stamped too. An
  upsert from a SELECT is refused: which rows it would update is not known before it runs.
- ``Session.bulk_insert_mappings`` / ``bulk_update_mappings`` / ``bulk_save_objects`` fire no
  event at all: for audited classes ``enable_auditing`` replaces them with the equivalent
  ``insert()`` / ``update()`` statements run through the session, audited as above.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    SelectBase,
    Update,
    insert,
    inspect,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql.dml import OnConflictDoNothing as PgDoNothing
from sqlalchemy.dialects.postgresql.dml import OnConflictDoUpdate as PgDoUpdate
from sqlalchemy.dialects.sqlite.dml import OnConflictDoNothing as SqliteDoNothing
from sqlalchemy.dialects.sqlite.dml import OnConflictDoUpdate as SqliteDoUpdate
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.state import InstanceState

from sessiontrace.audit.auditor import Auditor
from sessiontrace.audit.errors import AuditError
from sessiontrace.audit.mixin import Audited, stamp_values
from sessiontrace.audit.plan import Field, TablePlan
from sessiontrace.audit.snapshot import PkValues, Rows, pk_condition, select_by_pk, select_where
from sessiontrace.audit.writer import Change

_STATEMENT_SAVEPOINT = "sessiontrace_statement"


@dataclass(slots=True)
class _Audit:
    """What one statement changed: its audit rows and, for the objects in the session, which rows."""

    changes: list[Change] = field(default_factory=list)
    # Per updated row (by primary key), the new values of the fields that changed, by attribute key.
    updated: dict[PkValues, dict[str, Any]] = field(default_factory=dict)
    deleted: list[PkValues] = field(default_factory=list)
    # The ORM copied the new values into the session's objects itself (synchronize_session).
    synchronized: bool = False

    def update(self, plan: TablePlan, key: PkValues, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
        change = plan.updated(key, before, after)
        if change is not None:
            self.changes.append(change)
            changed = self.updated.setdefault(key, {})
            for name in change.changed_fields:
                attribute = plan.by_name[name].key
                changed[attribute] = after[attribute]


def do_orm_execute(auditor: Auditor, state: ORMExecuteState) -> Result[Any] | None:
    if not (state.is_insert or state.is_update or state.is_delete):
        return None  # SELECTs: the common case, one attribute check
    mapper = state.bind_mapper
    plan = auditor.plan_for(mapper) if mapper is not None else None
    if plan is None:
        return None
    connection = state.session.connection(bind_arguments={"mapper": plan.mapper})
    moment = datetime.now(timezone.utc)
    stamp = _stamp(plan, moment)
    undoable = _open_savepoint(connection)
    try:
        if state.is_insert:
            result, audit = _insert(state, plan, connection, stamp)
        else:
            result, audit = _update_or_delete(state, plan, connection, stamp, retry=undoable)
        auditor.write(connection, audit.changes, moment)
    except BaseException:
        # Whatever failed, the statement must not stay in the transaction without its audit rows.
        if undoable:
            _undo(connection, state.session, plan)
        raise
    if undoable:
        connection.exec_driver_sql(f"RELEASE SAVEPOINT {_STATEMENT_SAVEPOINT}")
    _synchronize(state.session, plan, audit, stamp)
    return result


def _open_savepoint(connection: Connection) -> bool:
    """Open the savepoint the statement and its audit run in; ``False`` where the connection
    commits every statement by itself (there is no transaction to undo it in)."""
    if connection.dialect.name == "sqlite":
        driver: Any = connection.connection.driver_connection
        if not getattr(driver, "in_transaction", True):
            level = getattr(driver, "isolation_level", "")
            if level is None:  # the driver's autocommit mode
                return False
            # pysqlite opens its transaction only before an INSERT, UPDATE or DELETE: a SAVEPOINT
            # first would open one itself, and releasing that savepoint would commit.
            connection.exec_driver_sql(f"BEGIN {level}")
    else:
        dbapi_connection = connection.connection.dbapi_connection
        try:
            if dbapi_connection is None or connection.dialect.detect_autocommit_setting(dbapi_connection):
                return False
        except NotImplementedError:
            pass  # a dialect that cannot tell: it runs in a transaction as SQLAlchemy's default
    connection.exec_driver_sql(f"SAVEPOINT {_STATEMENT_SAVEPOINT}")
    return True


def _undo(connection: Connection, session: Session, plan: TablePlan) -> None:
    try:
        connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_STATEMENT_SAVEPOINT}")
        connection.exec_driver_sql(f"RELEASE SAVEPOINT {_STATEMENT_SAVEPOINT}")
    except Exception:
        # The change could not be undone (the connection broke): it must never be committed, so
        # the transaction can now only be rolled back.
        connection.invalidate()
        return
    _expire_undone(session, plan)


def _expire_undone(session: Session, plan: TablePlan) -> None:
    """After a statement was undone: the ORM may have copied its values into objects in the session
    (synchronize_session, RETURNING of entities); they are read again, but for changes the
    application has not flushed. (Objects the ORM took out of the session for an undone DELETE stay
    out of it.)"""
    identity = {f.key for f in plan.pk}
    for state in list(session.identity_map.all_states()):
        instance = state.obj()
        if instance is not None and state.mapper.isa(plan.mapper):
            loaded = [p.key for p in state.mapper.column_attrs if p.key in state.unmodified and p.key not in identity]
            if loaded:
                session.expire(instance, loaded)


def _synchronize(session: Session, plan: TablePlan, audit: _Audit, stamp: Mapping[str, Any] | None) -> None:
    """Bring the session's objects whose rows the statement changed up to date where the ORM did
    not, so that the next flush records the values the rows hold now as the previous ones.

    With ``synchronize_session=False`` (and for upserts, which the ORM never synchronizes) the
    changed attributes are expired, and an object whose row was deleted is expired whole (reading
    it then raises ``ObjectDeletedError``, as for any row deleted behind the session's back). An
    attribute with a change not flushed yet keeps that change (expiring it would drop it), with
    the row's current value as its previous one."""
    if not audit.updated and not audit.deleted:
        return
    identity_map = session.identity_map
    for key in audit.deleted:
        instance = identity_map.get(plan.mapper.identity_key_from_primary_key(key))
        if instance is not None:
            session.expire(instance)
    for key, new in audit.updated.items():
        instance = identity_map.get(plan.mapper.identity_key_from_primary_key(key))
        if instance is None:
            continue
        state = instance_state(instance)
        stale = [] if audit.synchronized else [k for k in stamp or () if k in state.unmodified]
        for attribute, value in new.items():
            if attribute in state.committed_state:
                # ``committed_state`` holds an attribute's value before the application's change:
                # what the flush's history (and its audit row) compares the new value with.
                state.committed_state[attribute] = value
            elif not audit.synchronized:
                stale.append(attribute)
        if stale:
            session.expire(instance, stale)


def _stamp(plan: TablePlan, moment: datetime) -> dict[str, Any] | None:
    return stamp_values(moment) if issubclass(plan.mapper.class_, Audited) else None


def _param_list(state: ORMExecuteState) -> list[Mapping[str, Any]]:
    params = state.parameters
    if isinstance(params, Mapping):
        return [params] if params else []
    return list(params or [])


def _synchronizes(state: ORMExecuteState) -> bool:
    """Whether the ORM copies the statement's changes into the session's objects itself."""
    return state.execution_options.get("synchronize_session", "auto") not in (False, None)


def _update_or_delete(
    state: ORMExecuteState, plan: TablePlan, connection: Connection, stamp: dict[str, Any] | None, *, retry: bool
) -> tuple[Result[Any], _Audit]:
    """Run the UPDATE or DELETE and read what it changed. ``retry``: the connection is in a
    transaction, where a statement that raced another transaction's insert can be undone to a
    savepoint and run again."""
    statement = state.statement
    assert isinstance(statement, (Update, Delete))
    updating = isinstance(statement, Update)
    if not updating:
        stamp = None
    if state.is_executemany:  # bulk UPDATE by primary key: one parameter dict per row
        params = _param_list(state)
        keys = [_pk_of(plan, p) for p in params]
        if any(k is None for k in keys):
            raise AuditError(
                f"cannot audit a bulk {statement.__visit_name__} of {plan.table_name} without primary keys"
            )
        before = select_by_pk(connection, plan, [k for k in keys if k is not None], lock=True)
        result = state.invoke_statement(params=[stamp] * len(params) if stamp else None)
    else:
        if stamp and isinstance(statement, Update):
            statement = _stamp_update(statement, plan, stamp)
        result, before = _run_where(state, statement, plan, connection, retry=retry)
    after = select_by_pk(connection, plan, before.keys())
    audit = _Audit(synchronized=_synchronizes(state))
    for key, row in before.items():
        new_row = after.get(key)
        if not updating:
            if new_row is None:
                audit.changes.append(plan.deleted(row))
                audit.deleted.append(key)
        elif new_row is None:
            raise AuditError(f"cannot audit a bulk update of {plan.table_name} that changes primary keys")
        else:
            audit.update(plan, key, row, new_row)
    return result, audit


def _run_where(
    state: ORMExecuteState, statement: Update | Delete, plan: TablePlan, connection: Connection, *, retry: bool
) -> tuple[Result[Any], dict[PkValues, dict[str, Any]]]:
    """Run a statement with a WHERE clause after reading (and locking) the rows it matches: the
    ORM may narrow it further (with_loader_criteria), so which of them it changed is read again
    afterwards. A row another transaction committed after that read is changed too (the statement
    takes a new snapshot) but was not read: the statement is undone to a savepoint and run again,
    now reading that row, as an un-audited statement would have changed it."""
    for _ in range(_RACE_ATTEMPTS if retry else 1):
        if retry:
            connection.exec_driver_sql(f"SAVEPOINT {_RACE_SAVEPOINT}")
        before = select_where(connection, plan, statement.whereclause, lock=True)
        result = state.invoke_statement(statement=statement)
        touched = getattr(result, "rowcount", -1)
        if not (isinstance(touched, int) and touched > len(before)):
            if retry:
                connection.exec_driver_sql(f"RELEASE SAVEPOINT {_RACE_SAVEPOINT}")
            return result, before
        if retry:
            connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {_RACE_SAVEPOINT}")
            _expire_undone(state.session, plan)
    raise AuditError(
        f"cannot audit this bulk {statement.__visit_name__} of {plan.table_name}: other transactions kept "
        f"adding matching rows while it ran ({_RACE_ATTEMPTS if retry else 1} attempt(s)); it was undone, "
        "run it again"
    )


_RACE_ATTEMPTS = 5
_RACE_SAVEPOINT = "sessiontrace_race"


def _stamp_update(statement: Update, plan: TablePlan, stamp: Mapping[str, Any]) -> Update:
    """``statement`` with ``stamp`` added to its SET clause.

    An ``ordered_values()`` SET can take neither ``values()`` nor a second ``ordered_values()``,
    and has no public accessor: it is read (SQLAlchemy 2.0 keeps the pairs in ``_ordered_values``,
    2.1 in ``_values`` with ``_maintain_values_ordering``), cleared on a copy of the statement
    (``_generate``, as its generative methods do) and set again with the stamp columns last; a
    stamp column it sets itself is replaced, as in every other ORM write."""
    pairs: Any = getattr(statement, "_ordered_values", None)  # SQLAlchemy 2.0
    if pairs is None and getattr(statement, "_maintain_values_ordering", False):  # 2.1
        pairs = list((statement._values or {}).items())
    if pairs is None:
        return statement.values(**stamp)
    copy: Any = statement._generate()
    if hasattr(copy, "_ordered_values"):
        copy._ordered_values = None
    else:
        copy._values = None
        copy._maintain_values_ordering = False
    stamped: Update = copy.ordered_values(*_stamped(plan, stamp, dict(pairs)).items())
    return stamped


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
    state: ORMExecuteState, plan: TablePlan, connection: Connection, stamp: dict[str, Any] | None
) -> tuple[Result[Any], _Audit]:
    statement = state.statement
    assert isinstance(statement, Insert)
    params = _param_list(state)
    invoke_params: list[dict[str, Any]] | dict[str, Any] | None = None
    if stamp:
        if state.is_executemany:
            invoke_params = [stamp] * len(params)
        elif statement.select is not None:
            statement = _stamp_from_select(statement, plan, stamp)
        elif statement._multi_values:
            statement = _stamp_multi_values(statement, plan, stamp)
        else:
            statement = statement.values(**stamp)
        statement = _stamp_upsert_set(statement, plan, stamp)
    conflict = statement._post_values_clause
    upsert = conflict is not None and not isinstance(conflict, (PgDoNothing, SqliteDoNothing))
    if not upsert or conflict is None:
        return _run_insert(state, statement, invoke_params, plan, {}, checked=False)
    if statement.select is not None:
        raise AuditError(
            f"cannot audit an upsert into {plan.table_name} from a SELECT: which rows it updates (and their "
            "previous values) cannot be known before it runs; give its rows as VALUES or parameters"
        )
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
) -> tuple[Result[Any], _Audit]:
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
    audit = _Audit()  # the ORM never copies an upsert's changes into the session's objects
    for row in rows:
        if checked:
            row, inserted = row[:-1], row[-1]
            if not inserted and tuple(row[:width]) not in existing:
                raise _RaceLost
        key = tuple(row[:width])
        values = dict(zip(keys, row, strict=True))
        previous = existing.get(key)
        if previous is None:
            audit.changes.append(plan.inserted(values))
        else:
            audit.update(plan, key, previous, values)
        # SQLite lets one upsert give the same key twice: the second row updates the first.
        existing[key] = values
    return result, audit


def _stamp_from_select(statement: Insert, plan: TablePlan, stamp: Mapping[str, Any]) -> Insert:
    """``statement``, an ``INSERT ... SELECT``, with the stamp columns added to its column list
    and, as bound values, to its SELECT (which becomes a subquery, whatever kind of SELECT it is);
    a stamp column it names itself is replaced, as in every other ORM write. ``from_select`` on
    the statement replaces its column list and SELECT and keeps everything else; the column list
    it was given has no public accessor (``_select_names``)."""
    selected = statement.select
    if not isinstance(selected, SelectBase):
        raise AuditError(f"cannot audit an INSERT ... SELECT into {plan.table_name} from {selected!r}")
    columns = {plan.mapper.columns[key]: value for key, value in stamp.items()}
    taken = _names(columns) | set(stamp)
    names = list(statement._select_names or ())
    kept = [i for i, name in enumerate(names) if _names([name]).isdisjoint(taken)]
    source = selected.subquery()
    given = list(source.c)
    stamped = select(*(given[i] for i in kept), *(literal(v, type_=c.type) for c, v in columns.items()))
    return statement.from_select(
        [*(names[i] for i in kept), *columns],
        stamped,
        include_defaults=statement.include_insert_from_select_defaults,
    )


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


# --- Session.bulk_insert_mappings / bulk_update_mappings / bulk_save_objects ------------------------


def audited_bulk_methods(auditor: Auditor, session_class: type[Session]) -> dict[str, Callable[..., None]]:
    """Replacements for ``session_class``'s legacy bulk methods, which write without firing any
    session event: for audited classes they run the ``insert()`` / ``update()`` statements the ORM
    documents as their equivalents through the session (``do_orm_execute`` audits them), without
    autoflush and with ``synchronize_session=False``, as the legacy methods leave the session
    alone (objects in it whose rows they change are then expired, see ``_synchronize``); other
    classes go to the methods they replace."""
    insert_mappings = session_class.bulk_insert_mappings
    update_mappings = session_class.bulk_update_mappings
    save_objects = session_class.bulk_save_objects

    @functools.wraps(insert_mappings)
    def bulk_insert_mappings(
        self: Session,
        mapper: Any,
        mappings: Iterable[dict[str, Any]],
        return_defaults: bool = False,
        render_nulls: bool = False,
    ) -> None:
        plan = _plan_of(auditor, mapper)
        if plan is None:
            insert_mappings(self, mapper, mappings, return_defaults=return_defaults, render_nulls=render_nulls)
            return
        rows = list(mappings)
        generated = _insert_rows(self, plan, rows, return_defaults=return_defaults, render_nulls=render_nulls)
        if return_defaults:
            # As the legacy method does, the given dictionaries receive what the database generated.
            for row, values in zip(rows, generated, strict=True):
                for key, value in values.items():
                    if row.get(key) is None:
                        row[key] = value

    @functools.wraps(update_mappings)
    def bulk_update_mappings(self: Session, mapper: Any, mappings: Iterable[dict[str, Any]]) -> None:
        plan = _plan_of(auditor, mapper)
        if plan is None:
            update_mappings(self, mapper, mappings)
        else:
            _update_rows(self, plan, list(mappings))

    @functools.wraps(save_objects)
    def bulk_save_objects(
        self: Session,
        objects: Iterable[object],
        return_defaults: bool = False,
        update_changed_only: bool = True,
        preserve_order: bool = True,
    ) -> None:
        instances = list(objects)  # holds the objects while their states are in use
        states = [instance_state(instance) for instance in instances]
        if not preserve_order:  # grouped as the legacy method groups them
            states.sort(key=lambda state: (id(state.mapper), state.key is not None))
        for (mapper, updating), group in itertools.groupby(states, lambda state: (state.mapper, state.key is not None)):
            batch = list(group)
            plan = auditor.plan_for(mapper)
            if plan is None:
                save_objects(
                    self,
                    [state.obj() for state in batch],
                    return_defaults=return_defaults,
                    update_changed_only=update_changed_only,
                    preserve_order=True,
                )
            elif updating:
                _update_rows(
                    self, plan, [_object_row(state, plan, changed_only=update_changed_only) for state in batch]
                )
            else:
                rows = [_object_row(state, plan, changed_only=False) for state in batch]
                generated = _insert_rows(self, plan, rows, return_defaults=return_defaults, render_nulls=False)
                if return_defaults:
                    for state, values in zip(batch, generated, strict=True):
                        _received_defaults(state, values)

    return {
        "bulk_insert_mappings": bulk_insert_mappings,
        "bulk_update_mappings": bulk_update_mappings,
        "bulk_save_objects": bulk_save_objects,
    }


def _plan_of(auditor: Auditor, mapper: Any) -> TablePlan | None:
    found = inspect(mapper, raiseerr=False)
    return auditor.plan_for(found) if isinstance(found, Mapper) else None


def _insert_rows(
    session: Session, plan: TablePlan, rows: list[dict[str, Any]], *, return_defaults: bool, render_nulls: bool
) -> list[dict[str, Any]]:
    """INSERT ``rows`` (parameter dicts by attribute key); with ``return_defaults``, per row and
    in their order, the values the database generated (primary key and columns with defaults)."""
    if not rows:  # an executemany of nothing would be one INSERT of defaults
        return []
    statement = insert(plan.mapper).execution_options(render_nulls=render_nulls, autoflush=False)
    if not return_defaults:
        session.execute(statement, rows)
        return []
    generated = [
        (key, column)
        for key, column in plan.mapper.columns.items()
        if isinstance(column, Column)
        and (column.primary_key or column.default is not None or column.server_default is not None)
    ]
    returning = statement.returning(*(column for _, column in generated), sort_by_parameter_order=True)
    keys = [key for key, _ in generated]
    return [dict(zip(keys, row, strict=True)) for row in session.execute(returning, rows)]


def _update_rows(session: Session, plan: TablePlan, rows: list[dict[str, Any]]) -> None:
    """UPDATE by primary key, one parameter dict per row; a row with nothing to set is left
    alone, as the legacy methods leave it (here it would still be stamped)."""
    matched_by = _matched_by(plan)
    rows = [row for row in rows if not matched_by.issuperset(row)]
    if rows:  # an executemany of nothing would be one UPDATE of every row
        options = {"synchronize_session": False, "autoflush": False}
        session.execute(update(plan.mapper).execution_options(**options), rows)


def _matched_by(plan: TablePlan) -> set[str]:
    """The attributes an UPDATE by primary key is matched by: the primary key and version counter."""
    mapper = plan.mapper
    keys = {f.key for f in plan.pk}
    if mapper.version_id_col is not None:
        keys.add(mapper.get_property_by_column(mapper.version_id_col).key)
    return keys


def _object_row(state: InstanceState[Any], plan: TablePlan, *, changed_only: bool) -> dict[str, Any]:
    """An object's column values as a parameter dict; with ``changed_only`` those the application
    changed, and the primary key and version counter the UPDATE is matched by."""
    columns = {prop.key for prop in state.mapper.column_attrs}
    matched_by = _matched_by(plan)
    return {
        key: value
        for key, value in state.dict.items()
        if key in columns and (not changed_only or key in state.committed_state or key in matched_by)
    }


def _received_defaults(state: InstanceState[Any], values: Mapping[str, Any]) -> None:
    """A new object given to ``bulk_save_objects(return_defaults=True)``: it takes what the
    database generated and, as with the legacy method, gets its identity (it is not added to the
    session: it becomes detached)."""
    instance = state.obj()
    if instance is None:
        return
    for key, value in values.items():
        if state.dict.get(key) is None:
            set_committed_value(instance, key, value)
    if state.key is None and state.session_id is None:
        make_transient_to_detached(instance)
