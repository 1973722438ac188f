"""The embedded span store: one SQLite file that several processes write at once.

WAL lets readers (the CLI) run while exporters write; ``synchronous=NORMAL`` is durable across
application crashes (only an OS crash can lose the last transactions) and is what makes batched
inserts fast; ``busy_timeout`` makes a writer wait its turn instead of failing when another
process holds the write lock.

SQLite skips the busy handler where waiting could deadlock, and opening a new file is such a
place: two processes switching it to WAL at once each hold a read lock and want the write lock,
and one is told "database is locked" at once. Opening therefore retries on its own, with backoff,
for as long as ``busy_timeout`` would have waited.

A full disk or an I/O error is reported as ``StoreUnavailable``: it may pass, so the exporter
retries rather than giving up on the store.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from sessiontrace._stored import load_json, stored_text, whole_number
from sessiontrace.records import SessionSummary, StoredEvent, StoredLink, StoredSpan, is_listed_session_id
from sessiontrace.store._encode import Encoder, ResourceRow, SessionRow, SpanRow, scrub_rows
from sessiontrace.store._errors import StoreBusy, StoreError, StoreNotFound, StoreNotWritable, StoreUnavailable
from sessiontrace.store._schema import check_schema, not_a_store, refuse_foreign

BUSY_TIMEOUT_MS = 10_000
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR, _SQLITE_FULL = 5, 6, 10, 13

_KINDS = ("INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_STATUSES = ("UNSET", "OK", "ERROR")

_INSERT_SPAN = "INSERT OR IGNORE INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_INSERT_RESOURCE = "INSERT OR IGNORE INTO resources VALUES (?,?,?)"
# Batches of one session arrive over time and from several processes: merge, never overwrite.
_UPSERT_SESSION = """
INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT (session_id) DO UPDATE SET
    first_start_ns = min(first_start_ns, excluded.first_start_ns),
    last_end_ns = max(last_end_ns, excluded.last_end_ns),
    span_count = span_count + excluded.span_count,
    error_count = error_count + excluded.error_count,
    user_id = coalesce(user_id, excluded.user_id),
    trigger_source = coalesce(trigger_source, excluded.trigger_source),
    root_name = CASE WHEN (excluded.root_rank, excluded.root_start_ns)
        < (root_rank, root_start_ns) THEN excluded.root_name ELSE root_name END,
    root_rank = min(root_rank, excluded.root_rank),
    root_start_ns = CASE WHEN (excluded.root_rank, excluded.root_start_ns)
        < (root_rank, root_start_ns) THEN excluded.root_start_ns ELSE root_start_ns END,
    services = CASE WHEN services = excluded.services THEN services ELSE (
        SELECT json_group_array(value) FROM (
            SELECT value FROM json_each(sessions.services)
            UNION SELECT value FROM json_each(excluded.services) ORDER BY value)) END
"""
# The per-session counts of the last ``?`` rows inserted. Spans has no AUTOINCREMENT, so a new
# row takes max(rowid) + 1: the rows one INSERT added are the table's last ones.
_NEW_ROW_COUNTS = f"""
SELECT session_id, count(*), sum(status_code = {_STATUSES.index("ERROR")}) FROM (
    SELECT session_id, status_code FROM spans ORDER BY rowid DESC LIMIT ?)
WHERE session_id IS NOT NULL GROUP BY session_id
"""
_SPAN_COLUMNS = (
    "s.trace_id, s.span_id, s.parent_span_id, s.name, s.kind, s.start_ns, s.end_ns, "
    "s.status_code, s.status_message, s.service_name, s.session_id, s.attributes, s.events, "
    "s.links, r.attributes, s.scope_name"
)
# Every span of every trace the session touched: spans started before the session id was known
# (or by instrumentation that does not stamp it) belong to the path too.
_SESSION_SPANS = f"""
SELECT {_SPAN_COLUMNS} FROM spans s LEFT JOIN resources r ON r.resource_id = s.resource_id
WHERE s.trace_id IN (SELECT DISTINCT trace_id FROM spans WHERE session_id = ?)
ORDER BY s.start_ns
"""
_SESSIONS = """
SELECT session_id, first_start_ns, last_end_ns, span_count, error_count, user_id,
       trigger_source, root_name, services
FROM sessions WHERE listed(session_id) ORDER BY last_end_ns DESC LIMIT ?
"""
# listed(): a store written before ids were checked may hold one `path` cannot open; it is left
# out before the LIMIT, so the newest openable sessions fill it.


class SpanStore:
    """A span store file. Thread-safe; open one per process and share it.

    ``readonly`` opens an existing store for reading (the CLI): it never creates the file or its
    directory. Raises ``StoreError`` (with a message naming the file) when the file cannot be used.
    """

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.readonly = readonly
        self._lock = threading.Lock()
        self._encoder = Encoder()
        self._conn = self._connect()

    # -- opening -------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        path = self.path
        if self.readonly:
            if not path.exists():
                raise StoreNotFound(f"no store at {path}", path)
        else:
            _check_writable(path)
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        backoff = 0.002
        while True:
            try:
                return self._connect_once()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise _classify(exc, path) from exc
            except StoreNotWritable:
                if self.readonly and not os.access(path.parent, os.W_OK):
                    return self._connect_read_only_media()
                raise
            # Jitter, so that processes which collided once do not collide again in step.
            time.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 0.1)

    def _connect_read_only_media(self) -> sqlite3.Connection:
        """Read a store in a directory nobody may write (read-only media, an evidence copy): SQLite
        cannot create the WAL index there, so the file is opened as immutable. That is only whole
        when no write-ahead log holds spans not yet merged into the file."""
        path = self.path
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StoreNotWritable(
                f"cannot read the store {path} in a read-only directory: its write-ahead log {wal.name} holds"
                " spans not yet merged into it, which SQLite can merge only where it may write; copy both files"
                " to a writable directory and read the copy",
                path,
            )
        return self._connect_once(immutable=True)

    def _connect_once(self, immutable: bool = False) -> sqlite3.Connection:
        path = self.path
        mode = "ro" if self.readonly else "rwc"
        try:
            conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode={mode}{'&immutable=1' if immutable else ''}",
                uri=True,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # guarded by self._lock
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
        except sqlite3.Error as exc:
            raise StoreNotWritable(f"cannot open the store {path}: {exc}", path) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.create_function("listed", 1, _listed, deterministic=True)
            refuse_foreign(conn, path)
            if not self.readonly:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreNotWritable(f"cannot switch the store {path} to WAL mode (got {mode})", path)
                conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA cache_size = -32000")  # 32 MB: index pages stay hot at 1M spans
            check_schema(conn, path, create=not self.readonly)
        except sqlite3.OperationalError as exc:
            conn.close()
            if _is_busy(exc):
                raise  # the caller retries
            raise _classify(exc, path) from exc
        except StoreError:
            conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise _classify(exc, path) from exc
        return conn

    # -- writing -------------------------------------------------------------------------------
    def write(self, spans: Sequence[ReadableSpan]) -> None:
        """Store a batch of finished spans in one transaction; spans already stored are skipped."""
        if not spans:
            return
        rows, resources, sessions = self._encoder.encode(spans)
        try:
            self._insert(rows, resources, sessions)
        except UnicodeEncodeError:
            # A lone surrogate (a non-UTF-8 file name from os.listdir) cannot be stored as UTF-8.
            # Rare, so the batch is scrubbed only then, not on every export; the rest is kept.
            self._insert(*scrub_rows(rows, resources, sessions))

    def _insert(self, rows: list[SpanRow], resources: list[ResourceRow], sessions: list[SessionRow]) -> None:
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if resources:
                        conn.executemany(_INSERT_RESOURCE, resources)
                    before = conn.total_changes
                    conn.executemany(_INSERT_SPAN, rows)
                    inserted = conn.total_changes - before
                    if sessions and inserted < len(rows):
                        sessions = _count_inserted(conn, sessions, inserted)
                    if sessions:
                        conn.executemany(_UPSERT_SESSION, sessions)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:  # SQLite already rolled back after e.g. a full disk
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as exc:
                raise _classify(exc, self.path) from exc

    # -- reading -------------------------------------------------------------------------------
    def sessions(self, limit: int = 20) -> list[SessionSummary]:
        """The most recent sessions, newest (latest ending) first."""
        return [_summary(row) for row in self._query(_SESSIONS, (limit,))]

    def session_spans(self, session_id: str) -> list[StoredSpan]:
        """Every span of every trace that has a span of ``session_id``, by start time."""
        rows = self._query(_SESSION_SPANS, (session_id.lower(),))
        # A span whose start is not a number (a damaged row) is placed at its end, else at the
        # session's first start: somewhere sensible in the path, never at 1970 or beyond 2262.
        earliest = min((start for row in rows if (start := whole_number(row[5])) is not None), default=0)
        return [_stored(row, earliest) for row in rows]

    def span_count(self) -> int:
        return int(self._query("SELECT count(*) FROM spans", ())[0][0])

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            try:
                try:
                    return self._conn.execute(sql, params).fetchall()
                except sqlite3.OperationalError as exc:
                    if "could not decode to utf-8" not in str(exc).lower():
                        raise
                # Text that is not UTF-8 (a damaged file, another program's write) is read with
                # U+FFFD for its bad bytes rather than refusing every span; rare, so only on retry.
                self._conn.text_factory = _lenient_text
                try:
                    return self._conn.execute(sql, params).fetchall()
                finally:
                    self._conn.text_factory = str
            except sqlite3.DatabaseError as exc:
                raise _classify(exc, self.path) from exc

    # -- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SpanStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SpanStore({str(self.path)!r})"


def _count_inserted(conn: sqlite3.Connection, sessions: list[SessionRow], inserted: int) -> list[SessionRow]:
    """The batch's session rows counting only the spans this insert stored, not those it ignored.

    Only a batch that repeats stored spans (an exporter retry, two exporters) comes here. The
    other columns merge idempotently, so they stay as encoded; a session none of whose spans
    were stored is left out.
    """
    counts = {row[0]: (row[1], row[2]) for row in conn.execute(_NEW_ROW_COUNTS, (inserted,))} if inserted else {}
    return [
        (sid, first, last, *counts[sid], user, trigger, root, rank, root_start, services)
        for sid, first, last, _, _, user, trigger, root, rank, root_start, services in sessions
        if sid in counts
    ]


def _check_writable(path: Path) -> None:
    """Fail early, with a plain reason, where SQLite would only say 'unable to open'."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreNotWritable(f"cannot create the store directory {directory}: {exc.strerror or exc}", path) from exc
    if path.exists() and not os.access(path, os.W_OK):
        raise StoreNotWritable(f"the store file is read-only: {path}", path)
    # WAL needs to create the -wal and -shm files beside the store.
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreNotWritable(f"the store directory is not writable: {directory}", path)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(exc).lower()


def _classify(exc: sqlite3.DatabaseError, path: Path) -> StoreError:
    message = str(exc)
    lowered = message.lower()
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if code is not None else None
    if primary in (_SQLITE_FULL, _SQLITE_IOERR) or "disk is full" in lowered or "disk i/o error" in lowered:
        return StoreUnavailable(f"cannot use the store {path} for now: {message}", path)
    if "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
        return StoreNotWritable(f"cannot write the store {path}: {message}", path)
    if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
        return StoreBusy(f"the store {path} stayed locked by another process: {message}", path)
    if isinstance(exc, sqlite3.OperationalError) and "no such" not in lowered:
        return StoreError(f"cannot use the store {path}: {message}", path)
    return not_a_store(path)


def _listed(session_id: object) -> bool:
    return isinstance(session_id, str) and is_listed_session_id(session_id)


def _lenient_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


# Every read column is checked: a store file is input, whoever wrote it (another version, a hand
# edit, a damaged disk). A value of the wrong shape falls back to a safe one and its stored text is
# kept in ``unreadable``, so one damaged span neither hides the path nor crashes a renderer.
def _summary(row: tuple[Any, ...]) -> SessionSummary:
    first, last = whole_number(row[1]), whole_number(row[2])
    services, ok = load_json(row[8])
    return SessionSummary(
        session_id=stored_text(row[0]) or "",
        first_start_ns=first if first is not None else last or 0,
        last_end_ns=last if last is not None else first or 0,
        span_count=whole_number(row[3]) or 0,
        error_count=whole_number(row[4]) or 0,
        user_id=stored_text(row[5]),
        trigger_source=stored_text(row[6]),
        root_name=stored_text(row[7]),
        # Derived from the spans, which keep the truth: a damaged list just shows what it can.
        services=tuple(s for s in services if isinstance(s, str)) if ok and isinstance(services, list) else (),
    )


def _stored(row: tuple[Any, ...], earliest: int = 0) -> StoredSpan:
    unreadable: dict[str, str | None] = {}

    def json_column(index: int, name: str, check: Any, fallback: Any, required: bool = False) -> Any:
        if row[index] is None and not required:  # none stored: no events, no links
            return fallback
        value, ok = load_json(row[index])
        read = check(value) if ok else None
        if read is None:
            unreadable[name] = stored_text(row[index])
            return fallback
        return read

    def text(index: int, name: str) -> str | None:
        stored = row[index]
        if stored is not None and not isinstance(stored, str):  # a number, bytes: shown as text
            unreadable[name] = stored_text(stored)
        return stored_text(stored)

    def required_text(index: int, name: str) -> str:
        value = text(index, name)
        if value is None:
            unreadable[name] = None
        return value or ""

    def enum_name(index: int, name: str, names: tuple[str, ...], default: str) -> str:
        """An OTLP enum number as its name; NULL as the default; anything else as stored."""
        stored = row[index]
        number = whole_number(stored)
        if number is not None and 0 <= number < len(names):
            return names[number]
        unreadable[name] = stored_text(stored)
        return default if stored is None else str(stored_text(stored))

    end = whole_number(row[6])
    if end is None and row[6] is not None:
        unreadable["end_ns"] = stored_text(row[6])
    start = whole_number(row[5])
    if start is None:
        unreadable["start_ns"] = stored_text(row[5])
        start = end if end is not None else earliest
    return StoredSpan(
        trace_id=required_text(0, "trace_id"),
        span_id=required_text(1, "span_id"),
        parent_span_id=text(2, "parent_span_id"),
        name=required_text(3, "name"),
        kind=enum_name(4, "kind", _KINDS, "INTERNAL"),
        start_ns=start,
        end_ns=end,
        status_code=enum_name(7, "status_code", _STATUSES, "UNSET"),
        status_message=text(8, "status_message"),
        service_name=text(9, "service_name"),
        session_id=text(10, "session_id"),
        attributes=json_column(11, "attributes", _object, {}, required=True),
        events=json_column(12, "events", _events, ()),
        links=json_column(13, "links", _links, ()),
        resource=json_column(14, "resource", _object, {}),
        scope_name=text(15, "scope_name"),
        unreadable=unreadable,
    )


def _object(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _events(value: Any) -> tuple[StoredEvent, ...] | None:
    """The events as the exporter writes them, or ``None`` if any is not of that shape."""
    if not isinstance(value, list):
        return None
    events = []
    for e in value:
        if not (
            isinstance(e, dict)
            and isinstance(e.get("name"), str)
            and whole_number(e.get("time_ns")) is not None
            and isinstance(e.get("attributes", {}), dict)
        ):
            return None
        events.append(StoredEvent(e["name"], e["time_ns"], e.get("attributes", {})))
    return tuple(events)


def _links(value: Any) -> tuple[StoredLink, ...] | None:
    """The links as the exporter writes them, or ``None`` if any is not of that shape."""
    if not isinstance(value, list):
        return None
    links = []
    for k in value:
        if not (
            isinstance(k, dict)
            and isinstance(k.get("trace_id"), str)
            and isinstance(k.get("span_id"), str)
            and isinstance(k.get("attributes", {}), dict)
        ):
            return None
        links.append(StoredLink(k["trace_id"], k["span_id"], k.get("attributes", {})))
    return tuple(links)
