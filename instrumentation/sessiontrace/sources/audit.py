"""Read the audit log's rows for a session's traces: the join of a path with the database changes
its spans made (every audit row carries the ``trace_id`` / ``span_id`` of the span that wrote it).

Returns plain ``StoredChange`` records, in chain order; ``path.attach_changes`` puts them under
their spans and the renderers show them. Reading only: a SQLite file is opened read-only (and
never created), and nothing is written to a PostgreSQL database. Needs SQLAlchemy (the ``audit``
extra) and, for PostgreSQL, psycopg.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, MetaData, RowMapping, create_engine, inspect, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from sessiontrace.audit.schema import AUDIT_TABLE, audit_log_table
from sessiontrace.records import StoredChange

_CHUNK = 500
"""Trace ids per query: far below every database's limit on bound parameters."""
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class AuditLogError(Exception):
    """The audit log cannot be read; the message names the database (password hidden) and why."""


def database_url(text: str) -> URL:
    """A SQLAlchemy URL from ``text``: a URL (``postgresql://`` gets the psycopg 3 driver that the
    ``audit`` extra installs), or else the path of a SQLite file."""
    if "://" not in text:
        return URL.create("sqlite", database=str(Path(text).expanduser().resolve()))
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise AuditLogError(f"not a database URL or file: {text}") from None
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url


def shown(url: URL) -> str:
    """``url`` for messages: the password hidden, a SQLite file as its path."""
    if url.get_backend_name() == "sqlite" and url.database:
        return url.database
    return url.render_as_string(hide_password=True)


def load_changes(
    url: str | URL,
    trace_ids: Collection[str],
    *,
    audit_table: str = AUDIT_TABLE,
    schema: str | None = None,
) -> list[StoredChange]:
    """Every audit row written under one of ``trace_ids``, ordered by ``seq`` (chain order).

    Raises ``AuditLogError`` when the database cannot be opened or has no audit log.
    """
    url = database_url(url) if isinstance(url, str) else url
    wanted = sorted({trace_id.lower() for trace_id in trace_ids})
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(audit_table, schema=schema):
                where = f"{schema}.{audit_table}" if schema else audit_table
                raise AuditLogError(f"{shown(url)}: no audit log table {where}")
            table = audit_log_table(MetaData(), audit_table, schema)
            rows: list[RowMapping] = []
            for start in range(0, len(wanted), _CHUNK):
                query = select(table).where(table.c.trace_id.in_(wanted[start : start + _CHUNK]))
                rows.extend(conn.execute(query).mappings())
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise AuditLogError(f"{shown(url)}: {reason}") from None
    finally:
        engine.dispose()
    changes = [change_from_row(row) for row in rows]
    # The chain's order; ``seq`` is set on every row by the writer (SQLite) or trigger (PostgreSQL).
    changes.sort(key=lambda c: (c.seq is None, c.seq or 0, c.time_ns))
    return changes


def change_from_row(row: Mapping[Any, Any]) -> StoredChange:
    """A ``StoredChange`` from one audit log row (its columns by name, JSON columns decoded)."""
    return StoredChange(
        table_name=row["table_name"],
        record_id=row["record_id"],
        change_type=row["change_type"],
        changed_fields=tuple(row["changed_fields"] or ()),
        previous_values=row["previous_values"],
        new_values=row["new_values"],
        time_ns=_ns(row["change_timestamp"]),
        trace_id=row["trace_id"],
        span_id=row["span_id"],
        seq=row["seq"],
        session_id=row["session_id"],
        user_id=row["changed_by_user_id"],
        source=row["source"],
    )


def _ns(moment: datetime) -> int:
    if moment.tzinfo is None:  # SQLite keeps the UTC wall-clock time without its offset
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _engine(url: URL) -> Engine:
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        try:
            return create_engine(url)
        except (ArgumentError, ImportError) as exc:
            raise AuditLogError(f"{shown(url)}: {exc}") from None
    path = Path(url.database)
    if not path.is_file():
        raise AuditLogError(f"no audit database at {path}")
    # Read-only, through a URI so that a missing file is an error rather than a new empty database.
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    return create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False))
