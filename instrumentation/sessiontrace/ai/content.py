"""Prompt and answer content: off unless asked for, and always safe to put on a span.

Content is captured only when ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is true
(or ``configure(capture_content=True)``), because prompts carry personal data. When captured, it
is encoded as JSON in the semantic-conventions message shape and capped, so a huge or odd prompt
can never break the call that produced it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from sessiontrace import semconv

MAX_CONTENT_CHARS = 16_384
"""Largest JSON document we put in one attribute; longer ones are cut with a marker."""

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
        text = json.dumps(_jsonable(messages), ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as error:
        text = json.dumps({"unencodable": f"{type(error).__name__}: {error}"[:200]})
    return cap(text)


def cap(text: str, limit: int = MAX_CONTENT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[truncated {len(text) - limit} chars]"


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
    dump = getattr(value, "model_dump", None)  # pydantic models (both provider SDKs use them)
    if callable(dump):
        try:
            return _jsonable(dump(mode="json"), depth + 1)
        except Exception:
            pass
    return repr(value)[:1000]
