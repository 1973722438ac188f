"""Signed checkpoints of the audit log's head, kept outside the database (in the spirit of
CloudTrail's digest files).

A checkpoint is one JSON file::

    {"previous": "<sha256 of the previous checkpoint's document, or null>", "row_hash": "...",
     "seq": 1234, "signature": "<HMAC-SHA256>", "table": "public.audit_log",
     "timestamp": "2024-05-06T07:08:09.123456+00:00", "version": 1}

``signature`` is ``HMAC-SHA256(checkpoint key, canonical JSON of every other field)``; the
checkpoint key is not the chain key and never enters the database. ``previous`` chains the
checkpoints: a checkpoint file removed, altered or replaced breaks the link of the next one.
The chain key only proves that rows were linked by someone holding it; whoever holds it (an owner
or superuser can read it) can rewrite history and re-chain every later row. A checkpoint pins
``(seq, row_hash)`` with a key they do not have, so ``verify(..., checkpoints=DIR)`` sees it.

Keep the directory somewhere the database's administrators cannot write (another host, an
object store with retention locks) and write a checkpoint periodically (cron:
``sessiontrace audit checkpoint``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text

from sessiontrace.audit.encoding import canonical_json
from sessiontrace.audit.errors import AuditError
from sessiontrace.audit.schema import AUDIT_TABLE

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoints", "retired_through", "write_checkpoint"]

VERSION = 1
_FIELDS = ("previous", "row_hash", "seq", "table", "timestamp", "version")


class CheckpointError(AuditError):
    """A checkpoint file is unreadable, wrongly signed, or does not link to the previous one; or a
    checkpoint cannot be written because the chain does not hold."""

    def __init__(self, message: str, *, name: str | None = None, seq: int = 0) -> None:
        super().__init__(message)
        self.name = name
        self.seq = seq


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One signed checkpoint: the log ``table`` had ``row_hash`` at ``seq`` at ``timestamp``."""

    table: str
    seq: int
    row_hash: str
    timestamp: str
    previous: str | None
    signature: str
    name: str
    """The file's name (what reports refer to)."""
    retired: tuple[int, str] | None = None
    """``(seq, row_hash)`` when this checkpoint records a retirement: the rows through ``seq`` were
    removed on purpose (``retention.retire_partitions``) and row ``seq`` had ``row_hash``, which the
    first remaining row links to."""

    def body(self) -> dict[str, Any]:
        """Every signed field."""
        body: dict[str, Any] = {
            "previous": self.previous,
            "row_hash": self.row_hash,
            "seq": self.seq,
            "table": self.table,
            "timestamp": self.timestamp,
            "version": VERSION,
        }
        if self.retired is not None:
            body["retired"] = {"seq": self.retired[0], "row_hash": self.retired[1]}
        return body

    def document(self) -> dict[str, Any]:
        return {**self.body(), "signature": self.signature}

    @property
    def digest(self) -> str:
        """SHA-256 of the whole document's canonical JSON: what the next checkpoint's ``previous`` holds."""
        return hashlib.sha256(canonical_json(self.document()).encode()).hexdigest()


def _sign(body: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical_json(body).encode(), hashlib.sha256).hexdigest()


def load_checkpoints(directory: str | Path, key: bytes, *, table: str, required: bool = True) -> list[Checkpoint]:
    """The checkpoints of ``table`` (as ``verify`` labels it: ``schema.name`` on PostgreSQL) in
    ``directory``, oldest first, each signature and link checked; ``CheckpointError`` naming the
    first file that fails (or, if ``required``, when there is none)."""
    folder = Path(directory)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a directory of checkpoints")
    found: list[Checkpoint] = []
    for path in sorted(folder.glob("*.json")):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path.name} is not a readable checkpoint: {exc}", name=path.name) from None
        if not isinstance(document, dict) or document.get("table") != table:
            continue  # another log's checkpoint (or not a checkpoint at all)
        checkpoint = _parse(document, path.name)
        if not hmac.compare_digest(_sign(checkpoint.body(), key), checkpoint.signature):
            raise CheckpointError(
                f"{path.name}: the signature does not match (altered, or signed with another key)",
                name=path.name,
                seq=checkpoint.seq,
            )
        found.append(checkpoint)
    if not found and required:
        raise CheckpointError(f"no checkpoint of {table} in {folder}")
    found.sort(key=lambda c: (c.seq, c.timestamp))
    previous: Checkpoint | None = None
    for checkpoint in found:
        wanted = previous.digest if previous is not None else None
        if checkpoint.previous != wanted:
            after = f"the digest of {previous.name}" if previous is not None else "null (it is the oldest)"
            raise CheckpointError(
                f"{checkpoint.name}: its previous digest should be {after}: a checkpoint was removed or replaced",
                name=checkpoint.name,
                seq=checkpoint.seq,
            )
        previous = checkpoint
    return found


def _parse(document: dict[str, Any], name: str) -> Checkpoint:
    missing = [f for f in (*_FIELDS, "signature") if f not in document]
    seq, row_hash, previous = document.get("seq"), document.get("row_hash"), document.get("previous")
    if (
        missing
        or document["version"] != VERSION
        or not isinstance(seq, int)
        or isinstance(seq, bool)
        or not isinstance(row_hash, str)
        or not isinstance(document["timestamp"], str)
        or not isinstance(document["signature"], str)
        or not (previous is None or isinstance(previous, str))
    ):
        detail = f"missing {', '.join(missing)}" if missing else "a field has the wrong type or version"
        raise CheckpointError(f"{name} is not a valid checkpoint ({detail})", name=name)
    retired = document.get("retired")
    if retired is not None:
        retired_seq = retired.get("seq") if isinstance(retired, dict) else None
        retired_hash = retired.get("row_hash") if isinstance(retired, dict) else None
        if (
            not isinstance(retired_seq, int)
            or isinstance(retired_seq, bool)
            or not 0 < retired_seq <= seq
            or not isinstance(retired_hash, str)
        ):
            raise CheckpointError(f"{name} is not a valid checkpoint (retired is malformed)", name=name)
        retired = (retired_seq, retired_hash)
    return Checkpoint(
        table=document["table"],
        seq=seq,
        row_hash=row_hash,
        timestamp=document["timestamp"],
        previous=previous,
        signature=document["signature"],
        name=name,
        retired=retired,
    )


def retired_through(checkpoints: list[Checkpoint]) -> tuple[int, str] | None:
    """``(seq, row_hash)`` of the latest retirement among ``checkpoints``: rows up to ``seq`` are gone
    on purpose and the chain resumes after it."""
    retirements = [c.retired for c in checkpoints if c.retired is not None]
    return max(retirements) if retirements else None


def write_checkpoint(
    bind: Engine | Connection,
    directory: str | Path,
    *,
    signing_key: bytes,
    chain_key: bytes | None = None,
    audit_table: str = AUDIT_TABLE,
    schema: str | None = None,
    verify_chain: bool = True,
    now: datetime | None = None,
    retire_through: int | None = None,
) -> tuple[Checkpoint, Path]:
    """Write a checkpoint of the log's current head into ``directory``, signed with
    ``signing_key`` and linked to the newest checkpoint already there.

    With ``verify_chain`` (the default) the rows since the previous checkpoint are verified first
    (``chain_key``, or the installed key as in ``verify``), and ``CheckpointError`` refuses to pin
    a chain that does not hold. ``retire_through`` also records that the rows up to that seq are
    about to be removed on purpose (see ``retention``); it needs ``verify_chain``. Returns the
    checkpoint and the file written.
    """
    from sessiontrace.audit.verify import (
        GENESIS_ANCHOR,
        _Anchor,
        _connection,
        _installed_key,
        _label,
        _verify,
        qualified,
        retirements,
    )

    if not signing_key:
        raise ValueError("a checkpoint needs a non-empty signing key")
    if retire_through is not None and not verify_chain:
        raise ValueError("retiring rows needs verify_chain: only verified rows may be retired")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    retiring: tuple[int, str] | None = None
    with _connection(bind) as conn:
        label = _label(conn, audit_table, schema)
        try:
            existing = load_checkpoints(folder, signing_key, table=label, required=False)
        except CheckpointError as exc:
            raise CheckpointError(
                f"the existing checkpoints do not hold, not adding one: {exc}", name=exc.name, seq=exc.seq
            ) from None
        last = existing[-1] if existing else None
        retired = retirements(existing)
        resume = retired[-1] if retired else GENESIS_ANCHOR
        # Verification resumes after the newest pin: the last checkpoint, or a later retirement
        # (whose rows, and maybe the last checkpoint's row, are gone). Rows about to be retired are
        # all verified, from the previous retirement on, against every checkpoint since.
        anchor = _Anchor(last.seq, last.row_hash) if last is not None else resume
        if retire_through is not None or resume.seq >= anchor.seq:
            anchor = resume
        pinned = {c.seq: (c.row_hash, c.name) for c in existing}  # those the walk passes are checked
        target = qualified(conn, audit_table, schema)
        if last is not None and last.seq > resume.seq:
            stored = conn.execute(text(f"SELECT row_hash FROM {target} WHERE seq = :s"), {"s": last.seq}).scalar()
            if stored != last.row_hash:
                raise CheckpointError(
                    f"seq {last.seq} no longer has the row_hash checkpoint {last.name} recorded:"
                    " history was rewritten; not adding a checkpoint",
                    name=last.name,
                    seq=last.seq,
                )
        if verify_chain:
            key = chain_key if chain_key is not None else _installed_key(conn, audit_table, schema)
            report = _verify(
                conn,
                key=key,
                audit_table=audit_table,
                schema=schema,
                expected=pinned,
                checkpoints=0,
                anchor=anchor,
                retired=retired,
            )
            if not report.ok:
                raise CheckpointError(f"not adding a checkpoint: {report.summary()}")
            head = (report.last_seq, report.head_hash) if report.last_seq is not None else (anchor.seq, anchor.row_hash)
            if retire_through is not None:
                retiring = _retiring(conn, target, retire_through, anchor.seq, int(head[0] or 0))
        else:
            row = conn.execute(
                text(f"SELECT seq, row_hash FROM {target} WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1")
            ).first()
            head = (row[0], row[1]) if row is not None else (anchor.seq, anchor.row_hash)
    seq, row_hash = int(head[0] or 0), str(head[1])
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)
    name = f"{safe}.{seq:015d}.{moment.strftime('%Y%m%dT%H%M%S%fZ')}.json"
    unsigned = Checkpoint(
        table=label,
        seq=seq,
        row_hash=row_hash,
        timestamp=moment.isoformat(timespec="microseconds"),
        previous=last.digest if last is not None else None,
        signature="",
        name=name,
        retired=retiring,
    )
    checkpoint = replace(unsigned, signature=_sign(unsigned.body(), signing_key))
    path = folder / name
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(canonical_json(checkpoint.document()) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return checkpoint, path


def _retiring(conn: Connection, target: str, seq: int, anchor: int, head: int) -> tuple[int, str]:
    """``(seq, row_hash)`` of the last row to retire, which must lie between the current anchor
    (exclusive) and the verified head."""
    if not anchor < seq <= head:
        raise CheckpointError(
            f"cannot retire through seq {seq}: the rows after seq {anchor} (up to the head, {head}) can be retired"
        )
    row_hash = conn.execute(text(f"SELECT row_hash FROM {target} WHERE seq = :s"), {"s": seq}).scalar()
    return seq, str(row_hash)
