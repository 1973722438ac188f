"""The tracers our spans start from: the global provider's, or the one an instrumentor was given.

An application that already uses OpenTelemetry may pass its own provider to an instrumentor
(``instrument(tracer_provider=...)``, as every contrib instrumentor takes it); otherwise spans
go to the global provider.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

from sessiontrace._version import __version__

AI_TRACER_NAME = "sessiontrace.ai"
"""The instrumentation scope of AI spans (calls and reviews), whichever provider they come from."""


class GlobalTracer:
    """The global provider's tracer for one instrumentation scope.

    Until a provider is set, the API's proxy tracer serves (it follows the provider once one is
    set). After, the provider's own tracer is taken and kept while that provider stays the global
    one: the proxy's indirection costs about a microsecond on every span, and test suites that
    reset OpenTelemetry's globals between tests must not find their spans sent to an old one."""

    __slots__ = ("_cached", "_name", "_proxy")

    def __init__(self, name: str) -> None:
        self._name = name
        self._proxy = trace.get_tracer(name, __version__)
        # The provider and its tracer in one tuple: replaced whole, never seen half-updated.
        self._cached: tuple[object, trace.Tracer] = (None, self._proxy)

    def get(self) -> trace.Tracer:
        """The global provider is looked up on every call, as the API keeps it: None until set."""
        try:
            provider = trace._TRACER_PROVIDER  # two calls fewer per span than get_tracer_provider()
        except AttributeError:  # an API that keeps it elsewhere
            provider = trace.get_tracer_provider()
        cached_provider, tracer = self._cached
        if provider is cached_provider and provider is not None:
            return tracer
        if provider is None:  # not set yet, unless OTEL_PYTHON_TRACER_PROVIDER names one: this sets it
            provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider):
            return self._proxy  # it follows the provider once one is set
        tracer = provider.get_tracer(self._name, __version__)
        self._cached = (provider, tracer)
        return tracer


def given_tracer(name: str, provider: Any) -> trace.Tracer | None:
    """The tracer of ``instrument(tracer_provider=provider)``; None for the global provider."""
    if provider is None:
        return None
    if not callable(getattr(provider, "get_tracer", None)):
        raise TypeError(f"tracer_provider must be an OpenTelemetry TracerProvider, got {type(provider).__name__}")
    tracer: trace.Tracer = provider.get_tracer(name, __version__)
    return tracer
