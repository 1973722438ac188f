"""The hash chain that makes the audit log tamper-evident.

Row ``n`` stores ``prev_hash`` (row ``n-1``'s ``row_hash``, or ``GENESIS``) and
``row_hash = HMAC-SHA256(key, prev_hash + "\\n" + line)``, where ``line`` is the row's content as
the database renders it as text, fields joined by U+001F (unit separator), in ``LINE_FIELDS``
order:

- ``seq`` in decimal; ``change_timestamp`` as integer microseconds since the Unix epoch;
- JSON columns exactly as the database returns them as text (PostgreSQL: ``jsonb::text``, which
  is canonical; SQLite: the stored text);
- every other column as text, NULL as the empty string.

Hashing the database's own rendering means the writer (Python on SQLite, a trigger on
PostgreSQL) and the verifier hash the same bytes without re-encoding JSON. With no key the HMAC
uses the empty key: still a chain, but anyone can recompute it, so keep a key and export signed
checkpoints when the log must convince an auditor.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime, timezone

GENESIS = "0" * 64
SEPARATOR = "\x1f"
LINE_FIELDS = (
    "seq",
    "table_name",
    "record_id",
    "change_type",
    "changed_fields",
    "previous_values",
    "new_values",
    "session_id",
    "changed_by_user_id",
    "change_timestamp",
    "trace_id",
    "span_id",
    "transaction_id",
    "db_user",
    "source",
)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def epoch_micros(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def line(row: Mapping[str, object]) -> str:
    """The hashed text of a row whose values are already the database's text renderings,
    except ``change_timestamp`` (a datetime or epoch microseconds) and ``seq`` (an int)."""
    parts = []
    for name in LINE_FIELDS:
        value = row.get(name)
        if name == "change_timestamp" and isinstance(value, datetime):
            value = epoch_micros(value)
        parts.append("" if value is None else str(value))
    return SEPARATOR.join(parts)


def link(prev_hash: str, row_line: str, key: bytes = b"") -> str:
    """``HMAC-SHA256(key, prev_hash + "\\n" + line)`` as lower-case hex."""
    return hmac.new(key, f"{prev_hash}\n{row_line}".encode(), hashlib.sha256).hexdigest()
