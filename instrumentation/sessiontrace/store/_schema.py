"""The store's tables, and the check that a file holds a schema this version understands.

``PRAGMA application_id`` marks the file as ours, so another program's SQLite file is refused
(``StoreForeign``) rather than written into or moved aside; ``PRAGMA user_version`` is the schema
version.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sessiontrace.store._errors import StoreCorrupt, StoreForeign, StoreTooNew

APPLICATION_ID = 0x53545243  # "STRC"
SCHEMA_VERSION = 1

# Spans are a rowid table so inserts append; the unique (trace_id, span_id) index doubles as the
# trace lookup and drops a batch exported twice. Resources repeat on every span of a process, so
# they are stored once, keyed by a hash of their attributes.
_DDL = """
CREATE TABLE resources (
    resource_id TEXT PRIMARY KEY,
    service_name TEXT,
    attributes TEXT NOT NULL
);
CREATE TABLE spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER,
    status_code INTEGER NOT NULL,
    status_message TEXT,
    service_name TEXT,
    session_id TEXT,
    attributes TEXT NOT NULL,
    events TEXT,
    links TEXT,
    resource_id TEXT,
    scope_name TEXT
);
CREATE UNIQUE INDEX spans_trace ON spans (trace_id, span_id);
CREATE INDEX spans_session ON spans (session_id, start_ns) WHERE session_id IS NOT NULL;
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    first_start_ns INTEGER NOT NULL,
    last_end_ns INTEGER NOT NULL,
    span_count INTEGER NOT NULL,
    error_count INTEGER NOT NULL,
    user_id TEXT,
    trigger_source TEXT,
    root_name TEXT,
    root_rank INTEGER NOT NULL,
    root_start_ns INTEGER NOT NULL,
    services TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_last_end ON sessions (last_end_ns);
"""

_OUR_TABLES = frozenset({"resources", "spans", "sessions"})


def not_a_store(path: Path) -> StoreCorrupt:
    return StoreCorrupt(f"this file is not a sessiontrace store (file is corrupt or another format): {path}", path)


def foreign(path: Path) -> StoreForeign:
    return StoreForeign(
        f"{path} is another program's SQLite database, not a sessiontrace store: left untouched; "
        "point SESSIONTRACE_STORE at another file",
        path,
    )


def refuse_foreign(conn: sqlite3.Connection, path: Path) -> None:
    """Raise ``StoreForeign`` for a readable SQLite file that someone else marked or filled.

    Called before the store switches the file to WAL: even that would change another program's file.
    """
    # One statement, so one snapshot: read apart, another process creating the store in between
    # would show its tables without the marks it sets in the same transaction, a foreign file.
    app_id, version, filled = conn.execute(
        "SELECT application_id, user_version, EXISTS (SELECT 1 FROM sqlite_master)"
        " FROM pragma_application_id, pragma_user_version"
    ).fetchone()
    if app_id != APPLICATION_ID and (app_id != 0 or version != 0 or filled):
        raise foreign(path)


def check_schema(conn: sqlite3.Connection, path: Path, *, create: bool) -> None:
    """Raise unless ``conn`` holds our schema; with ``create``, set up an empty file first.

    Runs inside ``BEGIN IMMEDIATE`` when creating, so two processes opening a new file at the
    same moment do not both create the tables.
    """
    app_id, version = _marks(conn)
    if app_id == 0 and version == 0 and create:
        conn.execute("BEGIN IMMEDIATE")
        try:
            app_id, version = _marks(conn)  # re-read under the write lock
            if app_id == 0 and version == 0:
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
                if tables:
                    raise foreign(path)
                for statement in _DDL.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                app_id, version = APPLICATION_ID, SCHEMA_VERSION
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    if app_id != APPLICATION_ID:
        refuse_foreign(conn, path)
        raise not_a_store(path)
    if version > SCHEMA_VERSION:
        raise StoreTooNew(
            f"the store {path} has schema version {version}, newer than this sessiontrace "
            f"understands ({SCHEMA_VERSION}): upgrade sessiontrace, or point SESSIONTRACE_STORE "
            "at another file",
            path,
        )
    if version < 1:
        raise not_a_store(path)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables >= _OUR_TABLES:
        raise not_a_store(path)


def _marks(conn: sqlite3.Connection) -> tuple[int, int]:
    # One statement, so one snapshot: read apart, another process creating the file in between
    # would show a half-made store (no application id, a version) that looks like a foreign file.
    app_id, version = conn.execute("SELECT * FROM pragma_application_id, pragma_user_version").fetchone()
    return int(app_id), int(version)
