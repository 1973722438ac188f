"""Celery: the session travels in task headers and is current inside the task.

OpenTelemetry's Celery instrumentor injects through the global propagator when a task is
published and attaches the extracted context while it runs; with ``configure()`` that propagator
is ours, so the session (through the inbound policy) rides along. This module only wires the two
together with an actionable error when the extra is missing.
"""

from __future__ import annotations

from typing import Any


def instrument(**kwargs: Any) -> None:
    """Instrument Celery (publisher and worker side). Call after ``configure()``, in both."""
    try:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
    except ImportError as error:
        raise ImportError("Celery support needs the celery extra: pip install 'sessiontrace[celery]'") from error
    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(**kwargs)
