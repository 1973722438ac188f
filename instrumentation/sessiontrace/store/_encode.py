"""ReadableSpan -> store rows. This is the export hot path: keep it flat and allocation-light.

Attribute values are JSON: tuples become lists, and a value JSON cannot hold (bytes, or anything
an instrumentation smuggled past the SDK) is written as text rather than failing the batch.
Text SQLite cannot hold as UTF-8 (lone surrogates, e.g. a file name decoded with surrogateescape)
is escaped by ``scrub_rows``, which the store calls only for a batch that failed on it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from sessiontrace import semconv
from sessiontrace._attributes import frozen
from sessiontrace.records import is_listed_session_id

_ERROR = StatusCode.ERROR
# Enum .value is a slow descriptor on the hot path; these are the OTLP numbers.
_KIND_VALUES = {kind: kind.value for kind in SpanKind}
_STATUS_VALUES = {code: code.value for code in StatusCode}
_SERVICE_NAME = "service.name"

SpanRow = tuple[
    str, str, str | None, str, int, int, int | None, int, str | None,
    str | None, str | None, str, str | None, str | None, str | None, str | None,
]  # fmt: skip
ResourceRow = tuple[str, str | None, str]
SessionRow = tuple[
    str, int, int, int, int, str | None, str | None, str | None, int, int, str
]  # fmt: skip


def _fallback(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode("ascii")
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


# The C encoder built once: json.dumps would rebuild it on every call, which costs more than
# encoding a span's attributes. No circular-reference markers: a cycle raises RecursionError,
# which to_json catches like any other failure.
_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_encode_str = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.encode_basestring
_C_ENCODE: Any = None
try:
    if _c_encoder is not None:
        _C_ENCODE = _c_encoder(None, _fallback, _encode_str, None, ":", ",", False, False, True)
except TypeError:  # a Python whose private encoder signature differs: use the public one
    _C_ENCODE = None
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_fallback)


def to_json(value: object) -> str:
    """Compact JSON for ``value``; never raises (a last resort stringifies every value)."""
    try:
        if _C_ENCODE is not None:
            return "".join(_C_ENCODE(value, 0))
        return _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):
        if isinstance(value, Mapping):
            return _ENCODER.encode({str(k): str(v) for k, v in value.items()})
        return _ENCODER.encode(str(value))


def _as_dict(attributes: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The attributes as a dict for the JSON encoder. An ended span's (or an event's) attributes
    can no longer change: their dict is read as it is, not copied through the Mapping ABC (a
    locked ``__getitem__`` per key)."""
    found = frozen(attributes)
    return found if found is not None else dict(attributes or {})


@dataclass(slots=True)
class _SessionAgg:
    first_start: int
    last_end: int
    count: int = 0
    errors: int = 0
    user_id: str | None = None
    trigger: str | None = None
    root_name: str | None = None
    root_rank: int = 2
    root_start: int = 0
    services: set[str] = field(default_factory=set)


class Encoder:
    """Turns batches of spans into rows; remembers the resources it has already hashed."""

    __slots__ = ("_resources",)

    def __init__(self) -> None:
        # id(resource) -> (resource, key, service name). The resource is kept so its id stays valid.
        self._resources: dict[int, tuple[Resource, str, str | None]] = {}

    def _resource(self, resource: Resource, new: list[ResourceRow]) -> tuple[str, str | None]:
        known = self._resources.get(id(resource))
        if known is not None:
            return known[1], known[2]
        attributes = to_json(dict(resource.attributes))
        key = hashlib.blake2b(attributes.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        service = resource.attributes.get(_SERVICE_NAME)
        service_name = str(service) if service is not None else None
        if len(self._resources) > 256:  # a process has a handful; never let this grow unbounded
            self._resources.clear()
        self._resources[id(resource)] = (resource, key, service_name)
        new.append((key, service_name, attributes))
        return key, service_name

    def encode(self, spans: Sequence[ReadableSpan]) -> tuple[list[SpanRow], list[ResourceRow], list[SessionRow]]:
        rows: list[SpanRow] = []
        resources: list[ResourceRow] = []
        sessions: dict[str, _SessionAgg] = {}
        session_key = semconv.SESSION_ID
        kinds, statuses = _KIND_VALUES, _STATUS_VALUES
        for span in spans:
            ctx = span.context
            if ctx is None:
                continue
            parent = span.parent
            attrs = span.attributes or {}
            resource_id, service = self._resource(span.resource, resources)
            status = span.status
            code = status.status_code
            start = span.start_time or 0
            end = span.end_time
            raw_session = attrs.get(session_key)
            session_id = raw_session.lower() if isinstance(raw_session, str) else None
            if session_id is not None and not is_listed_session_id(session_id):
                session_id = None  # under no session: `sessiontrace path` could not open it
            scope = span.instrumentation_scope
            events = span.events
            links = span.links
            rows.append(
                (
                    f"{ctx.trace_id:032x}",
                    f"{ctx.span_id:016x}",
                    f"{parent.span_id:016x}" if parent is not None else None,
                    span.name,
                    kinds.get(span.kind, 0),
                    start,
                    end,
                    statuses.get(code, 0),
                    status.description,
                    service,
                    session_id,
                    to_json(_as_dict(attrs)),
                    _events(events) if events else None,
                    _links(links) if links else None,
                    resource_id,
                    scope.name if scope is not None else None,
                )
            )
            if session_id is not None:
                agg = sessions.get(session_id)
                if agg is None:
                    agg = sessions[session_id] = _SessionAgg(start, end or start)
                _add(agg, span.name, code, attrs, start, end, parent is None, service)
        return rows, resources, [_session_row(sid, agg) for sid, agg in sessions.items()]


def _add(
    agg: _SessionAgg,
    name: str,
    code: StatusCode,
    attrs: Mapping[str, Any],
    start: int,
    end: int | None,
    is_root: bool,
    service: str | None,
) -> None:
    agg.count += 1
    agg.first_start = min(agg.first_start, start)
    agg.last_end = max(agg.last_end, end or start)
    if code is _ERROR:
        agg.errors += 1
    if agg.user_id is None:
        user = attrs.get(semconv.USER_ID)
        agg.user_id = str(user) if user is not None else None
    if agg.trigger is None:
        trigger = attrs.get(semconv.TRIGGER_SOURCE)
        agg.trigger = str(trigger) if trigger is not None else None
    # The session's name is its earliest root span, else its earliest span.
    rank = 0 if is_root else 1
    if (rank, start) < (agg.root_rank, agg.root_start) or agg.root_name is None:
        agg.root_name, agg.root_rank, agg.root_start = name, rank, start
    if service is not None:
        agg.services.add(service)


def _session_row(session_id: str, agg: _SessionAgg) -> SessionRow:
    return (
        session_id,
        agg.first_start,
        agg.last_end,
        agg.count,
        agg.errors,
        agg.user_id,
        agg.trigger,
        agg.root_name,
        agg.root_rank,
        agg.root_start,
        to_json(sorted(agg.services)),
    )


def _events(events: Iterable[Any]) -> str:
    return to_json([{"name": e.name, "time_ns": e.timestamp, "attributes": _as_dict(e.attributes)} for e in events])


def _links(links: Iterable[Any]) -> str:
    return to_json(
        [
            {
                "trace_id": f"{link.context.trace_id:032x}",
                "span_id": f"{link.context.span_id:016x}",
                "attributes": _as_dict(link.attributes),
            }
            for link in links
        ]
    )


# -- text SQLite cannot store --------------------------------------------------------------------
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(match: re.Match[str], backslash: str) -> str:
    code = ord(match.group())
    # surrogateescape's U+DC80..U+DCFF stand for the undecodable bytes 0x80..0xFF: show the byte.
    return f"{backslash}x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"{backslash}u{code:04x}"


def _text(value: str) -> str:
    return _SURROGATE.sub(lambda m: _escape(m, "\\"), value)


def _json_text(value: str) -> str:
    # A surrogate in JSON text sits inside a string literal: its backslash must be escaped too.
    return _SURROGATE.sub(lambda m: _escape(m, "\\\\"), value)


def _scrub(row: tuple[Any, ...], json_columns: frozenset[int]) -> Any:
    return tuple(
        (_json_text(v) if i in json_columns else _text(v)) if isinstance(v, str) else v for i, v in enumerate(row)
    )


_SPAN_JSON = frozenset({11, 12, 13})
_RESOURCE_JSON = frozenset({2})
_SESSION_JSON = frozenset({10})


def scrub_rows(
    rows: list[SpanRow], resources: list[ResourceRow], sessions: list[SessionRow]
) -> tuple[list[SpanRow], list[ResourceRow], list[SessionRow]]:
    """The rows with every lone surrogate written as a visible escape (``\\xff``), so they encode."""
    return (
        [_scrub(row, _SPAN_JSON) for row in rows],
        [_scrub(row, _RESOURCE_JSON) for row in resources],
        [_scrub(row, _SESSION_JSON) for row in sessions],
    )
