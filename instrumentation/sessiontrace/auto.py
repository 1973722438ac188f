"""Zero-code setup: ``opentelemetry-instrument python app.py`` loads these through entry points.

The distro runs first and the configurator calls ``configure()`` with the environment; the
outbound host policy comes in through its own ``opentelemetry_instrumentor`` entry point. When
several distributions install configurators, pick ours with
``OTEL_PYTHON_CONFIGURATOR=sessiontrace``.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]
from opentelemetry.sdk._configuration import _BaseConfigurator


class SessionTraceDistro(BaseDistro):  # type: ignore[misc]
    """Nothing to preset: ``configure()`` reads the standard ``OTEL_*`` variables itself."""

    def _configure(self, **kwargs: Any) -> None:
        pass


class SessionTraceConfigurator(_BaseConfigurator):
    def _configure(self, **kwargs: Any) -> None:
        from sessiontrace.config import configure

        # opentelemetry-instrument loads the threading instrumentor through its own entry point.
        configure(instrument_threads=False)
