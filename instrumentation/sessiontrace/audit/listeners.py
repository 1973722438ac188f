"""``enable_auditing``: attach the audit listeners to a session class.

Listening on a class (or ``sessionmaker``, which has its own subclass) keeps auditing to the
sessions the application chose. An ``AsyncSession`` runs a sync ``Session`` underneath, and the
events fire there: we give the async class (or ``async_sessionmaker``) its own sync subclass so
that auditing it does not audit every plain ``Session`` in the process.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Collection, Mapping
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, event
from sqlalchemy.orm import Session, sessionmaker

from sessiontrace.audit import flush, statements
from sessiontrace.audit.auditor import Auditor
from sessiontrace.audit.errors import AuditSetupError
from sessiontrace.audit.plan import audited_mappers

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

_NOTHING: Mapping[str, Collection[str]] = MappingProxyType({})
_enabled: weakref.WeakKeyDictionary[type[Session], Auditor] = weakref.WeakKeyDictionary()


def _sync_session_class(target: object) -> type[Session]:
    if isinstance(target, sessionmaker):
        session_class: type[Session] = target.class_
        return session_class
    # Only an application that imported SQLAlchemy's asyncio extension (which needs greenlet) can
    # pass an async target, so we do not import it ourselves.
    asyncio_ext: Any = sys.modules.get("sqlalchemy.ext.asyncio")
    if asyncio_ext is None:
        pass
    elif isinstance(target, asyncio_ext.async_sessionmaker):
        base = target.kw.get("sync_session_class") or target.class_.sync_session_class
        if base is Session:
            base = type("AuditedSession", (Session,), {})
            target.kw["sync_session_class"] = base
        return base  # type: ignore[no-any-return]
    elif isinstance(target, type) and issubclass(target, asyncio_ext.AsyncSession):
        async_class: Any = target
        if async_class is asyncio_ext.AsyncSession:
            raise AuditSetupError(
                "enable_auditing(AsyncSession) would audit every Session in the process: "
                "pass an AsyncSession subclass or an async_sessionmaker"
            )
        if async_class.sync_session_class is Session:
            async_class.sync_session_class = type(f"{async_class.__name__}Sync", (Session,), {})
        return async_class.sync_session_class  # type: ignore[no-any-return]
    if isinstance(target, type) and issubclass(target, Session):
        return target
    raise TypeError(f"enable_auditing() takes a Session class, sessionmaker or AsyncSession class, not {target!r}")


def enable_auditing(
    target: type[Session] | sessionmaker[Any] | type[AsyncSession] | async_sessionmaker[Any],
    *,
    audit_table: Table,
    key: bytes | None = None,
    exclude: Mapping[str, Collection[str]] = _NOTHING,
    mask: Mapping[str, Collection[str]] = _NOTHING,
    record_values_in_spans: bool = False,
) -> None:
    """Audit every change that sessions of ``target`` make to ``Audited`` classes.

    Each insert, update and delete, by the unit of work (cascades included), by an ORM-enabled
    ``insert()`` / ``update()`` / ``delete()`` / upsert statement or by the legacy
    ``bulk_insert_mappings`` / ``bulk_update_mappings`` / ``bulk_save_objects``, writes one row to
    ``audit_table`` in the same transaction and adds a ``DB_CHANGE_EVENT`` to the current span.

    ``exclude`` and ``mask`` map table names to column names: excluded columns are not recorded at
    all; masked ones are listed in ``changed_fields`` with the value ``"[MASKED]"``. ``key`` keys
    the hash chain where Python computes it (not PostgreSQL: its trigger has the key). With
    ``record_values_in_spans`` the span events also carry the (masked) values as JSON.

    Raises ``AuditSetupError`` naming the table when an audited class cannot be audited (no
    primary key, an unknown column in ``exclude``/``mask``) or auditing is already enabled.
    """
    session_class = _sync_session_class(target)
    if session_class in _enabled:
        raise AuditSetupError(f"auditing is already enabled on {session_class.__name__}")
    auditor = Auditor(
        audit_table=audit_table,
        key=key,
        exclude=dict(exclude),
        mask=dict(mask),
        record_values_in_spans=record_values_in_spans,
    )
    for mapper in audited_mappers():
        auditor.plan_for(mapper)  # fail now, naming the table, rather than at the first write
    event.listen(session_class, "before_flush", partial(flush.before_flush, auditor))
    event.listen(session_class, "after_flush", flush.after_flush)
    event.listen(session_class, "do_orm_execute", partial(statements.do_orm_execute, auditor))
    # The legacy bulk methods fire no event: they are replaced on the class, as the events are
    # attached to it (a sessionmaker's class is its own subclass).
    for name, method in statements.audited_bulk_methods(auditor, session_class).items():
        setattr(session_class, name, method)
    _enabled[session_class] = auditor
