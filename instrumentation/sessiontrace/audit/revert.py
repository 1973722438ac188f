"""Undoing one session's changes: every audited change it made, in reverse order, in one transaction.

``revert_session(bind, session_id)`` reads the session's audit rows (newest ``seq`` first) and undoes
each: an update sets the changed fields back to their previous values, an insert deletes the record,
a delete inserts it again with its previous values. Values are decoded by the column's type
(``encoding.decode_value``), so ``Decimal``, aware datetimes, UUIDs and bytes come back exactly; what
the trigger mode recorded (``to_jsonb`` renderings) too: numbers in JSON columns and ``numeric``
arrays keep their digits, ``bytea`` arrays their bytes, and dates Python cannot hold (``infinity``,
BC) are read back by the server. Generated columns are left for the database to compute, and a
re-inserted ``GENERATED ALWAYS`` identity keeps its recorded value (``OVERRIDING SYSTEM VALUE``).

It refuses (``RevertRefusedError``, carrying the plan) unless ``force=True`` when

- a later change by another session (or by no session) touched a field the session changed: the
  revert would silently undo that work too. These **conflicts** are listed (table, record, field,
  later session, seq); forced, the revert overwrites the later values;
- a value to restore was recorded masked (``"[MASKED]"``): it cannot be restored. These are the
  **blockers**; forced, those fields are left as they are (an update) or to the column's default
  (a re-inserted row), and ``plan.skipped`` says so.

The revert is itself a new session (``trigger_source="system"``, ``trigger_type="audit revert"``,
``session.previous_id`` = the reverted session, on its span), and it is audited like any change: on
PostgreSQL tables audited by the trigger mode, the triggers write the rows (attributed through
``postgres.set_context``); elsewhere ``write_changes(..., source="revert")`` does, with the chain
``key`` on SQLite. ``dry_run=True`` returns the plan and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    MetaData,
    Table,
    Text,
    and_,
    cast,
    delete,
    insert,
    literal,
    or_,
    select,
    text,
    type_coerce,
    types,
    update,
)
from sqlalchemy.exc import NoSuchTableError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert
from sqlalchemy.types import TypeEngine

from sessiontrace import _values
from sessiontrace._stored import load_json, stored_text, strings, uuid_text
from sessiontrace.audit.encoding import MASKED, JsonValue, decode_value, encode_value
from sessiontrace.audit.errors import AuditError
from sessiontrace.audit.mixin import stamp_values
from sessiontrace.audit.schema import AUDIT_TABLE, CHANGE_TYPES, audit_log_table
from sessiontrace.audit.writer import Change, write_changes

__all__ = [
    "Blocker",
    "Conflict",
    "Operation",
    "RevertError",
    "RevertPlan",
    "RevertRefusedError",
    "SessionNotFoundError",
    "revert_session",
]

TRIGGER_TYPE = "audit revert"
_AUDIT_TRIGGER = "sessiontrace_audit"  # postgres.py's trigger-mode trigger


class RevertError(AuditError):
    """A revert could not be planned or applied (nothing was changed)."""


class SessionNotFoundError(RevertError):
    """The audit log has no change made by that session."""


class RevertRefusedError(RevertError):
    """Conflicts or blockers, without ``force``: ``plan`` lists them; nothing was changed."""

    def __init__(self, plan: RevertPlan) -> None:
        reasons = []
        if plan.conflicts:
            reasons.append(f"{len(plan.conflicts)} conflict(s) with later sessions")
        if plan.blockers:
            reasons.append(f"{len(plan.blockers)} value(s) were recorded masked and cannot be restored")
        super().__init__(
            f"not reverting session {plan.session_id}: {'; '.join(reasons)} (force to revert the rest anyway)"
        )
        self.plan = plan


@dataclass(frozen=True, slots=True)
class Operation:
    """One planned undo: ``action`` (``update``, ``delete`` or ``insert``) on a record, undoing the
    audit row ``seq`` (whose ``change_type`` was ``undoes``)."""

    seq: int
    table: str
    record_id: str
    undoes: str
    action: str
    fields: tuple[str, ...]
    values: Mapping[str, JsonValue]
    """The values restored, as recorded (empty for a delete)."""

    def __str__(self) -> str:
        fields = f" ({', '.join(self.fields)})" if self.action == "update" else ""
        return f"seq {self.seq}: undo {self.undoes} of {self.table} {self.record_id}: {self.action}{fields}"


@dataclass(frozen=True, slots=True)
class Conflict:
    """A later change by another session (``later_session``, ``None`` for none) to a field the
    reverted session changed at ``seq``."""

    table: str
    record_id: str
    field: str
    seq: int
    later_seq: int
    later_session: str | None

    def __str__(self) -> str:
        who = f"session {self.later_session}" if self.later_session else "a change without a session"
        return (
            f"{self.table} {self.record_id} field {self.field}: changed at seq {self.seq}, "
            f"then by {who} at seq {self.later_seq}"
        )


@dataclass(frozen=True, slots=True)
class Blocker:
    """A value that cannot be restored (``reason``), in the change at ``seq``."""

    table: str
    record_id: str
    field: str
    seq: int
    reason: str

    def __str__(self) -> str:
        return f"{self.table} {self.record_id} field {self.field} (seq {self.seq}): {self.reason}"


@dataclass(frozen=True, slots=True)
class RevertPlan:
    """What reverting ``session_id`` does (``operations``, in order) and what stands in its way."""

    session_id: str
    operations: tuple[Operation, ...]
    conflicts: tuple[Conflict, ...]
    blockers: tuple[Blocker, ...]
    dry_run: bool = False
    forced: bool = False
    applied: bool = False
    revert_session_id: str | None = None
    """The new session that made the revert (when ``applied``)."""
    skipped: tuple[str, ...] = field(default=())
    """Operations a forced revert could not apply as planned, and what it did instead."""

    @property
    def refused(self) -> bool:
        return bool(self.blockers or self.conflicts) and not self.forced


@dataclass(frozen=True, slots=True)
class _Step:
    operation: Operation
    record: dict[str, Any]  # the record id, exact (Decimal for non-integers)
    exact: dict[str, Any]  # values to restore, exact
    recorded: Mapping[str, JsonValue]  # the audit row's values (new for an insert, previous otherwise)
    trigger: bool  # written by the trigger mode (to_jsonb renderings)


def revert_session(
    bind: Engine | Connection,
    session_id: str,
    *,
    tables: MetaData | Iterable[Table] | None = None,
    dry_run: bool = False,
    force: bool = False,
    key: bytes | None = None,
    audit_table: str = AUDIT_TABLE,
    schema: str | None = None,
    user_id: str | None = None,
) -> RevertPlan:
    """Undo every change of ``session_id`` in reverse order, in one transaction, as a new audited
    session; return the plan (``applied`` set, ``revert_session_id`` the new session).

    ``tables`` gives the audited tables (a ``MetaData`` or ``Table`` objects, looked up by the
    ``table_name`` the log records); tables not given are reflected. ``key`` is the chain key where
    Python chains (SQLite). ``user_id`` is who is reverting. With an Engine the revert commits; with
    a Connection it joins the caller's transaction.

    Raises ``ValueError`` if ``session_id`` is not a UUID, ``SessionNotFoundError`` if the log has
    no change by it, ``RevertRefusedError`` on conflicts or masked values (unless ``force``).
    """
    sid = _values.session_id(session_id)
    audit = audit_log_table(MetaData(), audit_table, schema)
    catalog = _Catalog(tables)
    with _transaction(bind) as conn:
        steps = _steps(conn, audit, sid)
        _check_tables(conn, steps, catalog)
        if not dry_run:
            _lock(conn, steps, catalog)
        blockers = tuple(_blockers(steps))
        conflicts = tuple(_conflicts(conn, audit, sid, steps))
        plan = RevertPlan(
            session_id=sid,
            operations=tuple(s.operation for s in steps),
            conflicts=conflicts,
            blockers=blockers,
            dry_run=dry_run,
            forced=force,
        )
        if dry_run:
            return plan
        if plan.refused:
            raise RevertRefusedError(plan)
        import sessiontrace

        with sessiontrace.session(
            previous_id=sid, trigger_source="system", trigger_type=TRIGGER_TYPE, user_id=user_id
        ) as reverting:
            skipped = _apply(conn, steps, catalog, audit, key, force)
        return replace(plan, applied=True, revert_session_id=reverting.id, skipped=tuple(skipped))


# --- planning ----------------------------------------------------------------------------------------


class _Damaged(RevertError):
    """An audit row the revert needs is not of the shape the log writes (see ``_steps``)."""

    def __init__(self, seq: object, problem: str) -> None:
        super().__init__(
            f"audit row seq {seq} is damaged: {problem}; it cannot be reverted"
            " (run `sessiontrace audit verify` to check the log)"
        )


def _load(value: str | None, column: str, seq: object) -> tuple[Any, Any]:
    """A JSON object column's text as (plain JSON, exact: non-integer numbers as ``Decimal``);
    ``_Damaged`` if it is anything but an object or NULL."""
    if value is None:
        return None, None
    plain, ok = load_json(value)
    if not ok or not (plain is None or isinstance(plain, dict)):
        raise _Damaged(seq, f"{column} is not a JSON object ({_values.shown(value)})")
    return plain, json.loads(value, parse_float=Decimal)


def _steps(conn: Connection, audit: Table, sid: str) -> list[_Step]:
    c = audit.c
    statement = (
        select(
            c.seq,
            c.table_name,
            c.record_id,
            c.change_type,
            cast(c.changed_fields, Text),
            cast(c.previous_values, Text),
            cast(c.new_values, Text),
            c.source,
        )
        .where(c.session_id == sid)
        .order_by(c.seq.desc().nulls_first(), c.id.desc())
    )
    rows = conn.execute(statement).all()
    if not rows:
        raise SessionNotFoundError(f"the audit log has no change made by session {sid}")
    steps = []
    for seq, table_name, record_id, change_type, fields_text, previous_text, new_text, source in rows:
        if seq is None:
            raise RevertError(f"audit rows of session {sid} are not chained (seq is NULL): verify the log first")
        # The log is input too (a superuser, a hand edit): a row the revert would act on must have
        # the shape the writer gives it, or the revert would undo something else than was done.
        if type(seq) is not int:
            raise _Damaged(_values.shown(seq), "its seq is not a whole number")
        if change_type not in CHANGE_TYPES:
            raise _Damaged(seq, f"change_type {_values.shown(change_type)} is not one of {', '.join(CHANGE_TYPES)}")
        if not isinstance(table_name, str) or not table_name:
            raise _Damaged(seq, f"table_name {_values.shown(table_name)} names no table")
        loaded, ok = load_json(fields_text)
        fields = strings(loaded) if ok else None
        if fields is None:
            raise _Damaged(seq, f"changed_fields is not a JSON list of column names ({_values.shown(fields_text)})")
        previous, previous_exact = _load(previous_text, "previous_values", seq)
        new, _ = _load(new_text, "new_values", seq)
        key, ok = load_json(record_id)
        if not ok or not isinstance(key, dict) or not key:
            raise _Damaged(seq, f"record_id {_values.shown(record_id)} is not a JSON object of primary key values")
        record = json.loads(record_id, parse_float=Decimal)
        if change_type == "insert":
            action, values, exact, recorded = "delete", {}, {}, new or {}
        elif change_type == "update":
            previous, previous_exact = previous or {}, previous_exact or {}
            missing = [f for f in fields if f not in previous]
            if missing:  # restoring them would write NULL over the record, not what it held
                raise _Damaged(seq, f"previous_values lacks the changed field(s) {', '.join(missing)}")
            action, recorded = "update", previous
            values = {f: previous.get(f) for f in fields}
            exact = {f: previous_exact.get(f) for f in fields}
        else:
            action, values, exact, recorded = "insert", previous or {}, previous_exact or {}, previous or {}
        operation = Operation(
            seq=seq,
            table=table_name,
            record_id=record_id,
            undoes=change_type,
            action=action,
            fields=fields if action != "insert" else tuple(values),
            values=values,
        )
        steps.append(_Step(operation, record, exact, recorded, source == "trigger"))
    return steps


def _check_tables(conn: Connection, steps: list[_Step], catalog: _Catalog) -> None:
    """Every table and column the rows name must still exist: a dry run refuses what the revert
    would, naming the row."""
    for step in steps:
        op = step.operation
        try:
            table = catalog.table(conn, op.table)
        except RevertError as exc:
            raise RevertError(f"audit row seq {op.seq}: {exc}") from None
        wanted = [*step.record, *(name for name, value in op.values.items() if value != MASKED)]
        gone = [_values.shown(name) for name in wanted if name not in table.c]  # repr: no control characters
        if gone:
            raise RevertError(
                f"audit row seq {op.seq}: {table.fullname} has no column {', '.join(gone)} any more: cannot restore it"
            )


def _blockers(steps: list[_Step]) -> Iterator[Blocker]:
    for step in steps:
        for name, value in step.operation.values.items():
            if value == MASKED:
                op = step.operation
                yield Blocker(op.table, op.record_id, name, op.seq, "recorded masked: the value cannot be restored")


def _conflicts(conn: Connection, audit: Table, sid: str, steps: list[_Step]) -> Iterator[Conflict]:
    c = audit.c
    by_record: dict[tuple[str, str], list[_Step]] = {}
    for step in steps:
        by_record.setdefault((step.operation.table, step.operation.record_id), []).append(step)
    seen: set[tuple[str, str, str, int]] = set()
    for (table_name, record_id), record_steps in by_record.items():
        first = min(s.operation.seq for s in record_steps)
        later_rows = conn.execute(
            # The session as stored: the Uuid type would raise on a value that is no UUID.
            select(c.seq, type_coerce(c.session_id, Text), cast(c.changed_fields, Text))
            .where(
                c.table_name == table_name,
                c.record_id == record_id,
                c.seq > first,
                or_(c.session_id.is_(None), c.session_id != sid),
            )
            .order_by(c.seq)
        ).all()
        for later_seq, later_session, later_fields in later_rows:
            loaded, ok = load_json(later_fields)
            later = strings(loaded) if ok else None
            if later is None:  # what it touched is unknown: refuse rather than guess no conflict
                shown = _values.shown(later_fields)
                raise _Damaged(later_seq, f"changed_fields is not a JSON list of column names ({shown})")
            touched = set(later)
            session = uuid_text(later_session) or stored_text(later_session)  # as stored, if no UUID
            for step in sorted(record_steps, key=lambda s: s.operation.seq):
                op = step.operation
                if later_seq <= op.seq:
                    continue
                for name in op.fields:
                    if name in touched and (table_name, record_id, name, later_seq) not in seen:
                        seen.add((table_name, record_id, name, later_seq))
                        yield Conflict(table_name, record_id, name, op.seq, later_seq, session)


def _lock(conn: Connection, steps: list[_Step], catalog: _Catalog) -> None:
    """On PostgreSQL, lock the rows the revert will touch before looking for conflicts: a change
    committed between that look and the revert would otherwise be overwritten unseen. A change in
    flight is waited for, then seen by the conflict check. (SQLite runs one writer at a time: a
    write after a concurrent commit fails instead.)"""
    if conn.dialect.name != "postgresql":
        return
    locked: set[tuple[str, str]] = set()
    for step in steps:
        op = step.operation
        if (op.table, op.record_id) in locked:
            continue
        locked.add((op.table, op.record_id))
        table = catalog.table(conn, op.table)
        conn.execute(select(*table.primary_key.columns).where(_where(table, step)).with_for_update()).all()


# --- applying ------------------------------------------------------------------------------------------


class _Catalog:
    """Tables by the name the log records, given or reflected; and whether triggers audit them."""

    def __init__(self, tables: MetaData | Iterable[Table] | None) -> None:
        given = tables.tables.values() if isinstance(tables, MetaData) else (tables or ())
        self._tables: dict[str, Table] = {t.fullname: t for t in given}
        self._triggered: dict[str, bool] = {}
        self._reflected = MetaData()

    def table(self, conn: Connection, name: str) -> Table:
        found = self._tables.get(name)
        if found is None:
            schema, _, bare = name.rpartition(".")
            try:
                found = Table(bare, self._reflected, schema=schema or None, autoload_with=conn)
            except NoSuchTableError:
                raise RevertError(f"table {_values.shown(name)} (named in the audit log) does not exist") from None
            self._tables[name] = found
        return found

    def triggered(self, conn: Connection, name: str) -> bool:
        """Whether the PostgreSQL trigger mode audits ``name`` (then we must not write audit rows)."""
        if conn.dialect.name != "postgresql":
            return False
        if name not in self._triggered:
            table = self.table(conn, name)
            preparer = conn.dialect.identifier_preparer
            qualified = (f"{preparer.quote_schema(table.schema)}." if table.schema else "") + preparer.quote(table.name)
            self._triggered[name] = bool(
                conn.execute(
                    text(
                        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(:t)"
                        " AND tgname = :n AND tgenabled <> 'D')"
                    ),
                    {"t": qualified, "n": _AUDIT_TRIGGER},
                ).scalar_one()
            )
        return self._triggered[name]


def _column(table: Table, name: str) -> Column[Any]:
    try:
        return table.c[name]
    except KeyError:
        raise RevertError(f"{table.fullname} has no column {name} any more: cannot restore it") from None


def _floats(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    return value


def _python_type(column_type: TypeEngine[Any]) -> type | None:
    if isinstance(column_type, types.TypeDecorator):
        column_type = column_type.impl_instance
    try:
        return column_type.python_type
    except NotImplementedError:
        return None


def _json_text(value: Any) -> str:
    """``value`` as ``jsonb::text`` renders it, numbers with the digits they were read with."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, list):
        return "[" + ", ".join(_json_text(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(k, ensure_ascii=False)}: {_json_text(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return json.dumps(value, ensure_ascii=False)


def _array_items(item_type: TypeEngine[Any], value: Any) -> Any:
    """A trigger-mode array (nested lists of ``to_jsonb`` items) for an array of ``item_type``."""
    if isinstance(value, list):
        return [_array_items(item_type, v) for v in value]
    if value is None or isinstance(value, bool):
        return value
    python_type = _python_type(item_type)
    if python_type is Decimal:
        return Decimal(value)  # every item: psycopg refuses an array of Decimal and int together
    if python_type is float:
        return float(value)
    if python_type is bytes and isinstance(value, str) and value.startswith("\\x"):
        return bytes.fromhex(value[2:])
    return _floats(value)


def _decode(column: Column[Any], exact: Any, trigger: bool) -> Any:
    """The value to write back into ``column``: ``Decimal`` only for decimal columns, bytes from
    the trigger mode's ``\\x`` hex rendering or our base64. In trigger mode a JSON column gets the
    recorded text (floats would round its numbers) and a date Python cannot hold goes to the
    server as text."""
    if exact is None:
        return None
    column_type = column.type
    if isinstance(column_type, types.TypeDecorator):
        column_type = column_type.impl_instance
    python_type = _python_type(column_type)
    if trigger and isinstance(column_type, types.JSON):
        return cast(literal(_json_text(exact), Text), column.type)
    if trigger and isinstance(column_type, types.ARRAY):
        return _array_items(column_type.item_type, exact)
    if trigger and python_type in (date, datetime) and isinstance(exact, str):
        try:
            return decode_value(column, exact)
        except ValueError:  # infinity, -infinity, BC dates, years past 9999: the server reads its own output
            return cast(literal(exact, Text), column.type)
    if python_type is Decimal:
        return decode_value(column, exact)
    plain = _floats(exact)
    if trigger and python_type is bytes and isinstance(plain, str) and plain.startswith("\\x"):
        return bytes.fromhex(plain[2:])
    return decode_value(column, plain)


class _InsertOverridingSystemValue(Insert):
    """``INSERT ... OVERRIDING SYSTEM VALUE``: PostgreSQL takes a value for a ``GENERATED ALWAYS``
    identity only with it, and SQLAlchemy cannot say it."""

    inherit_cache = True


@compiles(_InsertOverridingSystemValue, "postgresql")
def _overriding_system_value(statement: _InsertOverridingSystemValue, compiler: SQLCompiler, **kw: Any) -> str:
    # Only bound parameters and casts follow the column list: the last " VALUES (" is the clause.
    rendered: str = compiler.visit_insert(statement, **kw)  # type: ignore[no-untyped-call]
    head, _, values = rendered.rpartition(" VALUES (")
    return f"{head} OVERRIDING SYSTEM VALUE VALUES ({values}"


def _insert(table: Table, values: dict[str, Any]) -> Insert:
    """An INSERT of ``values`` (no generated column among them) into ``table``."""
    if any((identity := table.c[name].identity) is not None and identity.always for name in values):
        return _InsertOverridingSystemValue(table).values(values)
    return insert(table).values(values)


def _apply(
    conn: Connection, steps: list[_Step], catalog: _Catalog, audit: Table, key: bytes | None, force: bool
) -> list[str]:
    moment = datetime.now(timezone.utc)
    if conn.dialect.name == "postgresql":
        from sessiontrace.audit.postgres import set_context

        set_context(conn)  # the trigger mode attributes the revert's rows to the new session
    pending: list[Change] = []
    skipped: list[str] = []

    def flush() -> None:
        write_changes(conn, pending, audit_table=audit, key=key, source="revert", timestamp=moment)
        pending.clear()

    for step in steps:
        op = step.operation
        table = catalog.table(conn, op.table)
        triggered = catalog.triggered(conn, op.table)
        if triggered:
            flush()  # keep the log in the order the changes are made
        where = _where(table, step)
        masked = sorted(name for name, value in op.values.items() if value == MASKED)
        if masked:  # only when forced: blockers refuse otherwise
            skipped.append(f"{op}: {', '.join(masked)} recorded masked, not restored")
        # The database computes generated columns (and refuses a value for them) from the rest.
        generated = {column.name for column in table.c if column.computed is not None}
        restored = {
            name: _decode(_column(table, name), v, step.trigger)
            for name, v in step.exact.items()
            if name not in masked and name not in generated
        }
        stamps = {} if triggered else {k: v for k, v in stamp_values(moment).items() if k in table.c}
        # The trigger mode writes its own audit rows: only whether the record exists matters (and
        # reading values back could meet one the driver cannot load, such as an infinite date).
        recorded_fields = [f for f in op.fields if f in table.c and not triggered]
        current = _current(conn, table, where, recorded_fields)
        action = op.action
        if action == "insert" and current is not None:
            if not force:
                raise RevertError(f"{op.table} {op.record_id} exists again: cannot re-insert it (seq {op.seq})")
            skipped.append(f"{op}: the record exists again, its values were restored by an update")
            action = "update"
        elif action != "insert" and current is None:
            if not force:
                raise RevertError(f"{op.table} {op.record_id} no longer exists (seq {op.seq})")
            skipped.append(f"{op}: the record no longer exists, skipped")
            continue

        if action == "update":
            if restored:
                conn.execute(update(table).where(where).values({**restored, **stamps}))
        elif action == "delete":
            conn.execute(delete(table).where(where))
        else:
            record = {
                k: _decode(_column(table, k), v, step.trigger) for k, v in step.record.items() if k not in generated
            }
            conn.execute(_insert(table, {**record, **restored, **stamps}))
        if triggered:
            continue
        change = _change(op, action, table, current, step)
        if change is not None:
            pending.append(change)
    flush()
    return skipped


def _where(table: Table, step: _Step) -> ColumnElement[bool]:
    """The recorded primary key of ``step``'s record, as a condition on ``table``."""
    return and_(*(_column(table, k) == _decode(_column(table, k), v, step.trigger) for k, v in step.record.items()))


def _current(conn: Connection, table: Table, where: ColumnElement[bool], names: list[str]) -> dict[str, Any] | None:
    columns = [table.c[n] for n in names] or list(table.primary_key.columns)
    statement = select(*columns).where(where)
    if conn.dialect.name == "postgresql":
        statement = statement.with_for_update()
    row = conn.execute(statement).mappings().first()
    return dict(row) if row is not None else None


def _change(op: Operation, action: str, table: Table, current: dict[str, Any] | None, step: _Step) -> Change | None:
    record_id = json.loads(op.record_id)

    def encoded(name: str) -> JsonValue:
        if step.recorded.get(name) == MASKED:
            return MASKED
        return encode_value((current or {}).get(name), f"{table.fullname}.{name}")

    if action == "delete":
        fields = [f for f in op.fields if f in table.c]
        return Change(op.table, record_id, "delete", fields, {f: encoded(f) for f in fields}, None)
    if action == "insert":
        return Change(op.table, record_id, "insert", list(op.values), None, dict(op.values))
    names = [f for f in op.values if current is None or encoded(f) != op.values[f]]
    if not names:
        return None
    return Change(
        op.table, record_id, "update", names, {f: encoded(f) for f in names}, {f: op.values[f] for f in names}
    )


@contextmanager
def _transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """An Engine gets its own transaction, committed; on a Connection the work joins the caller's
    transaction (begun if none), which the caller commits or rolls back."""
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            yield conn
    else:
        yield bind
