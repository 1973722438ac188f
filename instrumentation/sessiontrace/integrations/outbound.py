"""Outbound HTTP: send the session to hosts on the allow-list, and to no one else.

``OutboundPolicyInstrumentor`` patches the transports of httpx and httpx2 (sync and async; the
OpenAI and Anthropic SDKs send through httpx2) and requests, the last place a request passes
before the wire. For an allowed host it injects the trace and session; for any other host it
removes our entries from ``baggage``, ``jaeger-baggage`` and ``uberctx-*`` headers, whoever put
them there (OpenTelemetry's own httpx/requests instrumentors inject through the global propagator,
which sees the destination we set and leaves them out as well).
"""

from __future__ import annotations

import importlib
from collections.abc import Collection, MutableMapping
from typing import Any
from urllib.parse import unquote

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled, unwrap
from wrapt import wrap_function_wrapper

from sessiontrace import semconv
from sessiontrace.propagation import destination_allowed, inject, outbound_to

_OURS = frozenset(semconv.OUR_BAGGAGE_KEYS)
_JAEGER_BAGGAGE_PREFIX = "uberctx-"
# Headers holding a comma-separated list of key=value entries: W3C's, and jaeger-client's ad-hoc
# baggage header (which we never write, but a jaeger-client in the same process may).
_BAGGAGE_LISTS = ("baggage", "jaeger-baggage")
_HTTPX_FAMILY = ("httpx", "httpx2")  # same transport API
_MAX_BAGGAGE_LENGTH = 8192  # W3C Baggage: receivers may drop a longer header


def apply_policy(headers: MutableMapping[str, Any], url: str) -> None:
    """Inject the session for an allowed ``url``; strip our entries for any other. Header values
    may be ``bytes`` (requests accepts them): they are read as latin-1, as on the wire."""
    if destination_allowed(url):
        # Inside suppress_instrumentation() or suppress_http_instrumentation() (an exporter's own
        # requests), nothing is added, as OpenTelemetry's client instrumentors add nothing there.
        # Stripping, below, is a policy: it applies whatever is suppressed.
        if is_http_instrumentation_enabled():
            _inject_keeping_application_baggage(headers, url)
        return
    for name in list(headers.keys()):
        lowered = name.lower()
        if lowered in _BAGGAGE_LISTS:
            entries = _entries(headers[name])
            if entries is None:
                continue  # not text: nothing of ours can be in it
            kept = [entry for entry in entries if _entry_key(entry) not in _OURS]
            if len(kept) == len(entries):
                continue  # nothing of ours: leave the application's value exactly as it was
            if kept:
                headers[name] = ",".join(kept)
            else:
                del headers[name]
        elif lowered.startswith(_JAEGER_BAGGAGE_PREFIX) and unquote(lowered[len(_JAEGER_BAGGAGE_PREFIX) :]) in _OURS:
            del headers[name]


def _inject_keeping_application_baggage(headers: MutableMapping[str, Any], url: str) -> None:
    """``inject`` writes ``baggage`` whole, which would drop the entries the application put in
    its own header. Ours go first and win by key; when we send a session or run, the
    application's entries under our keys go too, so a stale user id cannot ride with our id."""
    injected: dict[str, str] = {}
    inject(injected, destination=url)
    for name, value in injected.items():
        if name.lower() == "baggage":
            value = _merged_baggage(value, _pop_baggage(headers))
        headers[name] = value


def _pop_baggage(headers: MutableMapping[str, Any]) -> list[str]:
    """Remove the application's ``baggage`` header (any spelling) and return its entries."""
    entries: list[str] = []
    for name in list(headers.keys()):
        if name.lower() == "baggage":
            entries.extend(_entries(headers.pop(name)) or ())
    return entries


def _merged_baggage(ours: str, theirs: list[str]) -> str:
    our_entries = _entries(ours) or []
    our_keys = {_entry_key(entry) for entry in our_entries}
    replaced = (our_keys | _OURS) if our_keys & _OURS else our_keys
    merged = ",".join(our_entries)
    for entry in theirs:
        if _entry_key(entry) in replaced:
            continue
        # Receivers ignore a baggage header past the W3C limit entirely: theirs give way to ours.
        if len(merged) + 1 + len(entry) > _MAX_BAGGAGE_LENGTH:
            break
        merged = f"{merged},{entry}" if merged else entry
    return merged


def _entries(value: object) -> list[str] | None:
    """The non-empty, stripped entries of a comma-separated header value; None if not text."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def _entry_key(entry: str) -> str:
    return unquote(entry.split("=", 1)[0].strip())


def _send(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """The sync transports of httpx and httpx2 and requests' adapter: each request has ``url`` and
    ``headers``."""
    request = args[0] if args else kwargs["request"]
    url = str(request.url)
    with outbound_to(url):
        apply_policy(request.headers, url)
        return wrapped(*args, **kwargs)


async def _httpx_send_async(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    request = args[0] if args else kwargs["request"]
    url = str(request.url)
    with outbound_to(url):
        apply_policy(request.headers, url)
        return await wrapped(*args, **kwargs)


class OutboundPolicyInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Applies the outbound host policy to httpx and requests, whichever are installed."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()  # both libraries are optional; each is patched only if importable

    def _instrument(self, **kwargs: Any) -> None:
        for module in _HTTPX_FAMILY:
            if _importable(module):
                wrap_function_wrapper(module, "HTTPTransport.handle_request", _send)
                wrap_function_wrapper(module, "AsyncHTTPTransport.handle_async_request", _httpx_send_async)
        if _importable("requests"):
            wrap_function_wrapper("requests.adapters", "HTTPAdapter.send", _send)

    def _uninstrument(self, **kwargs: Any) -> None:
        for module in _HTTPX_FAMILY:
            if _importable(module):
                transports = importlib.import_module(module)
                unwrap(transports.HTTPTransport, "handle_request")
                unwrap(transports.AsyncHTTPTransport, "handle_async_request")
        if _importable("requests"):
            import requests.adapters

            unwrap(requests.adapters.HTTPAdapter, "send")


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True
