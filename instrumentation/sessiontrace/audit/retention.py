"""Retention: dropping a partitioned audit log's old months without breaking its verification.

A log installed with ``partition_by_month=True`` keeps each UTC month in a partition named
``<table>_pYYYYMM``; retention drops whole months, which only the log's owner (or a superuser) may
do. Rows missing from the start of the chain look to ``verify`` exactly like deleted rows, so
``retire_partitions`` works in this order, in one transaction:

1. stop appends: take the chain's advisory lock (no row gets a ``seq`` until the transaction ends,
   and every append that already has one has committed or rolled back) and lock the partitions to
   drop, so that the rows counted below are all the rows they will ever hold;
2. verify the chain (from the newest checkpoint on) and write a signed checkpoint that also records
   the retirement: the last retired row's ``seq`` and ``row_hash``, signed with the checkpoint key,
   which the database never sees;
3. drop the partitions.

The partition holding the log's newest row never goes: new rows link to it, and without it the
chain would start again at seq 1. ``verify(..., checkpoints=DIR)`` then resumes the chain after the
latest retirement: the first remaining row must link to the recorded ``row_hash``. Without the
checkpoints, or after partitions dropped by hand, the missing rows are a seq gap, as they should
be. Should the drop fail after the checkpoint was written, the rows it names stay in the log;
``verify`` still checks them (they must lead up to the recorded ``row_hash``), and running the
retirement again drops them under the checkpoint already written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from sqlalchemy import Connection, Engine, text

from sessiontrace.audit.checkpoint import CheckpointError, load_checkpoints, write_checkpoint
from sessiontrace.audit.errors import AuditError
from sessiontrace.audit.postgres import (
    _SETUP_LOCK,
    AuditSetupError,
    _Names,
    _names,
    _partitions,
    _quote,
    _relkind,
    _transaction,
)
from sessiontrace.audit.schema import AUDIT_TABLE
from sessiontrace.audit.verify import _label, retirements, verify

__all__ = ["RetentionError", "Retirement", "retire_partitions"]


class RetentionError(AuditError):
    """The partitions cannot be retired as asked (the reason says why); nothing was changed."""


@dataclass(frozen=True, slots=True)
class Retirement:
    """What ``retire_partitions`` dropped (or, on a dry run, would drop)."""

    partitions: tuple[str, ...]
    retired_through: int | None
    """The last retired ``seq``; None when the partitions held no row."""
    checkpoint: Path | None
    """The signed checkpoint recording the retirement (None on a dry run or with no row retired)."""


def retire_partitions(
    bind: Engine | Connection,
    before: date,
    checkpoints: str | Path,
    *,
    signing_key: bytes,
    chain_key: bytes | None = None,
    audit_table: str = AUDIT_TABLE,
    schema: str | None = None,
    dry_run: bool = False,
) -> Retirement:
    """Drop the monthly partitions of months that end on or before ``before``, recording the
    retirement in a signed checkpoint in ``checkpoints`` first (see the module docstring).

    ``signing_key`` signs the checkpoint (``chain_key`` or the installed key verifies the chain,
    as in ``write_checkpoint``). Refused with ``RetentionError`` when the current month would go,
    when a retired row's ``seq`` is above a row that stays (commits around a month's end can
    interleave): retire the next month with it, or when the log's newest row would go: retire once
    a later month has rows. Rows an earlier retirement signed but could not drop are dropped under
    its checkpoint. ``dry_run`` only reports what would go.
    """
    cutoff = date(before.year, before.month, 1)
    with _transaction(bind) as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SETUP_LOCK})  # not beside ensure_partitions
        names = _names(conn, audit_table, schema)
        if _relkind(conn, names.audit) != "p":
            raise AuditSetupError(
                f"{names.schema}.{names.table} is not a partitioned audit log: retention drops monthly partitions"
            )
        this_month: date = conn.execute(text("SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date")).scalar_one()
        if cutoff > this_month:
            raise RetentionError(
                f"--before can be at most {this_month:%Y-%m}: only the months before the current one can be retired"
            )
        month_of = re.compile(re.escape(names.table) + r"_p(\d{4})(\d{2})")
        retiring = []
        for name in sorted(_partitions(conn, names)):
            found = month_of.fullmatch(name)
            if found and date(int(found[1]), int(found[2]), 1) < cutoff:
                retiring.append(name)
        if not retiring:
            return Retirement((), None, None)
        qualified = [f"{_quote(names.schema)}.{_quote(name)}" for name in retiring]
        if not dry_run:
            # Appends wait for this lock from here on, and those that had it (and a seq) have ended:
            # max(seq) below is final. An append already routed into a month to retire waits for it
            # holding that partition, so the LOCK TABLE that follows deadlocks with it and PostgreSQL
            # fails one of the two: now, before anything is signed or dropped, not at the DROP.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": names.lock_key})
            conn.execute(text(f"LOCK TABLE {', '.join(qualified)} IN ACCESS EXCLUSIVE MODE"))
        oids = [conn.execute(text("SELECT to_regclass(:t)::oid"), {"t": q}).scalar_one() for q in qualified]
        last = conn.execute(
            text(f"SELECT max(seq) FROM {names.audit} WHERE tableoid = ANY(:oids)"), {"oids": oids}
        ).scalar()
        signed = None
        if last is not None:
            staying = conn.execute(
                text(f"SELECT min(seq) FROM {names.audit} WHERE seq < :last AND NOT tableoid = ANY(:oids)"),
                {"last": last, "oids": oids},
            ).scalar()
            if staying is not None:
                raise RetentionError(
                    f"seq {staying} stays (it is in a later month) but seq {last} would go: the months' rows "
                    "interleave in the chain; retire the next month with them"
                )
            if last == conn.execute(text(f"SELECT max(seq) FROM {names.audit}")).scalar():
                raise RetentionError(
                    f"seq {last}, the log's newest row, is in a month to retire: the newest row must stay (new rows "
                    "link to it; without it the chain would start again at seq 1); retire these months once a later "
                    "month has rows"
                )
            signed = _signed_retirement(conn, names, checkpoints, signing_key, audit_table, schema, last, oids)
        if dry_run:
            return Retirement(tuple(retiring), last, None)
        path = None
        if signed is not None:  # a retirement whose drop failed: its checkpoint stands, its rows go now
            report = verify(
                conn,
                key=chain_key,
                audit_table=audit_table,
                schema=schema,
                checkpoints=checkpoints,
                checkpoint_key=signing_key,
            )
            if not report.ok:
                raise RetentionError(f"not retiring: {report.summary()}")
            path = signed
        elif last is not None:
            _, path = write_checkpoint(
                conn,
                checkpoints,
                signing_key=signing_key,
                chain_key=chain_key,
                audit_table=audit_table,
                schema=schema,
                retire_through=last,
            )
        for partition in qualified:
            conn.execute(text(f"DROP TABLE {partition}"))
    return Retirement(tuple(retiring), last, path)


def _signed_retirement(
    conn: Connection,
    names: _Names,
    checkpoints: str | Path,
    signing_key: bytes,
    audit_table: str,
    schema: str | None,
    last: int,
    oids: list[int],
) -> Path | None:
    """The checkpoint of an earlier retirement that already covers the rows up to ``last`` (its drop
    failed), or None when they are retired for the first time."""
    folder = Path(checkpoints)
    if not folder.is_dir():
        return None
    try:
        existing = load_checkpoints(folder, signing_key, table=_label(conn, audit_table, schema), required=False)
    except CheckpointError as exc:
        raise CheckpointError(
            f"the existing checkpoints do not hold, not retiring: {exc}", name=exc.name, seq=exc.seq
        ) from None
    retired = retirements(existing)
    if not retired or last > retired[-1].seq:
        return None
    latest = retired[-1]
    # Every row it retired must go now: one left behind would stand below the retirement, alone.
    staying = conn.execute(
        text(f"SELECT min(seq) FROM {names.audit} WHERE seq <= :s AND NOT tableoid = ANY(:oids)"),
        {"s": latest.seq, "oids": oids},
    ).scalar()
    if staying is not None:
        raise RetentionError(
            f"seq {staying} would stay, but checkpoint {latest.checkpoint} retired the rows up to seq {latest.seq} "
            f"(its drop failed): retire again through the month that holds seq {latest.seq}"
        )
    return folder / latest.checkpoint
