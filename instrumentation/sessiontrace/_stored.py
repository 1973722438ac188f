"""Reading back values that someone else stored: the span store's columns, the audit log's.

A store file or an audit log can hold anything: rows of another version, a hand edit, a superuser
writing with the triggers off, a damaged disk. Readers check each value's shape with these helpers
and fall back to a safe value, keeping the stored text (``stored_text``) so nothing is lost.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

MAX_DEPTH = 100
"""JSON nested deeper than this is not read: the renderers recurse, and no value we write nests so
deep (span attributes are flat; audited values are columns)."""


def load_json(stored: object) -> tuple[Any, bool]:
    """``(value, True)`` for JSON text (or UTF-8 bytes) nested at most ``MAX_DEPTH`` deep, else
    ``(None, False)``: malformed, too deep, or not text at all."""
    if isinstance(stored, (bytes, bytearray, memoryview)):
        try:
            stored = bytes(stored).decode("utf-8")
        except UnicodeDecodeError:
            return None, False
    if not isinstance(stored, str):
        return None, False
    try:
        value = json.loads(stored)
    except (ValueError, RecursionError):  # RecursionError: nested past the interpreter's limit
        return None, False
    # Counting brackets is cheap; only text with that many can nest too deep.
    if stored.count("[") + stored.count("{") > MAX_DEPTH and _too_deep(value):
        return None, False
    return value, True


def _too_deep(value: Any) -> bool:
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > MAX_DEPTH:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def stored_text(stored: object) -> str | None:
    """The stored value as text, to keep what could not be read: bytes as UTF-8 (bad bytes as
    U+FFFD), a number as its digits, NULL as ``None``."""
    if stored is None or isinstance(stored, str):
        return stored
    if isinstance(stored, (bytes, bytearray, memoryview)):
        return bytes(stored).decode("utf-8", "replace")
    return str(stored)


def whole_number(stored: object) -> int | None:
    """``stored`` if it is an integer (not a bool, a float or digits in text), else ``None``."""
    return stored if type(stored) is int else None


def uuid_text(stored: object) -> str | None:
    """A stored UUID as canonical text (SQLite keeps 32 hex digits); ``None`` for NULL or a value
    that is none."""
    text = stored_text(stored)
    if text is None:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def strings(value: Any) -> tuple[str, ...] | None:
    """``value`` as a tuple of strings if it is a JSON list of strings, else ``None``."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None
