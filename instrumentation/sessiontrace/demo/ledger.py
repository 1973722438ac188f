"""The demo's second service: a WSGI ledger that records the claim's reserve."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry import trace
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

import sessiontrace
from sessiontrace.integrations.wsgi import SessionMiddleware

log = logging.getLogger("demo.ledger")
tracer = trace.get_tracer("sessiontrace.demo.ledger")


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    entry = json.loads(environ["wsgi.input"].read(length) or b"{}")
    with tracer.start_as_current_span("post reserve") as span:
        span.set_attribute("ledger.policy", str(entry.get("policy")))
        span.set_attribute("ledger.amount", str(entry.get("amount")))
        log.info("reserve posted")
        session = sessiontrace.current_session()
        result = {"entry": "R-1", "session_id": session.id if session else None}
    start_response("200 OK", [("content-type", "application/json")])
    return [json.dumps(result).encode()]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    sessiontrace.configure(service_name="ledger")
    # SIGTERM ends serve_forever with SystemExit, so atexit flushes the spans.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = make_server(
        "127.0.0.1", args.port, OpenTelemetryMiddleware(SessionMiddleware(app)), _Server, _QuietHandler
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
