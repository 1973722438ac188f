"""Auditing the unit of work: everything ``Session.flush()`` inserts, updates and deletes.

``before_flush`` stamps the ``Audited`` columns and reads, in one SELECT per table, the values
the flush will need but the ORM does not hold (attributes that were expired when they were
changed or deleted). While the flush runs, mapper events note what each object's statement was
and in which order the statements ran (``after_insert`` / ``after_update`` / ``after_delete``),
and, before each UPDATE, the values of the columns it generates itself (``onupdate``,
``server_onupdate``, the version counter). ``after_flush`` runs when the flush's statements have
executed, inside the same transaction, while the session still knows each attribute's previous
value: it turns those notes into changes, in execution order, and writes them with one
``executemany``. Relationship cascades (delete-orphan, foreign keys set to NULL) are in the flush
like any other change. A new object given the primary key of an object deleted in the same flush
is written by SQLAlchemy as one UPDATE of that row (a "row switch"): it is audited as an update
from the deleted object's values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Dialect, event
from sqlalchemy.orm import Mapper, Session, UOWTransaction
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.base import NO_VALUE, PassiveFlag
from sqlalchemy.orm.state import InstanceState

from sessiontrace.audit.auditor import Auditor
from sessiontrace.audit.errors import AuditError
from sessiontrace.audit.mixin import Audited, stamp_values
from sessiontrace.audit.plan import TablePlan
from sessiontrace.audit.snapshot import select_requested
from sessiontrace.audit.writer import Change

_FLUSH = "sessiontrace.audit.flush"

State = InstanceState[Any]


@dataclass(slots=True)
class _Flush:
    """What ``before_flush`` and the mapper events leave for ``after_flush`` (in ``session.info``
    for one flush)."""

    auditor: Auditor
    moment: datetime
    known: dict[State, dict[str, Any]] = field(default_factory=dict)  # database values read before the flush
    # Per updated object, its ``TablePlan.on_update`` values as they were before its UPDATE.
    generated: dict[State, dict[str, Any]] = field(default_factory=dict)
    ran: list[tuple[State, str]] = field(default_factory=list)  # (object, statement) in execution order
    # The save step under way (one mapper's objects): SQLAlchemy runs its UPDATEs before its
    # INSERTs but reports the inserts first, so both wait here until the step is over.
    step_inserts: list[State] = field(default_factory=list)
    step_updates: list[State] = field(default_factory=list)

    def end_step(self) -> None:
        if self.step_updates:
            self.ran.extend((state, "update") for state in self.step_updates)
            self.step_updates.clear()
        if self.step_inserts:
            self.ran.extend((state, "insert") for state in self.step_inserts)
            self.step_inserts.clear()


def _needs_previous(state: State, plan: TablePlan, deleting: bool) -> bool:
    committed = state.committed_state
    loaded = state.dict
    if deleting:
        # A value set while expired is in the dict, but the row still holds the unknown one.
        return any(
            (committed[f.key] if f.key in committed else loaded.get(f.key, NO_VALUE)) is NO_VALUE for f in plan.selected
        )
    if any(value is NO_VALUE and key in plan.by_key for key, value in committed.items()):
        return True
    return bool(plan.on_update) and any(f.key not in loaded and f.key not in committed for f in plan.on_update)


def before_flush(auditor: Auditor, session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    moment = datetime.now(timezone.utc)
    pending = _Flush(auditor, moment)
    session.info[_FLUSH] = pending
    stamp: dict[str, Any] | None = None
    missing: dict[TablePlan, list[State]] = {}
    for obj in session.new:
        if isinstance(obj, Audited):
            stamp = stamp or stamp_values(moment)
            _stamp_new(instance_state(obj), stamp)
    for obj in session.dirty:
        if not isinstance(obj, Audited):
            continue
        state = instance_state(obj)
        if not _has_net_change(state):
            continue
        plan = auditor.plan_for(state.mapper)
        if plan is not None and _needs_previous(state, plan, deleting=False):
            missing.setdefault(plan, []).append(state)
        stamp = stamp or stamp_values(moment)
        _stamp(state, stamp)
    for obj in session.deleted:
        if isinstance(obj, Audited):
            state = instance_state(obj)
            plan = auditor.plan_for(state.mapper)
            if plan is not None and _needs_previous(state, plan, deleting=True):
                missing.setdefault(plan, []).append(state)
    for plan, states in missing.items():
        connection = session.connection(bind_arguments={"mapper": plan.mapper})
        rows = select_requested(connection, plan, [_identity(s) for s in states])
        for state in states:
            row = rows.get(_identity(state))
            if row is not None:
                pending.known[state] = row


def _stamp_new(state: State, stamp: dict[str, Any]) -> None:
    """``setattr`` of each stamp column on a new object, without the per-attribute events: its
    INSERT takes the values from its dict. A new object that takes over a deleted one's row (a row
    switch) is written as an UPDATE of the keys in its ``committed_state``, so they are listed
    there, as setattr lists them (nothing was committed: ``NO_VALUE``)."""
    state.dict.update(stamp)
    committed = state.committed_state
    for key in stamp:
        committed.setdefault(key, NO_VALUE)


def _stamp(state: State, stamp: dict[str, Any]) -> None:
    """``setattr`` of each stamp column, minus the descriptor's lookups."""
    loaded, manager = state.dict, state.manager
    for key, value in stamp.items():
        manager[key].impl.set(state, loaded, value, None)


def _has_net_change(state: State) -> bool:
    """``Session.is_modified(obj, include_collections=False)``, asking only the attributes that were
    set: an attribute outside ``committed_state`` has no history, and the flush stamps thousands of
    objects with only a few attributes set each."""
    manager, loaded = state.manager, state.dict
    for key in state.committed_state:
        impl = manager[key].impl
        if impl.collection:
            continue
        added, _, deleted = impl.get_history(state, loaded, PassiveFlag.NO_CHANGE)
        if added or deleted:
            return True
    return False


def _identity(state: State) -> tuple[Any, ...]:
    assert state.key is not None
    return tuple(state.key[1])


def _pending(state: State) -> _Flush | None:
    session = state.session
    pending = session.info.get(_FLUSH) if session is not None else None
    return pending if isinstance(pending, _Flush) else None


def _read_previous_in_flush(
    pending: _Flush, connection: Connection, state: State, plan: TablePlan | None, deleting: bool
) -> None:
    """Objects the flush itself changes (a delete-orphan, a foreign key set to NULL) were not in
    ``before_flush``'s lists: read what is missing of them now, before their row changes."""
    if state in pending.known or state.key is None:
        return
    if plan is not None and _needs_previous(state, plan, deleting=deleting):
        row = select_requested(connection, plan, [_identity(state)]).get(_identity(state))
        if row is not None:
            pending.known[state] = row


@event.listens_for(Audited, "before_insert", propagate=True, raw=True)
def _before_insert(mapper: Mapper[Any], connection: Connection, state: State) -> None:
    pending = _pending(state)
    if pending is None:
        return
    pending.end_step()
    session = state.session
    if session is None or not session.identity_map:
        return
    # An object with this key already in the session is one deleted in this flush (a row switch,
    # or the INSERT fails): its row is about to be overwritten, so read what is missing of it now.
    plan = pending.auditor.plan_for(mapper)
    existing = _replaced(session, plan, state) if plan is not None else None
    if existing is not None:
        _read_previous_in_flush(pending, connection, existing, pending.auditor.plan_for(existing.mapper), deleting=True)


@event.listens_for(Audited, "after_insert", propagate=True, raw=True)
def _after_insert(mapper: Mapper[Any], connection: Connection, state: State) -> None:
    pending = _pending(state)
    if pending is not None:
        pending.step_inserts.append(state)


@event.listens_for(Audited, "before_update", propagate=True, raw=True)
def _before_update(mapper: Mapper[Any], connection: Connection, state: State) -> None:
    pending = _pending(state)
    if pending is None:
        return
    pending.end_step()
    plan = pending.auditor.plan_for(mapper)
    _read_previous_in_flush(pending, connection, state, plan, deleting=False)
    if plan is not None and plan.on_update:
        # The UPDATE overwrites these in the dict (or expires them): keep them as they are now.
        loaded, committed = state.dict, state.committed_state
        pending.generated[state] = {
            f.key: loaded[f.key] for f in plan.on_update if f.key in loaded and f.key not in committed
        }


@event.listens_for(Audited, "after_update", propagate=True, raw=True)
def _after_update(mapper: Mapper[Any], connection: Connection, state: State) -> None:
    pending = _pending(state)
    if pending is not None:
        pending.step_updates.append(state)


@event.listens_for(Audited, "before_delete", propagate=True, raw=True)
def _before_delete(mapper: Mapper[Any], connection: Connection, state: State) -> None:
    pending = _pending(state)
    if pending is not None:
        pending.end_step()
        _read_previous_in_flush(pending, connection, state, pending.auditor.plan_for(mapper), deleting=True)


@event.listens_for(Audited, "after_delete", propagate=True, raw=True)
def _after_delete(mapper: Mapper[Any], connection: Connection, state: State) -> None:
    pending = _pending(state)
    if pending is not None:
        pending.end_step()
        pending.ran.append((state, "delete"))


def after_flush(session: Session, flush_context: UOWTransaction) -> None:
    pending = session.info.pop(_FLUSH, None)
    if not isinstance(pending, _Flush):
        return
    pending.end_step()
    auditor = pending.auditor
    # (plan, object, statement, for a row switch the deleted object whose row it took over)
    work: list[tuple[TablePlan, State, str, State | None]] = []
    reload: dict[TablePlan, list[State]] = {}
    for state, kind in pending.ran:
        plan = auditor.plan_for(state.mapper)
        if plan is None:
            continue
        replaced = None
        if kind == "update":
            if state.key is None:  # an UPDATE of a new object: a row switch
                replaced = _replaced(session, plan, state)
                if replaced is None:
                    raise AuditError(
                        f"cannot audit the update of {plan.table_name}: the row it replaces is not in the session"
                    )
            elif not plan.on_update and not any(key in plan.by_key for key in state.committed_state):
                continue
        work.append((plan, state, kind, replaced))
        if kind != "delete" and _needs_current(state, plan, kind, replaced):
            reload.setdefault(plan, []).append(state)

    # ``work`` is in the order the flush executed the statements (parents inserted before
    # children, children deleted before parents, within a table too), so the chain's order is the
    # database's and a revert can undo it backwards.
    connections: dict[TablePlan, Connection] = {}

    def connection_for(plan: TablePlan) -> Connection:
        found = connections.get(plan)
        if found is None:
            found = connections[plan] = session.connection(bind_arguments={"mapper": plan.mapper})
        return found

    current: dict[State, dict[str, Any]] = {}
    for plan, states in reload.items():
        rows = select_requested(connection_for(plan), plan, [_current_pk(plan, s) for s in states])
        for state in states:
            row = rows.get(_current_pk(plan, state))
            if row is not None:
                current[state] = row

    batches: dict[Connection, list[tuple[TablePlan, State, str, State | None]]] = {}
    for item in work:
        batches.setdefault(connection_for(item[0]), []).append(item)
    for connection, items in batches.items():
        # A generator: each change is built while the database stores the ones before it.
        dialect = connection.dialect
        changes = (
            _change(plan, state, kind, pending, current.get(state), replaced, dialect)
            for plan, state, kind, replaced in items
        )
        auditor.write(connection, (change for change in changes if change is not None), pending.moment)


def _replaced(session: Session, plan: TablePlan, state: State) -> State | None:
    """The other object in ``session`` with the primary key ``state`` (a new object) has."""
    loaded = state.dict
    if any(f.key not in loaded for f in plan.pk):
        return None
    key = plan.mapper.identity_key_from_primary_key(tuple(loaded[f.key] for f in plan.pk))
    existing = session.identity_map.get(key)
    if existing is None:
        return None
    found = instance_state(existing)
    return found if found is not state else None


def _needs_current(state: State, plan: TablePlan, kind: str, replaced: State | None) -> bool:
    loaded = state.dict
    if kind == "insert":
        # A column the INSERT left out with no default of any kind is NULL; only a server-side
        # value, or one given as an SQL expression (expired by the flush), needs reading.
        expired = state.expired_attributes
        return any(f.key not in loaded and (f.key in expired or _server_generated(f.column)) for f in plan.selected)
    if replaced is not None:
        return any(f.key not in loaded for f in plan.fields)  # the row keeps what the new object did not set
    if any(key not in loaded for key in state.committed_state if key in plan.by_key):
        return True
    return bool(plan.on_update) and any(f.key not in loaded for f in plan.on_update)


def _server_generated(column: Any) -> bool:
    return bool(
        column.server_default is not None
        or column.server_onupdate is not None
        or column.default is not None
        or (column.primary_key and column.autoincrement)
    )


def _current_pk(plan: TablePlan, state: State) -> tuple[Any, ...]:
    loaded = state.dict
    return tuple(loaded[f.key] for f in plan.pk)


def _change(
    plan: TablePlan,
    state: State,
    kind: str,
    pending: _Flush,
    current: dict[str, Any] | None,
    replaced: State | None,
    dialect: Dialect,
) -> Change | None:
    loaded = state.dict
    if kind == "insert":
        values = {f.key: _value(plan, f.key, loaded, current, "insert") for f in plan.selected}
        return plan.inserted(values, dialect)
    if kind == "delete":
        return plan.deleted(_previous(plan, state, pending.known.get(state), "delete"), dialect)
    if replaced is not None:
        before = _previous(plan, replaced, pending.known.get(replaced), "update")
        after = {f.key: _value(plan, f.key, loaded, current, "update") for f in plan.selected}
        return plan.updated(_current_pk(plan, state), before, after, None, dialect)
    committed = state.committed_state
    known = pending.known.get(state)
    manager = state.manager
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    for key, previous in committed.items():
        if key not in plan.by_key:
            continue
        if previous is NO_VALUE:
            previous = _known(plan, key, known)
        elif key in loaded and manager[key].impl.is_equal(loaded[key], previous) is True:
            continue  # equal to the ORM, so not in its UPDATE (``1`` and ``True`` in JSON, say)
        old[key] = previous
        new[key] = _value(plan, key, loaded, current, "update")
    if plan.on_update:
        generated = pending.generated.get(state, {})
        for f in plan.on_update:
            if f.key not in committed:
                old[f.key] = generated[f.key] if f.key in generated else _known(plan, f.key, known)
                new[f.key] = _value(plan, f.key, loaded, current, "update")
    if not old:
        return None
    return plan.updated(_identity(state), old, new, old.keys(), dialect)


def _previous(plan: TablePlan, state: State, known: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """The values ``state``'s row held before the flush: its committed values, read ones where
    those are unknown (expired; set while expired), never the unsaved value in its dict."""
    committed = state.committed_state
    loaded = state.dict
    values: dict[str, Any] = {}
    for f in plan.selected:
        previous = committed[f.key] if f.key in committed else loaded.get(f.key, NO_VALUE)
        if previous is NO_VALUE:
            if known is None or f.key not in known:
                raise AuditError(f"cannot audit the {kind} of a {plan.table_name} row: {f.key!r} could not be read")
            previous = known[f.key]
        values[f.key] = previous
    return values


def _known(plan: TablePlan, key: str, known: dict[str, Any] | None) -> Any:
    if known is None or key not in known:
        raise AuditError(f"cannot audit the update of {plan.table_name}: the previous {key!r} is unknown")
    return known[key]


def _value(plan: TablePlan, key: str, loaded: dict[str, Any], read: dict[str, Any] | None, kind: str) -> Any:
    if key in loaded:
        return loaded[key]
    if read is not None and key in read:
        return read[key]
    if kind == "insert":
        return None  # left out of the INSERT and nothing generates it: NULL
    raise AuditError(f"cannot audit the {kind} of a {plan.table_name} row: {key!r} could not be read")
