"""Column values as JSON, losslessly, and back.

The audit log keeps ``previous_values`` / ``new_values`` as JSON so a verifier, a reviewer and
``revert`` can read them without our Python types. Each value is encoded so that the column's
type alone decodes it again: ``Decimal`` as a string (a JSON number would round), aware datetimes
as ISO 8601 with their offset, ``date`` / ``time`` as ISO, ``UUID`` as text, bytes as base64,
enum members as the column stores them (by name in an ``Enum`` column, by value in a plain
``String`` / ``Integer`` one), floats as numbers. Anything else raises ``AuditEncodingError`` naming
``table.column``: a change whose audit would lose information is refused, not recorded vaguely.
"""

from __future__ import annotations

import base64
import enum
import json
import math
import uuid
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, types

from sessiontrace.audit.errors import AuditEncodingError

MASKED = "[MASKED]"
"""What a masked column's value is recorded as (the column is still listed in ``changed_fields``)."""

JsonValue = Any
"""A value ``json.dumps`` accepts: ``None``, ``bool``, ``int``, ``float``, ``str``, lists and dicts."""


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""One encoder for every call: ``json.dumps`` with options builds a new one each time, which cost
a quarter of each call (an ORM flush encodes four values per change)."""


def canonical_json(value: JsonValue) -> str:
    """The one JSON text we write and hash: sorted keys, no spaces, UTF-8 kept as is."""
    return _CANONICAL.encode(value)


def same_encoded(first: JsonValue, second: JsonValue) -> bool:
    """Whether two encoded values have the same canonical JSON: ``True`` and ``1``, ``1`` and ``1.0``
    are different values (Python's ``==`` says they are equal)."""
    kind = type(first)
    if kind is not type(second):
        return False
    if kind is str or kind is int or kind is bool or first is None:
        return bool(first == second)
    return canonical_json(first) == canonical_json(second)


def _identity(value: Any) -> Any:
    return value


def _float(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("NaN and infinity have no JSON form")
    return value


def _datetime(value: datetime) -> str:
    return value.isoformat()


def _bytes(value: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(bytes(value)).decode("ascii")


# Exact-type dispatch: one dict lookup for the common cases on the hot path.
_ENCODERS: dict[type, Callable[[Any], Any]] = {
    str: _identity,
    int: _identity,
    bool: _identity,
    type(None): _identity,
    float: _float,
    Decimal: str,
    datetime: _datetime,
    date: date.isoformat,
    time: time.isoformat,
    uuid.UUID: str,
    bytes: _bytes,
    bytearray: _bytes,
    memoryview: _bytes,
}


def stores_enum_names(column: Column[Any]) -> bool:
    """Whether ``column`` stores an enum member by name: an ``Enum`` column with an enum class (an
    ``ARRAY`` of them too). Any other column given a member stores its value (``StrEnum`` in a
    ``String`` column, ``IntEnum`` in an ``Integer`` one, members inside JSON)."""
    column_type = column.type
    if isinstance(column_type, types.TypeDecorator):
        column_type = column_type.impl_instance
    if isinstance(column_type, types.ARRAY):
        column_type = column_type.item_type
        if isinstance(column_type, types.TypeDecorator):
            column_type = column_type.impl_instance
    return isinstance(column_type, types.Enum) and column_type.enum_class is not None


def encode_value(value: Any, where: str, *, enum_names: bool = True) -> JsonValue:
    """``value`` as a JSON value; ``AuditEncodingError`` naming ``where`` (``table.column``) if it
    cannot be encoded losslessly. Enum members are encoded by name when ``enum_names`` (what an
    ``Enum`` column stores, see ``stores_enum_names``), else by value."""
    encoder = _ENCODERS.get(type(value))
    try:
        if encoder is not None:
            return encoder(value)
        if isinstance(value, enum.Enum):
            return value.name if enum_names else encode_value(value.value, where, enum_names=False)
        for kind, subclass_encoder in _ENCODERS.items():  # subclasses (str enums are caught above)
            if isinstance(value, kind):
                return subclass_encoder(value)
        if isinstance(value, (list, tuple)):  # ARRAY and JSON columns
            return [encode_value(item, where, enum_names=enum_names) for item in value]
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):  # JSON columns
            return {k: encode_value(v, where, enum_names=enum_names) for k, v in value.items()}
    except AuditEncodingError:
        raise
    except ValueError as exc:
        raise AuditEncodingError(f"cannot audit {where}: {exc} ({value!r})") from None
    raise AuditEncodingError(
        f"cannot audit {where}: a {type(value).__qualname__} value has no lossless JSON encoding ({value!r:.80})"
    )


def decode_value(column: Column[Any], value: JsonValue) -> Any:
    """The Python value ``encode_value`` recorded for ``column``, read back from its JSON.

    A masked value (``MASKED``) cannot be decoded; callers that may meet one check for it first.
    """
    if value is None:
        return None
    column_type = column.type
    if isinstance(column_type, types.TypeDecorator):
        column_type = column_type.impl_instance
    if isinstance(column_type, types.Enum) and column_type.enum_class is not None:
        return column_type.enum_class[value]
    if isinstance(column_type, (types.JSON, types.ARRAY)):
        return value
    try:
        python_type = column_type.python_type
    except NotImplementedError:
        return value
    if python_type is Decimal:
        return Decimal(value)
    if python_type is datetime:
        return datetime.fromisoformat(value)
    if python_type is date:
        return date.fromisoformat(value)
    if python_type is time:
        return time.fromisoformat(value)
    if python_type is uuid.UUID:
        return uuid.UUID(value)
    if python_type is bytes:
        return base64.b64decode(value)
    if python_type is float:
        return float(value)
    return value
