"""The ledger: a WSGI service that records the reserve a triaged claim needs.

``POST /reserves`` with ``{"claim_id", "policy", "severity", "amount"}`` answers 201 with the
reserve's id. It is the second service of the example: the request arrives with ``traceparent``
and the session and workflow run as baggage, so its spans join the intake's trace, session and run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry import trace

import sessiontrace
from claims_triage import attributes as attr
from sessiontrace.workflow import step

log = logging.getLogger("claims_triage.ledger")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Ledger:
    """Reserves held in memory: enough for an example, and thread-safe for the threaded server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self.reserves: dict[str, dict[str, Any]] = {}

    def reserve(self, claim_id: str, amount: float, severity: str) -> str:
        with self._lock:
            reserve_id = f"R-{next(self._numbers):05d}"
            self.reserves[reserve_id] = {"claim_id": claim_id, "amount": amount, "severity": severity}
        return reserve_id


def make_app(ledger: Ledger) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if (environ["REQUEST_METHOD"], environ.get("PATH_INFO")) != ("POST", "/reserves"):
            return _json(start_response, "404 Not Found", {"error": "POST /reserves only"})
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            entry = json.loads(environ["wsgi.input"].read(length) or b"{}")
            claim_id, severity, amount = str(entry["claim_id"]), str(entry["severity"]), float(entry["amount"])
        except (ValueError, KeyError, TypeError) as error:
            return _json(start_response, "400 Bad Request", {"error": f"malformed reserve: {error}"})
        # A step of the caller's workflow run, which arrives as baggage with the session.
        with step("record reserve"):
            span = trace.get_current_span()
            span.set_attributes({attr.CLAIM_ID: claim_id, attr.CLAIM_SEVERITY: severity, attr.RESERVE_AMOUNT: amount})
            reserve_id = ledger.reserve(claim_id, amount, severity)
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
    args = parser.parse_args(argv)

    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    from sessiontrace.integrations.wsgi import SessionMiddleware

    sessiontrace.configure(service_name="ledger")
    # SIGTERM ends serve_forever with SystemExit, so atexit flushes the spans.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = OpenTelemetryMiddleware(SessionMiddleware(make_app(Ledger())))
    server = make_server("127.0.0.1", args.port, app, _Server, _QuietHandler)
    log.info("ledger listening on 127.0.0.1:%d", args.port)
    server.serve_forever()


if __name__ == "__main__":
    main()
