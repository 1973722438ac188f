"""Alembic helpers: call them from a migration's ``upgrade()`` / ``downgrade()`` with ``op``.

::

    from sessiontrace.audit import migrations

    def upgrade() -> None:
        migrations.add_audit_columns(op, "claims")
        migrations.create_audit_log(op, owner_role="audit_owner", app_role="app", key=os.environb[b"AUDIT_KEY"])
        migrations.install_triggers(op, ["claims"], mask={"claims": ["ssn"]})

    def downgrade() -> None:
        migrations.drop_triggers(op, ["claims"])
        migrations.drop_audit_log(op)
        migrations.drop_audit_columns(op, "claims")

The column helpers work on any database Alembic supports; the audit log and trigger helpers are
PostgreSQL's (they read the catalog, so they need an online migration, not ``--sql``). On other
databases ``create_audit_log`` creates the plain table for the ORM mode.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Column, Connection, DateTime, MetaData, String, Uuid

from sessiontrace.audit.schema import AUDIT_TABLE, audit_log_table

if TYPE_CHECKING:
    from alembic.operations import Operations

__all__ = [
    "add_audit_columns",
    "create_audit_log",
    "drop_audit_columns",
    "drop_audit_log",
    "drop_triggers",
    "install_triggers",
]


def audit_columns() -> list[Column[object]]:
    """The columns an audited business table gains (all nullable: existing rows have no session)."""
    return [
        Column("session_id", Uuid(as_uuid=False), nullable=True),
        Column("changed_by_user_id", String(256), nullable=True),
        Column("change_timestamp", DateTime(timezone=True), nullable=True),
    ]


def add_audit_columns(op: Operations, table: str, *, schema: str | None = None) -> None:
    """Add ``session_id``, ``changed_by_user_id`` and ``change_timestamp`` to ``table``."""
    for column in audit_columns():
        op.add_column(table, column, schema=schema)


def drop_audit_columns(op: Operations, table: str, *, schema: str | None = None) -> None:
    """Undo ``add_audit_columns``."""
    for column in reversed(audit_columns()):
        op.drop_column(table, column.name, schema=schema)


def create_audit_log(
    op: Operations,
    *,
    key: bytes | None = None,
    owner_role: str | None = None,
    app_role: str | None = None,
    audit_table: str = AUDIT_TABLE,
    schema: str | None = None,
    partition_by_month: bool = False,
) -> None:
    """The audit log: on PostgreSQL everything ``postgres.install()`` sets up (same arguments),
    inside the migration's transaction; elsewhere the plain table."""
    bind = _bind(op)
    if bind.dialect.name != "postgresql":
        audit_log_table(MetaData(), audit_table, schema).create(bind, checkfirst=True)
        return
    from sessiontrace.audit.postgres import install

    install(
        bind,
        key=key,
        owner_role=owner_role,
        app_role=app_role,
        audit_table=audit_table,
        schema=schema,
        partition_by_month=partition_by_month,
    )


def drop_audit_log(op: Operations, *, audit_table: str = AUDIT_TABLE, schema: str | None = None) -> None:
    """Undo ``create_audit_log``: drops the log and every row in it (roles are left alone)."""
    bind = _bind(op)
    if bind.dialect.name != "postgresql":
        audit_log_table(MetaData(), audit_table, schema).drop(bind, checkfirst=True)
        return
    from sessiontrace.audit.postgres import uninstall

    uninstall(bind, audit_table=audit_table, schema=schema)


def install_triggers(
    op: Operations,
    tables: Sequence[str],
    *,
    exclude: Mapping[str, Collection[str]] | None = None,
    mask: Mapping[str, Collection[str]] | None = None,
    audit_table: str = AUDIT_TABLE,
    schema: str | None = None,
) -> None:
    """Trigger mode for ``tables`` (PostgreSQL): see ``postgres.audit_tables()``. Run it again in a
    later migration that changes an audited table's primary key or the excluded/masked columns."""
    from sessiontrace.audit.postgres import audit_tables

    audit_tables(_bind(op), tables, exclude=exclude, mask=mask, audit_table=audit_table, schema=schema)


def drop_triggers(op: Operations, tables: Sequence[str]) -> None:
    """Undo ``install_triggers`` (the audit rows already written stay)."""
    from sessiontrace.audit.postgres import unaudit_tables

    unaudit_tables(_bind(op), tables)


def _bind(op: Operations) -> Connection:
    bind = op.get_bind()
    if not isinstance(bind, Connection):
        raise RuntimeError("the sessiontrace audit helpers need an online migration (not `alembic upgrade --sql`)")
    return bind
