"""What a well-formed session value is.

Each check returns the cleaned value or raises ``InvalidValue`` naming the field. Code that takes
values from the application (``session(...)``) lets the error reach the caller; code that takes
them from the wire (baggage, headers) catches it and drops the value.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from sessiontrace.semconv import TRIGGER_SOURCES

MAX_USER_ID = 256
MAX_ROLE = 64
MAX_ROLES = 32
MAX_TRIGGER_TYPE = 256

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ROLE = re.compile(r"[A-Za-z0-9_.:/\-]+")
# Control characters (C0, DEL, C1) and the Unicode line/paragraph separators: they forge log lines.
# Lone surrogates: no encoding takes them, so every header carrying the value would fail.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


class InvalidValue(ValueError):
    """A session value that is not well formed; the message names the field."""


def session_id(value: object, field: str = "session id") -> str:
    """A UUID in canonical 8-4-4-4-12 form, returned lower-case."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise InvalidValue(f"{field} must be a UUID like 0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b, got {shown(value)}")
    return value.lower()


def user_id(value: object) -> str:
    """A printable string of 1 to 256 characters, without surrounding whitespace."""
    text = _printable(value, MAX_USER_ID)
    if text is None:
        raise InvalidValue(f"user id must be 1 to {MAX_USER_ID} printable characters, got {shown(value)}")
    return text


def roles(values: Iterable[object] | str) -> tuple[str, ...]:
    """Up to 32 role names of letters, digits and ``_ . : / -``; a string is split on commas."""
    items = values.split(",") if isinstance(values, str) else list(values)
    if len(items) > MAX_ROLES:
        raise InvalidValue(f"at most {MAX_ROLES} roles, got {len(items)}")
    cleaned: list[str] = []
    for item in items:
        role = item.strip() if isinstance(item, str) else item
        if not isinstance(role, str) or len(role) > MAX_ROLE or not _ROLE.fullmatch(role):
            raise InvalidValue(f"a role must be 1 to {MAX_ROLE} of letters, digits, '_.:/-', got {shown(role)}")
        cleaned.append(role)
    return tuple(dict.fromkeys(cleaned))  # de-duplicated, order kept


def trigger_source(value: object) -> str:
    """One of ``ui, api, schedule, webhook, queue, system``."""
    if value not in TRIGGER_SOURCES:
        allowed = ", ".join(sorted(TRIGGER_SOURCES))
        raise InvalidValue(f"trigger source must be one of {allowed}; got {shown(value)}")
    assert isinstance(value, str)
    return value


def trigger_type(value: object) -> str:
    """Free text of 1 to 256 printable characters (``POST /claims``, ``nightly-reconcile``), without
    surrounding whitespace."""
    text = _printable(value, MAX_TRIGGER_TYPE)
    if text is None:
        raise InvalidValue(f"trigger type must be 1 to {MAX_TRIGGER_TYPE} printable characters, got {shown(value)}")
    return text


def _printable(value: object, limit: int) -> str | None:
    """``value`` stripped, when it is 1 to ``limit`` printable characters; else None. Stripped
    because baggage receivers strip (the W3C and Jaeger propagators): the value we keep is the one
    the next process reads, and the one a signature must cover."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > limit or _CONTROL.search(value):  # a control character anywhere refuses it
        return None
    return text


def shown(value: object) -> str:
    """A short, safe rendering of a rejected value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
