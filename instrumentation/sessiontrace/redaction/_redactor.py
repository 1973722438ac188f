"""``Redactor``: what to do with one attribute, given its key and value.

Order of decisions for a key: a deny pattern matches → the whole value becomes ``[REDACTED:denied]``
(deny wins over allow, so a compliance rule cannot be undone by an allow entry); an allow pattern
matches → the value is left exactly as it is (not scanned, not capped); otherwise strings go
through the detectors, then the callbacks, then the size cap. So does every string inside a value:
each item of an array (whatever its first item), each value of a map (a log body), under the key
``<key>.<inner key>``, at any depth; and bytes (a log body may be bytes), read as UTF-8 with any
undecodable byte kept as it is, so that bytes that are not text come back unchanged.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from sessiontrace import semconv
from sessiontrace._attributes import frozen
from sessiontrace._log import warn_once
from sessiontrace.redaction._detectors import DETECTORS, MARKER_FORMAT, SHORTEST, Scanner

Callback = Callable[[str, str], "str | None"]
"""``callback(key, value)``: a replacement for ``value``, or None to keep it. ``value`` has already
been through the built-in detectors. An exception redacts the whole value (fail closed)."""

DENIED: Final = MARKER_FORMAT.format("denied")
"""The value of an attribute whose key is on the deny list."""
FAILED: Final = MARKER_FORMAT.format("error")
"""The value of an attribute whose redaction failed (a callback raised): fail closed."""

MAX_VALUE_CHARS: Final = 32_768
"""Default cap on one string value. Twice ``sessiontrace.ai.content.MAX_CONTENT_CHARS``, so a
captured prompt keeps its own truncation marker; far below what OTLP backends reject."""

_SCAN_SLACK: Final = 512
"""Characters scanned beyond the cap, so a secret cut by the cap is still recognised and removed."""

_TOKEN_RUN: Final = re.compile(r"[A-Za-z0-9_.-]*")
"""A run of the characters of JWTs, API keys, base64url and hex (matched forwards or backwards)."""

DEFAULT_ALLOW_KEYS: Final = (
    # Identifiers we stamp on purpose. Scrubbing them breaks the one thing this library is for
    # (a peer tool scrubbed session ids that way). ``user.id`` is here deliberately: it is the
    # "who" of the audit trail, set by the application or verified inbound; if yours are emails
    # and must not leave the process, pass an opaque id or add ``user.id`` to the deny keys.
    semconv.SESSION_ID,
    semconv.SESSION_PREVIOUS_ID,
    semconv.USER_ID,
    semconv.USER_ROLES,
    # Ids, names we choose and enums. Not the free text next to them: ``sessiontrace.trigger.type``
    # (an inbound request's path), ``workflow.trigger.name`` and ``sessiontrace.workflow.status.reason``
    # are scanned like any other value.
    semconv.TRIGGER_SOURCE,
    semconv.WORKFLOW_NAME,
    semconv.WORKFLOW_RUN_ID,
    semconv.WORKFLOW_RESULT,
    semconv.WORKFLOW_TRIGGER_TYPE,
    semconv.STEP_NAME,
    semconv.STEP_ID,
    semconv.STEP_RESULT,
    semconv.STEP_INDEX,
    semconv.STEP_ATTEMPT,
    semconv.WORKFLOW_STATUS,
    semconv.STATUS_FROM,
    semconv.STATUS_TO,
    semconv.GEN_AI_OPERATION_NAME,
    semconv.GEN_AI_PROVIDER_NAME,
    semconv.GEN_AI_REQUEST_MODEL,
    semconv.GEN_AI_RESPONSE_MODEL,
    semconv.GEN_AI_RESPONSE_ID,
    semconv.GEN_AI_CONVERSATION_ID,
    semconv.GEN_AI_OUTPUT_TYPE,
    semconv.GEN_AI_RESPONSE_FINISH_REASONS,
    "*trace_id",
    "*span_id",
    "otel.*",
)
"""Keys never scanned: exact ids and enums. Narrow on purpose: no ``sessiontrace.*`` or ``workflow.*``
glob, since free text (a status reason, a request path) lives next to the ids."""

DEFAULT_DENY_KEYS: Final = (
    "*password*",
    "*passwd*",
    "*passphrase*",
    "*secret*",
    "*api_key*",
    "*api-key*",
    "*apikey*",
    "*access_key*",
    "*private_key*",
    "*credential*",
    "*token",  # access_token, x-auth-token, csrftoken; not gen_ai.usage.input_tokens
    "*authorization*",
    "*cookie*",
)
"""Keys whose values are always replaced whole (``http.request.header.authorization``...)."""

_SCAN, _ALLOW, _DENY = 0, 1, 2
_CACHE_LIMIT: Final = 4096
"""Keys whose decision is remembered; beyond that (dynamic keys), decisions are recomputed."""

NAME_KEY: Final = "span.name"
"""Key under which a span name is redacted (for allow/deny patterns and callbacks)."""
STATUS_KEY: Final = "span.status_description"
"""Key under which a span status description is redacted (an exception message there often
carries an email)."""
EVENT_NAME_KEY: Final = "event.name"
"""Key under which a span event's name is redacted (``span.add_event(f"sent to {email}")``)."""
BODY_KEY: Final = "log.body"
"""Key under which a log record body is redacted."""


def _globs(patterns: Iterable[str]) -> re.Pattern[str] | None:
    translated = [fnmatch.translate(pattern.strip().lower()) for pattern in patterns if pattern.strip()]
    return re.compile("|".join(translated)) if translated else None


class Redactor:
    """Scrubs personal data and secrets from attribute values; see the module docstring for the order.

    ``detectors``: names from ``DETECTORS`` (default all). ``deny_keys`` / ``allow_keys``: glob
    patterns on attribute keys, case-insensitive (defaults ``DEFAULT_DENY_KEYS`` /
    ``DEFAULT_ALLOW_KEYS``; pass ``(*DEFAULT_DENY_KEYS, "x.*")`` to extend). ``callbacks``: see
    ``Callback``. ``max_value_chars``: longer strings are cut with a marker (None: no cap).
    """

    __slots__ = ("_allow", "_callbacks", "_decisions", "_deny", "_max", "_scanner", "allow_keys", "deny_keys")

    def __init__(
        self,
        *,
        detectors: Iterable[str] = DETECTORS,
        deny_keys: Iterable[str] = DEFAULT_DENY_KEYS,
        allow_keys: Iterable[str] = DEFAULT_ALLOW_KEYS,
        callbacks: Sequence[Callback] = (),
        max_value_chars: int | None = MAX_VALUE_CHARS,
    ) -> None:
        if max_value_chars is not None and max_value_chars < 1:
            raise ValueError(f"max_value_chars must be positive or None, got {max_value_chars}")
        self._scanner = Scanner(detectors)
        self.deny_keys = tuple(deny_keys)
        self.allow_keys = tuple(allow_keys)
        self._deny = _globs(self.deny_keys)
        self._allow = _globs(self.allow_keys)
        self._callbacks = tuple(callbacks)
        self._max = max_value_chars
        self._decisions: dict[str, int] = {}

    @property
    def detectors(self) -> tuple[str, ...]:
        return self._scanner.detectors

    def __repr__(self) -> str:
        return (
            f"Redactor(detectors={self.detectors}, deny_keys={self.deny_keys}, allow_keys={self.allow_keys}, "
            f"callbacks={len(self._callbacks)}, max_value_chars={self._max})"
        )

    # --- one value ------------------------------------------------------------------------------------

    def redact(self, key: str, value: Any) -> Any:
        """``value`` redacted for ``key``; the very same object when nothing changed."""
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide(key)
        if decision == _SCAN:
            return self._value(key, value)
        return value if decision == _ALLOW else DENIED

    def redact_text(self, text: str) -> str:
        """``text`` through the built-in detectors only (no key rules, callbacks or cap)."""
        return self._scanner.scan(text)

    def redact_attributes(self, attributes: Mapping[str, Any] | None, *, prefix: str = "") -> dict[str, Any] | None:
        """A redacted copy of ``attributes``, or None when nothing needed to change (the common case:
        no allocation)."""
        if not attributes:
            return None
        # An ended span's (or an event's, a link's) attributes cannot change any more: read the
        # dict inside, not through the Mapping ABC (an ItemsView, a locked __getitem__ per key).
        items = (frozen(attributes) or attributes).items()
        changed: dict[str, Any] | None = None
        decisions = self._decisions
        text = self._text
        for key, value in items:
            # ``redact()`` inlined for the common cases: an allowed key, a number, a string.
            full = prefix + key if prefix else key
            decision = decisions.get(full)
            if decision is None:
                decision = self._decide(full)
            if decision == _ALLOW:
                continue
            if decision == _SCAN:
                if type(value) is str:
                    new = text(full, value)
                else:
                    kind = type(value)
                    if kind is int or kind is float or kind is bool:
                        continue
                    new = self._value(full, value)
            else:
                new = DENIED
            if new is not value:
                if changed is None:
                    changed = {}
                changed[key] = new
        if changed is None:
            return None
        return {key: changed.get(key, value) for key, value in items}

    # --- internals ------------------------------------------------------------------------------------

    def _value(self, key: str, value: Any) -> Any:
        """A value under a scanned key: strings, and every string inside arrays, maps and bytes."""
        if type(value) is str:
            return self._text(key, value)
        if isinstance(value, (tuple, list)):  # every item: [None, email], a list of maps...
            items = [self._value(key, item) for item in value]
            return tuple(items) if any(new is not old for new, old in zip(items, value, strict=True)) else value
        if isinstance(value, Mapping):  # log records carry nested maps; each key has its own rule
            return self.redact_attributes(value, prefix=f"{key}.") or value
        if isinstance(value, (bytes, bytearray)):
            # Decoded, scanned, encoded back: undecodable bytes pass through (surrogateescape), so
            # binary data comes back as it was, and text in it is scanned like any string.
            text = bytes(value).decode("utf-8", "surrogateescape")
            redacted = self._text(key, text)
            return value if redacted is text else redacted.encode("utf-8", "surrogateescape")
        if isinstance(value, str):  # a str subclass
            return self._text(key, str(value))
        return value

    def _decide(self, key: str) -> int:
        lowered = key.lower()
        if self._deny is not None and self._deny.match(lowered):
            decision = _DENY
        elif self._allow is not None and self._allow.match(lowered):
            decision = _ALLOW
        else:
            decision = _SCAN
        if len(self._decisions) < _CACHE_LIMIT:
            self._decisions[key] = decision
        return decision

    def _text(self, key: str, value: str) -> str:
        limit = self._max
        if len(value) < SHORTEST and not self._callbacks:
            return value
        window_cut = limit is not None and len(value) > limit + _SCAN_SLACK
        text = value[: limit + _SCAN_SLACK] if window_cut and limit is not None else value
        text = self._scanner.scan(text)
        for callback in self._callbacks:
            try:
                replacement = callback(key, text)
                if replacement is not None and type(replacement) is not str:
                    raise TypeError(f"returned {type(replacement).__name__}, not str or None")
            except Exception as error:  # fail closed: a value we could not check is not exported
                warn_once(
                    f"redaction:callback:{getattr(callback, '__qualname__', repr(callback))}",
                    "sessiontrace: redaction callback %r failed (%s: %s); the values it was given are redacted whole",
                    callback,
                    type(error).__name__,
                    error,
                )
                return FAILED
            if replacement is not None:
                text = replacement
        if window_cut and limit is not None:
            # Only the window was scanned, and its last _SCAN_SLACK characters without what follows
            # them (half an email): they are never kept, even when markers shortened the text; nor
            # is a token longer than that which the window's end cut.
            keep = _before_cut_token(text, max(0, min(limit, len(text) - _SCAN_SLACK)))
            text = _cap(text, keep, max(len(value), len(text)) - keep)
        elif limit is not None and len(text) > limit:
            text = _cap(text, limit, max(len(value), len(text)) - limit)
        return value if text is value or text == value else text


def _before_cut_token(window: str, keep: int) -> int:
    """``keep``, or the start of a token running from before it to the end of the scanned ``window``:
    the token may go on past the window, so it was not seen whole (a JWT with a long header is not
    found without its payload), and none of it is kept."""
    if keep == 0 or _TOKEN_RUN.fullmatch(window, keep - 1) is None:
        return keep
    token = _TOKEN_RUN.match(window[keep - 1 :: -1])  # copies the window: only for such a token
    assert token is not None  # it matches the empty string
    return keep - token.end()


def _cap(text: str, limit: int, dropped: int) -> str:
    cut = limit
    marker = text.rfind("[REDACTED:", max(0, limit - 32), limit + 9)
    if -1 < marker < limit:  # keep a marker the cap would cut in two whole
        close = text.find("]", marker)
        if close >= limit:
            cut = close + 1
    return f"{text[:cut]}…[truncated {dropped} chars]"
