"""Verifying the audit log's hash chain: every row, in ``seq`` order, against ``chain.py``.

``verify(bind, key=...)`` streams the log ordered by ``seq`` (a server-side cursor on PostgreSQL)
and recomputes each row's link from the database's own text rendering of the row, exactly as the
writer did: on PostgreSQL JSON as ``jsonb::text``, ``session_id::text`` and the timestamp as epoch
microseconds computed by the server; on SQLite the stored text (``session_id`` as the 32 hex digits
SQLAlchemy stores). It stops at the first broken row and says why:

- ``seq gap``: ``seq`` jumps (rows were deleted);
- ``prev_hash mismatch``: a row does not link to its predecessor (a row was inserted, or rows were
  reordered);
- ``hash mismatch``: a row's content no longer matches its hash (it was modified, or the key is
  wrong when it is the first row);
- ``seq out of range``: a row's ``seq`` is below 1, or at or below a retirement without being a
  retired row left in place (see below): the row was written outside the chain;
- ``checkpoint ...``: with signed checkpoints (``checkpoint.py``), the chain no longer holds a
  checkpoint's ``(seq, row_hash)``, or the checkpoint files themselves were altered: history was
  rewritten and re-chained, even by someone holding the chain key.

Rows whose ``seq`` is NULL were never chained (``unchained_rows``); a log without the table raises
``NotChainedError``. No row with a ``seq`` is skipped: rows below 1 are out of range, and with
checkpoints that record a retirement (``retention.py``) the walk starts after the latest one, so
rows at or below it must be gone. Rows a retirement's failed drop left behind are still checked:
they must run, without a gap, from the previous retirement (or seq 1) to the retired row, whose
``row_hash`` the checkpoint pinned; anything else there (a chain started again at seq 1 after its
newest rows were dropped, rows added below the retirement) is ``seq out of range`` or a checkpoint
mismatch.

The key: pass ``key``; on PostgreSQL it may be omitted when connected as the log's owner or a
superuser, and is then read from ``<table>_secret``. On SQLite ``None`` means the empty key.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from sessiontrace.audit import chain
from sessiontrace.audit.errors import AuditError
from sessiontrace.audit.schema import AUDIT_TABLE

if TYPE_CHECKING:
    from sessiontrace.audit.checkpoint import Checkpoint

__all__ = [
    "CHECKPOINT_INVALID",
    "CHECKPOINT_MISMATCH",
    "CHECKPOINT_MISSING",
    "HASH_MISMATCH",
    "PREV_HASH_MISMATCH",
    "SEQ_GAP",
    "SEQ_OUT_OF_RANGE",
    "Break",
    "KeyUnavailableError",
    "NotChainedError",
    "VerifyReport",
    "verify",
]

HASH_MISMATCH = "hash mismatch"
"""The row's content does not match its ``row_hash``: the row was modified (or the key is wrong)."""
SEQ_GAP = "seq gap"
"""``seq`` skips (or repeats) a number: rows were deleted (or a duplicate was added)."""
PREV_HASH_MISMATCH = "prev_hash mismatch"
"""The row does not link to the previous row's hash: a row was inserted or rows were reordered."""
SEQ_OUT_OF_RANGE = "seq out of range"
"""The row's ``seq`` is below 1, at or below a retirement it is not part of, or not a whole number
(reported at the seq it would have, with the stored one in the detail): it is outside the chain."""
CHECKPOINT_MISMATCH = "checkpoint mismatch"
"""The row at a checkpoint's ``seq`` has another ``row_hash``: history was rewritten and re-chained."""
CHECKPOINT_MISSING = "checkpoint row missing"
"""The log ends before a checkpoint's ``seq``: rows at its end were removed."""
CHECKPOINT_INVALID = "checkpoint invalid"
"""A checkpoint file's signature or its link to the previous checkpoint does not hold."""

MEANING = {
    HASH_MISMATCH: "row modified",
    SEQ_GAP: "rows deleted",
    PREV_HASH_MISMATCH: "row inserted or rows reordered",
    SEQ_OUT_OF_RANGE: "row written outside the chain",
    CHECKPOINT_MISMATCH: "history rewritten and re-chained",
    CHECKPOINT_MISSING: "rows removed from the end of the log",
    CHECKPOINT_INVALID: "checkpoint files altered, removed or signed with another key",
}

_BATCH = 10_000
_JSON_COLUMNS = ("changed_fields", "previous_values", "new_values")


class NotChainedError(AuditError):
    """There is no audit log to verify (the table does not exist)."""


class KeyUnavailableError(AuditError):
    """No key was given and the database would not hand out the installed one."""


@dataclass(frozen=True, slots=True)
class Break:
    """The first place the chain (or a checkpoint) does not hold."""

    seq: int
    """``seq`` of the first row found broken (for a gap: the row after the missing ones; for a
    missing checkpoint row: the checkpoint's seq)."""
    reason: str
    detail: str
    expected_seq: int | None = None
    """For ``seq gap``: the first missing ``seq``."""
    checkpoint: str | None = None
    """For the checkpoint reasons: the checkpoint file's name."""

    @property
    def meaning(self) -> str:
        return MEANING.get(self.reason, self.reason)

    def __str__(self) -> str:
        where = f"checkpoint {self.checkpoint}, " if self.checkpoint else ""
        return f"broken at seq {self.seq}: {self.reason} ({where}{self.meaning}): {self.detail}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What ``verify`` found."""

    table: str
    rows_checked: int
    first_seq: int | None
    last_seq: int | None
    head_hash: str | None
    broken: Break | None
    unchained_rows: int
    first_unchained_id: int | None
    checkpoints_checked: int
    elapsed: float
    retired_through: int | None = None
    """The rows up to this seq were retired (a signed checkpoint says so) and were not checked."""

    @property
    def ok(self) -> bool:
        """Every row is chained and the chain (and every checkpoint) holds."""
        return self.broken is None and self.unchained_rows == 0

    @property
    def rows_per_second(self) -> float:
        return self.rows_checked / self.elapsed if self.elapsed > 0 else float("inf")

    def summary(self) -> str:
        if self.broken is not None:
            return f"{self.table}: {self.broken} ({self.rows_checked} rows checked before it)"
        if self.unchained_rows:
            return (
                f"{self.table}: {self.unchained_rows} row(s) were never chained (seq is NULL; first id "
                f"{self.first_unchained_id}): the log is not hash-chained (on PostgreSQL run "
                "`sessiontrace audit setup`; elsewhere write through the ORM auditing)"
            )
        checkpoints = f", {self.checkpoints_checked} checkpoint(s) hold" if self.checkpoints_checked else ""
        if self.retired_through:
            checkpoints += f", rows up to seq {self.retired_through} retired"
            if self.first_seq is not None and self.first_seq <= self.retired_through:
                checkpoints += (
                    f" (seq {self.first_seq}..{self.retired_through} are still in the log and were checked:"
                    " a retirement's drop failed; run it again)"
                )
        if not self.rows_checked:
            return f"{self.table}: empty, nothing to verify{checkpoints}"
        return (
            f"{self.table}: chain intact, {self.rows_checked} rows (seq {self.first_seq}..{self.last_seq}){checkpoints}"
        )


@dataclass(frozen=True, slots=True)
class _Anchor:
    """Where the stream starts: after ``seq`` whose hash is ``row_hash`` (0 / GENESIS: the start)."""

    seq: int
    row_hash: str
    checkpoint: str = ""
    """For a retirement: the checkpoint file that recorded it."""


GENESIS_ANCHOR = _Anchor(0, chain.GENESIS)


def verify(
    bind: Engine | Connection,
    *,
    key: bytes | None = None,
    audit_table: str = AUDIT_TABLE,
    schema: str | None = None,
    checkpoints: str | Path | None = None,
    checkpoint_key: bytes | None = None,
) -> VerifyReport:
    """Check the whole chain of ``audit_table``; with ``checkpoints`` (a directory written by
    ``checkpoint.write_checkpoint``, signed with ``checkpoint_key``) also that every checkpoint
    still holds and the checkpoints link up among themselves.

    Raises ``NotChainedError`` when the table does not exist and ``KeyUnavailableError`` when
    ``key`` is ``None`` on PostgreSQL and the key table cannot be read.
    """
    expected: dict[int, tuple[str, str]] = {}
    checkpoint_break: Break | None = None
    checked = 0
    retired: tuple[_Anchor, ...] = ()
    if checkpoints is not None:
        from sessiontrace.audit.checkpoint import CheckpointError, load_checkpoints

        if checkpoint_key is None:
            raise ValueError("checkpoints need the checkpoint_key they were signed with")
        with _connection(bind) as conn:
            label = _label(conn, audit_table, schema)
        try:
            loaded = load_checkpoints(checkpoints, checkpoint_key, table=label)
        except CheckpointError as exc:
            checkpoint_break = Break(exc.seq, CHECKPOINT_INVALID, str(exc), checkpoint=exc.name)
            loaded = []
        for found in loaded:
            expected[found.seq] = (found.row_hash, found.name)
        checked = len(loaded)
        retired = retirements(loaded)
    # Rows up to the latest retirement were removed on purpose: the chain resumes after it.
    anchor = retired[-1] if retired else GENESIS_ANCHOR
    report = _verify(
        bind,
        key=key,
        audit_table=audit_table,
        schema=schema,
        expected=expected,
        checkpoints=checked,
        anchor=anchor,
        retired=retired,
    )
    if anchor.seq:
        report = replace(report, retired_through=anchor.seq)
    if checkpoint_break is not None and (report.broken is None or report.broken.seq > checkpoint_break.seq):
        report = replace(report, broken=checkpoint_break)
    return report


def retirements(checkpoints: Iterable[Checkpoint]) -> tuple[_Anchor, ...]:
    """Every retirement the checkpoints record, oldest first, as the anchor the chain resumes after."""
    found = {c.retired[0]: _Anchor(*c.retired, checkpoint=c.name) for c in checkpoints if c.retired is not None}
    return tuple(found[seq] for seq in sorted(found))


def _verify(
    bind: Engine | Connection,
    *,
    key: bytes | None,
    audit_table: str,
    schema: str | None,
    expected: dict[int, tuple[str, str]],
    checkpoints: int,
    anchor: _Anchor = GENESIS_ANCHOR,
    retired: tuple[_Anchor, ...] = (),
) -> VerifyReport:
    """Walk the rows after ``anchor`` (and any row below 1). When ``anchor`` is the latest of the
    ``retired`` anchors, the rows at or below it are walked too (see the module docstring)."""
    began = time.perf_counter()
    floor = retired[-1] if retired and retired[-1].seq == anchor.seq else GENESIS_ANCHOR
    result: tuple[int, int | None, int | None, str | None, Break | None]
    with _connection(bind) as conn:
        label = _label(conn, audit_table, schema)
        if not inspect(conn).has_table(audit_table, schema=schema):
            raise NotChainedError(f"{label} does not exist: there is no audit log to verify")
        if key is None:
            key = _installed_key(conn, audit_table, schema)
        target = qualified(conn, audit_table, schema)
        unchained = conn.execute(text(f"SELECT count(*), min(id) FROM {target} WHERE seq IS NULL")).one()
        # Streaming only the rows above the anchor would hide any row below it: look for them first.
        lowest = conn.execute(text(f"SELECT min(seq) FROM {target} WHERE seq <= :s"), {"s": floor.seq}).scalar()
        start, pins = anchor, expected
        out_of_range: Break | None = None
        if lowest is not None and lowest < 1:
            count = conn.execute(text(f"SELECT count(*) FROM {target} WHERE seq < 1")).scalar_one()
            detail = f"{count} row(s) with seq below 1 (the lowest is {lowest}): the chain numbers its rows from 1"
            out_of_range = Break(lowest, SEQ_OUT_OF_RANGE, detail)
        elif lowest is not None:  # rows a retirement did not drop: they must still be its rows
            follows = {a.seq: a for a in (GENESIS_ANCHOR, *retired)}.get(lowest - 1)
            if follows is None:
                detail = (
                    f"seq {lowest} is at or below seq {floor.seq}, which checkpoint {floor.checkpoint} retired,"
                    " but does not follow a retirement (or start the chain)"
                )
                out_of_range = Break(lowest, SEQ_OUT_OF_RANGE, detail)
            else:
                start = follows
                pins = {a.seq: (a.row_hash, a.checkpoint) for a in retired if a.seq > start.seq} | expected
        if out_of_range is None:
            result = _walk(_stream(conn, target, start.seq), key, start, pins)
        else:
            result = (0, None, None, None, out_of_range)
    rows_checked, first_seq, last_seq, head_hash, broken = result
    end = last_seq or start.seq
    if broken is None and lowest is not None and end < floor.seq:
        detail = (
            f"seq {lowest}..{end} are at or below seq {floor.seq}, which checkpoint {floor.checkpoint} retired, but do"
            " not reach it: the chain started again after its newest rows were dropped, or rows were added below it"
        )
        broken = Break(lowest, SEQ_OUT_OF_RANGE, detail)
        rows_checked, last_seq, head_hash = 0, None, None  # all of them are out of range
    if broken is None:
        missing = [seq for seq in pins if seq > end]
        if missing:
            seq = min(missing)
            broken = Break(
                seq,
                CHECKPOINT_MISSING,
                f"the log ends at seq {end} but checkpoint {pins[seq][1]} has seq {seq}",
                checkpoint=pins[seq][1],
            )
    return VerifyReport(
        table=label,
        rows_checked=rows_checked,
        first_seq=first_seq,
        last_seq=last_seq,
        head_hash=head_hash,
        broken=broken,
        unchained_rows=int(unchained[0]),
        first_unchained_id=unchained[1],
        checkpoints_checked=checkpoints,
        elapsed=time.perf_counter() - began,
    )


def _walk(
    rows: Iterator[Sequence[Any]], key: bytes, anchor: _Anchor, expected: dict[int, tuple[str, str]]
) -> tuple[int, int | None, int | None, str | None, Break | None]:
    """Check each row (``LINE_FIELDS`` as text, then ``prev_hash``, ``row_hash``) in seq order."""
    digest = hmac.digest
    separator = chain.SEPARATOR
    prev_seq, prev_hash = anchor.seq, anchor.row_hash
    first_seq: int | None = None
    count = 0
    for row in rows:
        seq = row[0]
        if type(seq) is not int:  # SQLite stores what it is given: 2.5, or text
            detail = f"the row after seq {prev_seq} has seq {seq!r}, which is not a whole number"
            broken = Break(prev_seq + 1, SEQ_OUT_OF_RANGE, detail)
            return count, first_seq, prev_seq or None, prev_hash, broken
        if first_seq is None:
            first_seq = seq
        if seq != prev_seq + 1:
            if seq == prev_seq:
                detail = f"seq {seq} appears twice"
            else:
                missing = f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1}..{seq - 1}"
                detail = f"seq {missing} missing after seq {prev_seq}"
            return count, first_seq, prev_seq or None, prev_hash, Break(seq, SEQ_GAP, detail, expected_seq=prev_seq + 1)
        if row[15] != prev_hash:
            detail = f"prev_hash {row[15]} is not seq {prev_seq}'s row_hash {prev_hash}"
            return count, first_seq, prev_seq or None, prev_hash, Break(seq, PREV_HASH_MISMATCH, detail)
        line = separator.join(["" if value is None else str(value) for value in row[:15]])
        computed = digest(key, f"{prev_hash}\n{line}".encode(), "sha256").hex()
        if computed != row[16]:
            hint = " (or the key is wrong)" if count == 0 else ""
            detail = f"stored row_hash {row[16]} but the row's content hashes to {computed}{hint}"
            return count, first_seq, prev_seq or None, prev_hash, Break(seq, HASH_MISMATCH, detail)
        if seq in expected and expected[seq][0] != computed:
            row_hash, name = expected[seq]
            detail = f"checkpoint {name} recorded row_hash {row_hash}, the log now has {computed}"
            return (
                count,
                first_seq,
                prev_seq or None,
                prev_hash,
                Break(seq, CHECKPOINT_MISMATCH, detail, checkpoint=name),
            )
        prev_seq, prev_hash = seq, computed
        count += 1
    return count, first_seq, prev_seq if count else None, prev_hash if count else None, None


def _stream(conn: Connection, target: str, after: int) -> Iterator[Sequence[Any]]:
    """Rows with a seq above ``after``, by seq: ``LINE_FIELDS`` rendered as the hash needs them,
    then ``prev_hash``, ``row_hash``."""
    postgres = conn.dialect.name == "postgresql"
    columns = []
    for name in chain.LINE_FIELDS:
        if postgres and name in (*_JSON_COLUMNS, "session_id"):
            columns.append(f"{name}::text")
        elif postgres and name == "change_timestamp":
            # An infinite time has no epoch number (the cast would fail the whole walk): it is
            # hashed as NULL, which the trigger never hashes, so the row is reported as modified.
            columns.append(
                "CASE WHEN isfinite(change_timestamp) THEN (extract(epoch FROM change_timestamp) * 1000000)::bigint END"
            )
        else:
            columns.append(name)
    sql = (
        f"SELECT {', '.join(columns)}, prev_hash, row_hash FROM {target}"
        f" WHERE seq IS NOT NULL AND seq > :after ORDER BY seq"
    )
    # Per statement: Connection.execution_options() would change the caller's connection for good.
    result = conn.execute(text(sql), {"after": after}, execution_options={"stream_results": True, "yield_per": _BATCH})
    if postgres:
        for partition in result.partitions():
            yield from partition
        return
    timestamp_index = chain.LINE_FIELDS.index("change_timestamp")
    last_text: object = _NOTHING  # not None: a NULL time is hashed as stored too
    last_micros: object = 0
    for partition in result.partitions():
        for row in partition:
            stored = row[timestamp_index]
            if stored != last_text:
                last_text = stored
                last_micros = _sqlite_micros(stored)
            values = list(row)
            values[timestamp_index] = last_micros
            yield values


_NOTHING: Final = object()


def _sqlite_micros(stored: object) -> object:
    if isinstance(stored, datetime):
        return chain.epoch_micros(stored)
    if isinstance(stored, (int, float)):
        return int(stored)
    try:
        return chain.epoch_micros(datetime.fromisoformat(str(stored)))
    except ValueError:
        # Not a time (text that is none, NULL, year 0): the writer never stores one, so hash what
        # is stored and let the row be reported as modified rather than stop the walk.
        return stored


def qualified(conn: Connection, name: str, schema: str | None) -> str:
    """``name`` (in ``schema``) quoted for SQL text."""
    preparer = conn.dialect.identifier_preparer
    return (f"{preparer.quote_schema(schema)}." if schema else "") + preparer.quote(name)


def _label(conn: Connection, audit_table: str, schema: str | None) -> str:
    if schema is not None:
        return f"{schema}.{audit_table}"
    if conn.dialect.name == "postgresql":
        current = conn.execute(text("SELECT current_schema()")).scalar()
        if current:
            return f"{current}.{audit_table}"
    return audit_table


def _installed_key(conn: Connection, audit_table: str, schema: str | None) -> bytes:
    """The key ``postgres.install`` stored (PostgreSQL), or the empty key elsewhere."""
    if conn.dialect.name != "postgresql":
        return b""
    secret = f"{audit_table}_secret"
    if not inspect(conn).has_table(secret, schema=schema):
        return b""
    target = qualified(conn, secret, schema)
    savepoint = conn.begin_nested()
    try:
        stored = conn.execute(text(f"SELECT key FROM {target}")).scalar()
    except DBAPIError as exc:
        savepoint.rollback()
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise KeyUnavailableError(
            f"cannot read the chain key from {secret} ({reason}): connect as the audit log's owner or a "
            "superuser, or pass the key (--key-env)"
        ) from None
    savepoint.commit()
    return b"" if stored is None else bytes(stored)


@contextmanager
def _connection(bind: Engine | Connection) -> Iterator[Connection]:
    """An Engine gets its own (read-only, rolled back) transaction; a Connection is used as is."""
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            try:
                yield conn
            finally:
                conn.rollback()
    else:
        yield bind
