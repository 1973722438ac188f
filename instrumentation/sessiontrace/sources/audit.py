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
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    MetaData,
    RowMapping,
    Table,
    Text,
    case,
    cast,
    create_engine,
    extract,
    func,
    inspect,
    select,
    type_coerce,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from sessiontrace._stored import load_json, stored_text, strings, uuid_text, whole_number
from sessiontrace.audit.schema import AUDIT_TABLE, CHANGE_TYPES, audit_log_table
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
            columns = _raw_columns(table, postgres=conn.dialect.name == "postgresql")
            rows: list[RowMapping] = []
            for start in range(0, len(wanted), _CHUNK):
                query = select(*columns).where(table.c.trace_id.in_(wanted[start : start + _CHUNK]))
                rows.extend(conn.execute(query).mappings())
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise AuditLogError(f"{shown(url)}: {reason}") from None
    finally:
        engine.dispose()
    changes = [change_from_row(row) for row in rows]
    # The chain's order; ``seq`` is set on every row by the writer (SQLite) or trigger (PostgreSQL).
    changes.sort(key=lambda c: (c.seq is None, c.seq or 0, c.time_ns))
    return _timed(changes)


def _raw_columns(table: Table, *, postgres: bool) -> list[ColumnElement[Any]]:
    """The columns as stored, for ``change_from_row`` to check: SQLAlchemy's own decoding (JSON,
    datetime, UUID) would raise on the first damaged row and lose the whole join. On PostgreSQL
    the JSON comes as ``jsonb::text`` and the time as epoch microseconds (NULL when infinite:
    ``change_timestamp`` then keeps the text); SQLite hands over what it stores."""
    c = table.c
    if postgres:
        micros = case(
            (func.isfinite(c.change_timestamp), cast(extract("epoch", c.change_timestamp) * 1_000_000, BigInteger))
        )
        return [
            *(c[name] for name in _PLAIN_COLUMNS),
            *(cast(c[name], Text).label(name) for name in (*_JSON_COLUMNS, "session_id", "change_timestamp")),
            micros.label("micros"),
        ]
    return [
        *(c[name] for name in _PLAIN_COLUMNS),
        *(type_coerce(c[name], Text).label(name) for name in (*_JSON_COLUMNS, "session_id", "change_timestamp")),
    ]


_PLAIN_COLUMNS = (
    "seq", "table_name", "record_id", "change_type", "changed_by_user_id", "trace_id", "span_id", "source"
)  # fmt: skip
_JSON_COLUMNS = ("changed_fields", "previous_values", "new_values")


def change_from_row(row: Mapping[Any, Any]) -> StoredChange:
    """A ``StoredChange`` from one audit log row (its columns by name, as ``_raw_columns`` reads
    them; decoded values, as a plain ``select(table)`` gives, are taken too).

    The log is input: a superuser, a hand edit or another version may have stored anything. A
    value of the wrong shape falls back (``None``, empty) and its stored text goes to
    ``unreadable``, so the change still shows, marked. An unreadable time is ``-1`` here;
    ``load_changes`` gives it its neighbour's.
    """
    unreadable: dict[str, str | None] = {}

    def kept(name: str) -> None:
        unreadable[name] = stored_text(row[name])

    def json_value(name: str) -> Any:
        value = row[name]
        if value is None or not isinstance(value, (str, bytes)):
            return value  # NULL, or already decoded
        loaded, ok = load_json(value)
        if not ok:
            kept(name)
        return loaded

    fields = strings(json_value("changed_fields"))
    if fields is None:
        if "changed_fields" not in unreadable:
            kept("changed_fields")
        fields = ()
    values: dict[str, Mapping[str, Any] | None] = {}
    for name in ("previous_values", "new_values"):
        value = json_value(name)
        if value is not None and not isinstance(value, dict):
            if name not in unreadable:
                kept(name)
            value = None
        values[name] = value
    texts: dict[str, str] = {}
    for name in ("table_name", "record_id", "change_type", "source"):
        text = stored_text(row[name])
        if text is None or (name == "change_type" and text not in CHANGE_TYPES):
            kept(name)  # an unknown change type is still shown as stored
        texts[name] = text or ""
    key, ok = load_json(texts["record_id"])
    if (not ok or not isinstance(key, dict)) and "record_id" not in unreadable:
        kept("record_id")  # shown as stored
    seq = whole_number(row["seq"])
    if seq is None and row["seq"] is not None:
        kept("seq")
    time_ns = _time_ns(row)
    if time_ns is None:
        kept("change_timestamp")
    session_id = uuid_text(row["session_id"])
    if session_id is None and row["session_id"] is not None:
        kept("session_id")  # not a UUID: shown as stored
    return StoredChange(
        table_name=texts["table_name"],
        record_id=texts["record_id"],
        change_type=texts["change_type"],
        changed_fields=fields,
        previous_values=values["previous_values"],
        new_values=values["new_values"],
        time_ns=-1 if time_ns is None else time_ns,
        trace_id=_lower(row["trace_id"]),
        span_id=_lower(row["span_id"]),
        seq=seq,
        session_id=session_id if session_id is not None else stored_text(row["session_id"]),
        user_id=stored_text(row["changed_by_user_id"]),
        source=texts["source"],
        unreadable=unreadable,
    )


def _time_ns(row: Mapping[Any, Any]) -> int | None:
    """The change's time in ns, or ``None`` when it is no time (text that is none, NULL, infinity)."""
    micros = row.get("micros")
    if micros is not None:
        return int(micros) * 1_000
    moment = row["change_timestamp"]
    if isinstance(moment, datetime):
        return _ns(moment)
    if isinstance(moment, str) and "micros" not in row:  # SQLite's stored text
        try:
            return _ns(datetime.fromisoformat(moment))
        except ValueError:  # not a date, or a year Python cannot hold (0)
            return None
    return None


def _timed(changes: list[StoredChange]) -> list[StoredChange]:
    """Changes in chain order, an unreadable time replaced by the previous change's (the next's for
    the first): it stays in its place in the path."""
    known = [c.time_ns for c in changes if "change_timestamp" not in c.unreadable]
    if len(known) == len(changes):
        return changes
    previous = known[0] if known else 0
    timed = []
    for change in changes:
        if "change_timestamp" in change.unreadable:
            change = replace(change, time_ns=previous)
        previous = change.time_ns
        timed.append(change)
    return timed


def _lower(value: object) -> str | None:
    text = stored_text(value)
    return text.lower() if text is not None else None


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
