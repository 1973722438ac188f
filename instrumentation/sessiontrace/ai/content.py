"""Prompt and answer content: off unless asked for, and always safe to put on a span.

Content is captured only when ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is true
(or ``configure(capture_content=True)``), because prompts carry personal data. When captured, it
is encoded as JSON in the semantic-conventions message shape and capped, so a huge or odd prompt
can never break the call that produced it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sessiontrace import semconv

MAX_CONTENT_CHARS = 16_384
"""Largest JSON document we put in one attribute; a longer one has its longest strings cut (a
marker inside each says how much went) and stays valid JSON in the same shape."""

_override: bool | None = None


def set_capture_content(enabled: bool | None) -> None:
    """Force capture on or off for this process (``None``: follow the environment variable)."""
    global _override
    _override = enabled


def capture_content() -> bool:
    """Whether prompt and answer content may be recorded."""
    if _override is not None:
        return _override
    value = os.environ.get(semconv.CAPTURE_CONTENT_ENV, "").strip().lower()
    return value in ("1", "true", "yes", "on", "span_only", "span_and_event")


def text_message(role: str, text: str) -> dict[str, Any]:
    """One message in the semconv shape: ``{"role": ..., "parts": [{"type": "text", ...}]}``."""
    return {"role": role, "parts": [{"type": "text", "content": text}]}


def messages_json(messages: Iterable[Mapping[str, Any]] | Any) -> str:
    """Encode messages for ``gen_ai.input.messages`` / ``gen_ai.output.messages``: never raises,
    bytes become a size marker, unknown objects their ``repr``, and the result is capped."""
    try:
        value = _jsonable(messages)
        text = _encode(value)
        return text if len(text) <= MAX_CONTENT_CHARS else _fit(value, MAX_CONTENT_CHARS)
    except Exception as error:  # anything at all: the call that produced the content must go on
        return _encode({"unencodable": _describe(error)})


def _encode(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _describe(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"[:200]
    except Exception:  # its __str__ raised too
        return type(error).__name__


# --- capping: valid JSON in the semconv shape, whatever the size ------------------------------------------
_SHAPE_KEYS = frozenset({"role", "type", "finish_reason"})
"""Values that say what a message or part is: never cut, or the document would lose its shape
(unless longer than ``_SHAPE_MAX``: then it is no such word but content, a tool argument say)."""
_SHAPE_MAX = 64
_MARKER_ROOM = 32
"""A string is cut only when it is longer than the cut plus about a marker, so cutting shortens it."""


def _marker(count: int, unit: str) -> str:
    return f"…[truncated {count} {unit}]"


def _fit(value: Any, limit: int) -> str:
    """``value`` (already JSON-ready) encoded in at most ``limit`` characters and still valid JSON.

    The longest strings are cut first, all to one length (short strings, and the ``role`` and
    ``type`` that give the shape, stay whole), each keeping a marker inside. When that would leave
    less than ``_FLOOR`` characters of each (a very long conversation), trailing items are dropped
    instead, and a text part says how many."""
    fitted = _level_fit(value, limit, 0)
    if fitted is not None and fitted[1] >= _FLOOR:
        return fitted[0]
    dropped = _drop_trailing(value, limit)
    if dropped is not None:
        return dropped
    return fitted[0] if fitted is not None else _encode(_marker(len(_encode(value)), "chars"))


_FLOOR = 256
"""Characters of each string worth keeping before whole trailing messages are dropped instead."""


def _level_fit(value: Any, limit: int, lowest: int) -> tuple[str, int] | None:
    """The encoding with the strings cut to the highest level (>= ``lowest``) that fits, and that
    level; bisection, skipping levels whose strings alone are already too long."""
    lengths = _cuttable_lengths(value, None, [])
    low, high, best = lowest, min(max(lengths, default=0), limit), None
    while low <= high:
        level = (low + high) // 2
        if sum(min(length, level) for length in lengths) > limit:
            high = level - 1
            continue
        text = _encode(_cut(value, level, None))
        if len(text) <= limit:
            best, low = (text, level), level + 1
        else:
            high = level - 1
    return best


def _drop_trailing(value: Any, limit: int) -> str | None:
    """Leading messages (or parts), each string at least ``_FLOOR`` long, and a marker for the
    rest; when not even the first message fits, its leading parts."""
    if not isinstance(value, list) or not value:
        return None
    found = _leading(value, _with_drop_marker, limit)
    first = value[0]
    if found is not None or not (isinstance(first, dict) and isinstance(first.get("parts"), list)):
        return found
    rest = [{"type": "text", "content": _marker(len(value) - 1, "messages")}] if len(value) > 1 else []

    def alone(parts: list[Any], count: int) -> list[Any]:
        return [{**first, "parts": [*_with_drop_marker(parts, count), *rest]}]

    return _leading(first["parts"], alone, limit)


def _leading(items: list[Any], build: Callable[[list[Any], int], Any], limit: int) -> str | None:
    """``build(items, count)`` for the most items (at least one, not all) that fit with each string
    cut to ``_FLOOR``, then with as much of each string as still fits."""
    if len(items) < 2:
        return None
    floor = _cut(items, _FLOOR, None)
    low, high, kept = 1, len(items) - 1, 0
    while low <= high:
        count = (low + high) // 2
        if len(_encode(build(floor, count))) <= limit:
            kept, low = count, count + 1
        else:
            high = count - 1
    if not kept:
        return None
    fitted = _level_fit(build(items, kept), limit, _FLOOR)
    return fitted[0] if fitted is not None else _encode(build(floor, kept))


def _cuttable_lengths(value: Any, key: str | None, found: list[int]) -> list[int]:
    if isinstance(value, str):
        if key not in _SHAPE_KEYS or len(value) > _SHAPE_MAX:
            found.append(len(value))
    elif isinstance(value, dict):
        for name, item in value.items():
            _cuttable_lengths(item, name, found)
    elif isinstance(value, list):
        for item in value:
            _cuttable_lengths(item, None, found)
    return found


def _cut(value: Any, level: int, key: str | None) -> Any:
    if isinstance(value, str):
        if (key in _SHAPE_KEYS and len(value) <= _SHAPE_MAX) or len(value) <= level + _MARKER_ROOM:
            return value
        return value[:level] + _marker(len(value) - level, "chars")
    if isinstance(value, dict):
        return {name: _cut(item, level, name) for name, item in value.items()}
    if isinstance(value, list):
        return [_cut(item, level, None) for item in value]
    return value


def _with_drop_marker(items: list[Any], kept: int) -> list[Any]:
    """``items[:kept]`` and a marker in the same shape: a text part at the end of the last message
    kept (or of a message of its own), a text part among parts, else a string."""
    first, head = items[0], items[:kept]
    if isinstance(first, dict) and isinstance(first.get("parts"), list):
        part = {"type": "text", "content": _marker(len(items) - kept, "messages")}
        if head and isinstance(head[-1], dict) and isinstance(head[-1].get("parts"), list):
            return [*head[:-1], {**head[-1], "parts": [*head[-1]["parts"], part]}]
        return [*head, {"role": first.get("role") or "user", "parts": [part]}]
    if isinstance(first, dict) and "type" in first:
        return [*head, {"type": "text", "content": _marker(len(items) - kept, "parts")}]
    return [*head, _marker(len(items) - kept, "items")]


def _jsonable(value: Any, depth: int = 0) -> Any:
    if depth > 20:
        return "[nested too deep]"
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"[binary {len(bytes(value))} bytes]"
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(item, depth + 1) for item in value]
    try:
        dump = getattr(value, "model_dump", None)  # pydantic models (both provider SDKs use them)
        if callable(dump):
            return _jsonable(dump(mode="json"), depth + 1)
    except Exception:
        pass
    try:
        return repr(value)[:1000]
    except Exception:  # e.g. an ORM object whose repr reads an expired attribute
        return f"<{type(value).__qualname__}: repr failed>"
