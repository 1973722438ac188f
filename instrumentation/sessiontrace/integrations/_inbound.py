"""The part of inbound middleware that does not depend on the framework: read the session from
request headers through the trust policy, or mint one, and make it current for the request."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace

from sessiontrace import _values
from sessiontrace.context import Session, SessionScope, current_session, make_session
from sessiontrace.processors import stamp
from sessiontrace.propagation import extract

App = TypeVar("App")

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def request_trigger(method: str, path: str) -> str:
    """``METHOD /path`` made safe for an attribute: no control characters, bounded length, no
    surrounding whitespace (baggage parsers strip it, so a signature over it would not verify)."""
    # An app mounted under a prefix and requested at the prefix itself gets an empty PATH_INFO.
    text = _UNPRINTABLE.sub("?", f"{method.strip()} {path.strip() or '/'}")
    return text[: _values.MAX_TRIGGER_TYPE].strip() or "request"


class InboundSession:
    """Context manager around one request. ``__enter__`` returns the request's session (or None
    when there is none and ``mint`` is false); it never raises because of the request's headers."""

    def __init__(
        self,
        headers: Mapping[str, str],
        peer: str | None,
        *,
        trigger_source: str,
        trigger_type: str,
        mint: bool,
    ) -> None:
        self._headers = headers
        self._peer = peer
        self._trigger_source = trigger_source
        self._trigger_type = trigger_type
        self._mint = mint
        self._base_token: object | None = None
        self._scope: SessionScope | None = None

    def __enter__(self) -> Session | None:
        extracted = extract(self._headers, peer=self._peer)
        server_span = trace.get_current_span()
        if not server_span.get_span_context().is_valid:
            # No server instrumentation ran before us: continue the caller's trace ourselves.
            self._base_token = otel_context.attach(extracted)
        session = current_session(extracted)
        minted = session is None
        if session is None:
            if not self._mint:
                return None
            session = make_session(trigger_source=self._trigger_source, trigger_type=self._trigger_type)
        # The server span (if any) started before the session was known: stamp it now.
        stamp(server_span, session.attributes)
        self._scope = SessionScope(session, minted=minted, open_span=minted)
        return self._scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._scope is not None:
                self._scope.__exit__(exc_type, exc, tb)
        finally:
            if self._base_token is not None:
                otel_context.detach(self._base_token)  # type: ignore[arg-type]


def join_header(existing: str | None, value: str) -> str:
    """Repeated headers (two ``baggage`` lines) are one comma-separated list (RFC 9110)."""
    return value if existing is None else f"{existing},{value}"


def as_text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)


class InboundMiddleware(Generic[App]):
    """Options shared by the ASGI and WSGI ``SessionMiddleware``: continue the caller's session
    (through the inbound policy) or mint one with ``trigger_source``, and echo its id in the
    ``x-session-id`` response header."""

    def __init__(
        self, app: App, *, trigger_source: str = "api", mint: bool = True, response_header: bool = True
    ) -> None:
        self.app = app
        # Checked here, so a typo fails at startup rather than in every request.
        self.trigger_source = _values.trigger_source(trigger_source)
        self.mint = mint
        self.response_header = response_header
