"""The ledger: a WSGI service that records the reserve a triaged claim needs.

``POST /reserves`` with ``{"claim_id", "policy", "severity", "amount"}`` answers 201 with the
reserve's id. It is the second service of the example: the request arrives with ``traceparent``
and the session and workflow run as baggage, so its spans join the intake's trace, session and run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry import trace

import sessiontrace
from claims_triage import AUDIT_DB_ENV
from claims_triage import attributes as attr
from sessiontrace.workflow import step

if TYPE_CHECKING:
    from claims_triage.records import ClaimsDatabase

log = logging.getLogger("claims_triage.ledger")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Ledger:
    """Reserves: in an audited database when given one, else in memory (thread-safe either way,
    for the threaded server)."""

    def __init__(self, database: ClaimsDatabase | None = None) -> None:
        self.database = database
        self._lock = threading.Lock()
        self.reserves: dict[str, dict[str, Any]] = {}

    def reserve(self, claim_id: str, policy: str, amount: float, severity: str) -> str:
        if self.database is not None:
            return self.database.record_reserve(claim_id, policy, severity, amount)
        reserve_id = f"R-{uuid.uuid4().hex[:8].upper()}"
        with self._lock:
            self.reserves[reserve_id] = {"claim_id": claim_id, "policy": policy, "amount": amount, "severity": severity}
        return reserve_id


def make_app(ledger: Ledger) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if (environ["REQUEST_METHOD"], environ.get("PATH_INFO")) != ("POST", "/reserves"):
            return _json(start_response, "404 Not Found", {"error": "POST /reserves only"})
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            entry = json.loads(environ["wsgi.input"].read(length) or b"{}")
            claim_id, severity, amount = str(entry["claim_id"]), str(entry["severity"]), float(entry["amount"])
            policy = str(entry.get("policy") or "")
        except (ValueError, KeyError, TypeError) as error:
            return _json(start_response, "400 Bad Request", {"error": f"malformed reserve: {error}"})
        # A step of the caller's workflow run, which arrives as baggage with the session.
        with step("record reserve"):
            span = trace.get_current_span()
            span.set_attributes({attr.CLAIM_ID: claim_id, attr.CLAIM_SEVERITY: severity, attr.RESERVE_AMOUNT: amount})
            reserve_id = ledger.reserve(claim_id, policy, amount, severity)  # the audit rows carry this step
            span.set_attribute(attr.RESERVE_ID, reserve_id)
            log.info("reserve %s of %.2f recorded for claim %s", reserve_id, amount, claim_id)
        return _json(start_response, "201 Created", {"reserve_id": reserve_id, "claim_id": claim_id, "amount": amount})

    return app


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    start_response(status, [("content-type", "application/json")])
    return [json.dumps(body).encode()]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument(
        "--audit-db",
        default=os.environ.get(AUDIT_DB_ENV),
        metavar="URL",
        help=f"keep the reserves in this database, audited [env: {AUDIT_DB_ENV}; default: in memory]",
    )
    args = parser.parse_args(argv)

    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    from sessiontrace.integrations.wsgi import SessionMiddleware

    sessiontrace.configure(service_name="ledger")
    # SIGTERM ends serve_forever with SystemExit, so atexit flushes the spans.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    database: ClaimsDatabase | None = None
    if args.audit_db:
        from claims_triage.records import ClaimsDatabase

        database = ClaimsDatabase(args.audit_db)
    app = OpenTelemetryMiddleware(SessionMiddleware(make_app(Ledger(database))))
    server = make_server("127.0.0.1", args.port, app, _Server, _QuietHandler)
    log.info("ledger listening on 127.0.0.1:%d", args.port)
    server.serve_forever()


if __name__ == "__main__":
    main()
