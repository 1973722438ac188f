"""Writing audit rows: one ``executemany`` per batch, on the connection that made the change.

Who and where come from the context at write time: the current ``sessiontrace`` session (id and
user) and the current span (``trace_id`` / ``span_id``, the join to the trace). The transaction id
and database user are read once per transaction. Each change also becomes a span event.

On PostgreSQL the chain columns (``seq``, ``prev_hash``, ``row_hash``) are left NULL: the
database's own BEFORE INSERT trigger (``audit.postgres.install``) chains every row, whoever wrote
it. Elsewhere (SQLite) this module chains in Python: it reads the head inside the transaction,
which already holds the database's write lock because the change itself was written first, and
hashes the exact text it stores (see ``chain.py``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue
from sqlalchemy import Connection, Insert, Table, Text, bindparam, cast, select, types

from sessiontrace import semconv
from sessiontrace.audit import chain
from sessiontrace.audit.encoding import JsonValue, canonical_json
from sessiontrace.audit.schema import CHANGE_TYPES, SOURCES
from sessiontrace.context import current_session, new_session_id


@dataclass(frozen=True, slots=True)
class Change:
    """One record change, values already encoded (``encoding.encode_value``) and masked.

    ``record_id`` maps primary key column names to values; ``previous_values`` / ``new_values``
    map column names to values (``None`` for an insert's previous and a delete's new values).
    """

    table_name: str
    record_id: Mapping[str, JsonValue]
    change_type: str
    changed_fields: Sequence[str]
    previous_values: Mapping[str, JsonValue] | None
    new_values: Mapping[str, JsonValue] | None


_JSON_FIELDS = ("changed_fields", "previous_values", "new_values")
_TRANSACTION_INFO = "sessiontrace.audit.transaction"


@dataclass(frozen=True, slots=True)
class _Statement:
    insert: Insert
    # Per column, how the database renders the bound value as text (for the Python-side chain).
    render: Mapping[str, Callable[[Any], Any]]


_statements: dict[tuple[Table, str], _Statement] = {}


def _statement(audit_table: Table, connection: Connection) -> _Statement:
    dialect = connection.dialect
    cache_key = (audit_table, dialect.name)
    found = _statements.get(cache_key)
    if found is not None:
        return found
    # The JSON columns are bound as the canonical text we hash, so the stored text is exactly those
    # bytes whatever JSON serializer the application's engine was configured with.
    if dialect.name == "postgresql":
        values = {
            column.name: cast(bindparam(column.name, type_=Text()), column.type)
            if column.name in _JSON_FIELDS
            else bindparam(column.name, type_=column.type)
            for column in audit_table.columns
            if column.name != "id"
        }
        built = _Statement(audit_table.insert().values(values), {})
    else:
        values = {
            column.name: bindparam(column.name, type_=Text() if column.name in _JSON_FIELDS else column.type)
            for column in audit_table.columns
            if column.name != "id"
        }
        render: dict[str, Callable[[Any], Any]] = {}
        for column in audit_table.columns:
            if column.name in _JSON_FIELDS or column.name in ("seq", "change_timestamp"):
                continue
            processor = column.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None and not isinstance(column.type, (types.String, types.Integer)):
                render[column.name] = processor
        built = _Statement(audit_table.insert().values(values), render)
    _statements[cache_key] = built
    return built


def _transaction_id(connection: Connection) -> str | None:
    """The transaction id where Python writes it: on SQLite a UUIDv7 per transaction (time-ordered),
    kept on the connection. On PostgreSQL the chain trigger sets it (``pg_current_xact_id()``), and
    ``db_user`` (``session_user``), whatever the writer sends."""
    if connection.dialect.name == "postgresql":
        return None
    transaction = connection.get_transaction()
    cached = connection.info.get(_TRANSACTION_INFO)
    if cached is not None and transaction is not None and cached[0] is transaction:
        found: str = cached[1]
        return found
    transaction_id = new_session_id()
    connection.info[_TRANSACTION_INFO] = (transaction, transaction_id)
    return transaction_id


def write_changes(
    connection: Connection,
    changes: Iterable[Change],
    *,
    audit_table: Table,
    key: bytes | None = None,
    source: str = "orm",
    record_values_in_spans: bool = False,
    timestamp: datetime | None = None,
) -> None:
    """Insert one audit row per change on ``connection`` (inside its transaction) and add a
    ``DB_CHANGE_EVENT`` per change to the current span.

    ``changes`` may be a generator: on PostgreSQL each row is sent as soon as it is built, so the
    server stores and chains the first rows while Python still computes the next (the two run on
    different cores). ``source`` is ``"orm"`` or ``"revert"``; ``timestamp`` defaults to now (UTC).
    ``key`` is the chain's HMAC key where Python chains (not PostgreSQL, whose trigger holds its
    own key).
    """
    pending = iter(changes)
    first = next(pending, None)
    if first is None:
        return
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    moment = (timestamp or datetime.now(timezone.utc)).astimezone(timezone.utc)
    current = current_session()
    span = trace.get_current_span()
    context = span.get_span_context()
    # Everything but the change itself is the same for every row of the batch.
    common: dict[str, Any] = {
        "seq": None,
        "session_id": current.id if current is not None else None,
        "changed_by_user_id": current.user_id if current is not None else None,
        "change_timestamp": moment,
        "trace_id": format(context.trace_id, "032x") if context.is_valid else None,
        "span_id": format(context.span_id, "016x") if context.is_valid else None,
        "transaction_id": _transaction_id(connection),
        "db_user": None,  # PostgreSQL's chain trigger sets it; SQLite has no database users
        "source": source,
        "prev_hash": None,
        "row_hash": None,
    }
    recording = span.is_recording()
    written: list[tuple[Change, dict[str, Any]]] = []  # for the span events, once all are stored

    def rows() -> Iterator[dict[str, Any]]:
        for change in itertools.chain((first,), pending):
            row = _row(change, common)
            if recording:
                written.append((change, row))
            yield row

    statement = _statement(audit_table, connection)
    if connection.dialect.name != "postgresql":
        built = list(rows())
        _chain(connection, audit_table, built, statement.render, key or b"")
        connection.execute(statement.insert, built)
    elif not _copy(connection, audit_table, rows()):
        connection.execute(statement.insert, list(rows()))

    if recording:
        _add_events(span, connection.dialect.name, written, record_values_in_spans)


def _row(change: Change, common: Mapping[str, Any]) -> dict[str, Any]:
    """The audit row of one change, its JSON columns as the canonical text we store."""
    if change.change_type not in CHANGE_TYPES:
        raise ValueError(f"change_type must be one of {CHANGE_TYPES}, got {change.change_type!r}")
    previous, new = change.previous_values, change.new_values
    return {
        **common,
        "table_name": change.table_name,
        "record_id": _json_object(change.record_id),
        "change_type": change.change_type,
        "changed_fields": _names_json(change.changed_fields),
        "previous_values": None if previous is None else _json_object(previous),
        "new_values": None if new is None else _json_object(new),
    }


def _json_object(values: Mapping[str, JsonValue]) -> str:
    return canonical_json(values if type(values) is dict else dict(values))


# Field lists repeat (every insert into a table lists the same columns): their JSON, by tuple.
_names_texts: dict[tuple[str, ...], str] = {}


def _names_json(names: Sequence[str]) -> str:
    key = names if type(names) is tuple else tuple(names)
    text = _names_texts.get(key)
    if text is None:
        text = canonical_json(list(key))
        if len(_names_texts) < 10_000:  # bounded: update field lists vary
            _names_texts[key] = text
    return text


def _add_events(
    span: trace.Span, system: str, written: Sequence[tuple[Change, Mapping[str, Any]]], with_values: bool
) -> None:
    for change, row in written:
        attributes: dict[str, AttributeValue] = {
            semconv.DB_SYSTEM_NAME: system,
            semconv.DB_COLLECTION_NAME: change.table_name,
            semconv.DB_RECORD_ID: row["record_id"],
            semconv.DB_CHANGE_TYPE: change.change_type,
            semconv.DB_CHANGED_FIELDS: tuple(change.changed_fields),
        }
        if row["seq"] is not None:
            attributes[semconv.DB_AUDIT_SEQ] = row["seq"]
        if with_values:
            if change.previous_values is not None:
                attributes[semconv.DB_PREVIOUS_VALUES] = canonical_json(dict(change.previous_values))
            if change.new_values is not None:
                attributes[semconv.DB_NEW_VALUES] = canonical_json(dict(change.new_values))
        span.add_event(semconv.DB_CHANGE_EVENT, attributes)


_COPY_COLUMNS = chain.LINE_FIELDS  # every column we set; the chain columns are the trigger's


def _copy(connection: Connection, audit_table: Table, rows: Iterable[dict[str, Any]]) -> bool:
    """Append the rows with ``COPY ... FROM STDIN`` when the driver offers it (psycopg 3, sync).

    The audit rows of a 2,000-row flush are most of auditing's cost on PostgreSQL; COPY sends them
    in one stream with C-level formatting, several times faster than ``executemany``. Row triggers
    (the chain) fire for COPY as for INSERT. Other drivers fall back to ``executemany``.
    """
    cursor: Any = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        copy = _sync_copy(cursor)
        if copy is None:
            return False
        target = connection.dialect.identifier_preparer.format_table(audit_table)
        with copy(f"COPY {target} ({', '.join(_COPY_COLUMNS)}) FROM STDIN") as stream:
            for row in rows:
                stream.write_row([row[name] for name in _COPY_COLUMNS])
        return True
    finally:
        cursor.close()


def _sync_copy(cursor: Any) -> Any:
    """The cursor's ``copy`` when it is a synchronous psycopg cursor, else None. An async engine's
    adapted cursor may pass ``copy`` through from psycopg's async cursor (SQLAlchemy 2.0 does),
    whose COPY cannot run from this synchronous code."""
    try:
        import psycopg
    except ImportError:
        return None
    return cursor.copy if isinstance(cursor, psycopg.Cursor) else None


def _chain(
    connection: Connection,
    audit_table: Table,
    rows: list[dict[str, Any]],
    render: Mapping[str, Callable[[Any], Any]],
    key: bytes,
) -> None:
    """Assign ``seq`` / ``prev_hash`` / ``row_hash`` after the current head, hashing each row as
    the database will render it (the JSON text as bound; other values through their type)."""
    seq_column, hash_column = audit_table.c.seq, audit_table.c.row_hash
    head = connection.execute(select(seq_column, hash_column).order_by(seq_column.desc()).limit(1)).first()
    seq, prev_hash = (head[0], head[1]) if head is not None and head[0] is not None else (0, chain.GENESIS)
    for row in rows:
        seq += 1
        row["seq"] = seq
        row["prev_hash"] = prev_hash
        rendered = dict(row)
        for name, processor in render.items():
            if rendered.get(name) is not None:
                rendered[name] = processor(rendered[name])
        prev_hash = row["row_hash"] = chain.link(prev_hash, chain.line(rendered), key)
