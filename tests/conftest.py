"""Shared pytest fixtures."""

# --- cross-process tests (test_http, test_celery, test_jaeger_interop, test_webhook) ---------------
# Fixtures live in tests/_servers.py; importing them here makes them visible to every test module.
from _servers import (  # noqa: F401
    app_logs,
    header_recorder,
    outbound,
    outbound_policy,
    reconfigure,
)

# --- end of cross-process tests section ---------------------------------------------------------------
