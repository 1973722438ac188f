"""The audit log table and the columns audited tables gain.

One row per record change. ``previous_values`` / ``new_values`` / ``changed_fields`` are JSONB on
PostgreSQL and JSON (text) elsewhere. ``seq``, ``prev_hash`` and ``row_hash`` form the hash chain
(see ``chain.py``); ``trace_id`` / ``span_id`` join a row to the span that made the change.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

AUDIT_TABLE = "audit_log"

Json = JSON().with_variant(JSONB(), "postgresql")

CHANGE_TYPES = ("insert", "update", "delete")
SOURCES = ("orm", "trigger", "revert")


def audit_log_table(metadata: MetaData, name: str = AUDIT_TABLE, schema: str | None = None) -> Table:
    """Define the audit log on ``metadata`` (``create_all`` or the Alembic helpers create it)."""
    return Table(
        name,
        metadata,
        # ``id`` is storage order only; ``seq`` is the chain order, gap-free and unique.
        Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
        Column("seq", BigInteger, nullable=True, unique=True),
        Column("table_name", String(255), nullable=False),
        Column("record_id", Text, nullable=False, doc="canonical JSON of the primary key: {column: value}"),
        Column("change_type", String(6), nullable=False),
        Column("changed_fields", Json, nullable=False),
        Column("previous_values", Json, nullable=True),
        Column("new_values", Json, nullable=True),
        Column("session_id", Uuid(as_uuid=False), nullable=True),
        Column("changed_by_user_id", String(256), nullable=True),
        Column("change_timestamp", DateTime(timezone=True), nullable=False),
        Column("trace_id", String(32), nullable=True),
        Column("span_id", String(16), nullable=True),
        Column("transaction_id", String(64), nullable=True),
        Column("db_user", String(128), nullable=True),
        Column("source", String(8), nullable=False),
        Column("prev_hash", String(64), nullable=True),
        Column("row_hash", String(64), nullable=True),
        Index(f"ix_{name}_session", "session_id", "seq"),
        Index(f"ix_{name}_record", "table_name", "record_id", "seq"),
        Index(f"ix_{name}_trace", "trace_id"),
        schema=schema,
    )
