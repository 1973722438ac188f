"""Auditing the unit of work: everything ``Session.flush()`` inserts, updates and deletes.

``before_flush`` stamps the ``Audited`` columns and reads, in one SELECT per table, the values
the flush will need but the ORM does not hold (attributes that were expired when they were
changed or deleted). ``after_flush`` runs when the flush's statements have executed, inside the
same transaction, while the session still knows what was new and each attribute's previous value:
it turns the flush's states into changes and writes them with one ``executemany``. Relationship
cascades (delete-orphan, foreign keys set to NULL) are in the flush's states like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.orm import Mapper, Session, UOWTransaction
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.orm.state import InstanceState

from sessiontrace.audit.auditor import Auditor
from sessiontrace.audit.errors import AuditError
from sessiontrace.audit.mixin import Audited, stamp_values
from sessiontrace.audit.plan import TablePlan
from sessiontrace.audit.snapshot import select_by_pk
from sessiontrace.audit.writer import Change

_FLUSH = "sessiontrace.audit.flush"


@dataclass(slots=True)
class _Flush:
    """What ``before_flush`` leaves for ``after_flush`` (in ``session.info`` for one flush)."""

    auditor: Auditor
    moment: datetime
    known: dict[InstanceState[Any], dict[str, Any]]  # database values read before the flush


def _needs_previous(state: InstanceState[Any], plan: TablePlan, deleting: bool) -> bool:
    committed = state.committed_state
    if deleting:
        loaded = state.dict
        return any(f.key not in loaded and committed.get(f.key, NO_VALUE) is NO_VALUE for f in plan.selected)
    return any(value is NO_VALUE and key in plan.by_key for key, value in committed.items())


def before_flush(auditor: Auditor, session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    moment = datetime.now(timezone.utc)
    pending = _Flush(auditor, moment, {})
    session.info[_FLUSH] = pending
    stamp: dict[str, Any] | None = None
    missing: dict[TablePlan, list[InstanceState[Any]]] = {}
    for obj in session.new:
        if isinstance(obj, Audited):
            stamp = stamp or stamp_values(moment)
            for key, value in stamp.items():
                setattr(obj, key, value)
    for obj in session.dirty:
        if not isinstance(obj, Audited) or not session.is_modified(obj, include_collections=False):
            continue
        state = instance_state(obj)
        plan = auditor.plan_for(state.mapper)
        if plan is not None and _needs_previous(state, plan, deleting=False):
            missing.setdefault(plan, []).append(state)
        stamp = stamp or stamp_values(moment)
        for key, value in stamp.items():
            setattr(obj, key, value)
    for obj in session.deleted:
        if isinstance(obj, Audited):
            state = instance_state(obj)
            plan = auditor.plan_for(state.mapper)
            if plan is not None and _needs_previous(state, plan, deleting=True):
                missing.setdefault(plan, []).append(state)
    for plan, states in missing.items():
        connection = session.connection(bind_arguments={"mapper": plan.mapper})
        rows = select_by_pk(connection, plan, [_identity(s) for s in states])
        for state in states:
            row = rows.get(_identity(state))
            if row is not None:
                pending.known[state] = row


def _identity(state: InstanceState[Any]) -> tuple[Any, ...]:
    assert state.key is not None
    return tuple(state.key[1])


def _read_previous_in_flush(connection: Connection, state: InstanceState[Any], deleting: bool) -> None:
    """Objects the flush itself changes (a delete-orphan, a foreign key set to NULL) were not in
    ``before_flush``'s lists: read what is missing of them now, before their row changes."""
    session = state.session
    pending = session.info.get(_FLUSH) if session is not None else None
    if not isinstance(pending, _Flush) or state in pending.known or state.key is None:
        return
    plan = pending.auditor.plan_for(state.mapper)
    if plan is not None and _needs_previous(state, plan, deleting=deleting):
        row = select_by_pk(connection, plan, [_identity(state)]).get(_identity(state))
        if row is not None:
            pending.known[state] = row


@event.listens_for(Audited, "before_update", propagate=True, raw=True)
def _before_update(mapper: Mapper[Any], connection: Connection, state: InstanceState[Any]) -> None:
    _read_previous_in_flush(connection, state, deleting=False)


@event.listens_for(Audited, "before_delete", propagate=True, raw=True)
def _before_delete(mapper: Mapper[Any], connection: Connection, state: InstanceState[Any]) -> None:
    _read_previous_in_flush(connection, state, deleting=True)


def after_flush(session: Session, flush_context: UOWTransaction) -> None:
    pending = session.info.pop(_FLUSH, None)
    if not isinstance(pending, _Flush):
        return
    auditor = pending.auditor
    new_states = {instance_state(obj) for obj in session.new}
    work: list[tuple[TablePlan, InstanceState[Any], str]] = []
    reload: dict[TablePlan, list[InstanceState[Any]]] = {}
    for state, (is_delete, list_only) in flush_context.states.items():
        if list_only:
            continue
        plan = auditor.plan_for(state.mapper)
        if plan is None:
            continue
        kind = "delete" if is_delete else "insert" if state in new_states else "update"
        if kind == "update" and not any(key in plan.by_key for key in state.committed_state):
            continue
        work.append((plan, state, kind))
        if kind != "delete" and _needs_current(state, plan, kind):
            reload.setdefault(plan, []).append(state)

    # In the order the flush executed them (parents inserted before children, children deleted
    # before parents), so the chain's order is the database's and a revert can undo it backwards.
    work.sort(key=_execution_order)
    connections: dict[TablePlan, Connection] = {}

    def connection_for(plan: TablePlan) -> Connection:
        found = connections.get(plan)
        if found is None:
            found = connections[plan] = session.connection(bind_arguments={"mapper": plan.mapper})
        return found

    current: dict[InstanceState[Any], dict[str, Any]] = {}
    for plan, states in reload.items():
        rows = select_by_pk(connection_for(plan), plan, [_current_pk(plan, s) for s in states])
        for state in states:
            row = rows.get(_current_pk(plan, state))
            if row is not None:
                current[state] = row

    batches: dict[Connection, list[Change]] = {}
    for plan, state, kind in work:
        change = _change(plan, state, kind, pending.known.get(state), current.get(state))
        if change is not None:
            batches.setdefault(connection_for(plan), []).append(change)
    for connection, changes in batches.items():
        auditor.write(connection, changes, pending.moment)


_TABLE_RANK: dict[Any, int] = {}
"""Position of each table in its metadata's dependency order (parents first)."""


def _execution_order(item: tuple[TablePlan, InstanceState[Any], str]) -> tuple[bool, int]:
    table = item[0].mapper.local_table
    rank = _TABLE_RANK.get(table)
    if rank is None:
        metadata = getattr(table, "metadata", None)
        ordered = metadata.sorted_tables if metadata is not None else [table]
        _TABLE_RANK.update({each: index for index, each in enumerate(ordered)})
        rank = _TABLE_RANK.get(table, 0)
    deleting = item[2] == "delete"
    return deleting, -rank if deleting else rank


def _needs_current(state: InstanceState[Any], plan: TablePlan, kind: str) -> bool:
    loaded = state.dict
    if kind == "insert":
        # A column the INSERT left out with no default of any kind is NULL; only a server-side
        # value that was not fetched back needs reading.
        return any(f.key not in loaded and _server_generated(f.column) for f in plan.selected)
    return any(key not in loaded for key in state.committed_state if key in plan.by_key)


def _server_generated(column: Any) -> bool:
    return bool(
        column.server_default is not None
        or column.server_onupdate is not None
        or column.default is not None
        or (column.primary_key and column.autoincrement)
    )


def _current_pk(plan: TablePlan, state: InstanceState[Any]) -> tuple[Any, ...]:
    loaded = state.dict
    return tuple(loaded[f.key] for f in plan.pk)


def _change(
    plan: TablePlan,
    state: InstanceState[Any],
    kind: str,
    known: dict[str, Any] | None,
    current: dict[str, Any] | None,
) -> Change | None:
    loaded = state.dict
    committed = state.committed_state
    if kind == "insert":
        values = {f.key: _value(plan, f.key, loaded, current, "insert") for f in plan.selected}
        return plan.inserted(values)
    if kind == "delete":
        before = {}
        for f in plan.selected:
            previous = committed.get(f.key, NO_VALUE)
            if previous is NO_VALUE:
                previous = _value(plan, f.key, loaded, known, "delete")
            before[f.key] = previous
        return plan.deleted(before)
    keys = [key for key in committed if key in plan.by_key]
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    for key in keys:
        previous = committed[key]
        if previous is NO_VALUE:
            if known is None or key not in known:
                raise AuditError(f"cannot audit the update of {plan.table_name}: the previous {key!r} is unknown")
            previous = known[key]
        old[key] = previous
        new[key] = _value(plan, key, loaded, current, "update")
    return plan.updated(_identity(state), old, new, keys)


def _value(plan: TablePlan, key: str, loaded: dict[str, Any], read: dict[str, Any] | None, kind: str) -> Any:
    if key in loaded:
        return loaded[key]
    if read is not None and key in read:
        return read[key]
    if kind == "insert":
        return None  # left out of the INSERT and nothing generates it: NULL
    raise AuditError(f"cannot audit the {kind} of a {plan.table_name} row: {key!r} could not be read")
