"""The demo's front door: an ASGI service where a claim is filed and the session starts."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import uvicorn
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

import sessiontrace
from sessiontrace.integrations.asgi import SessionMiddleware
from sessiontrace.integrations.outbound import OutboundPolicyInstrumentor

log = logging.getLogger("demo.frontdoor")
tracer = trace.get_tracer("sessiontrace.demo.frontdoor")
background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="notify")


def make_app(ledger_url: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            # uvicorn re-raises SIGTERM after shutting down, which skips atexit: flush here.
            background.shutdown(wait=True)
            flush = getattr(trace.get_tracer_provider(), "force_flush", None)
            if flush is not None:
                flush()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, payload = await file_claim(json.loads(body or b"{}"), ledger_url)
        data = json.dumps(payload).encode()
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": data})

    return app


async def file_claim(claim: dict[str, Any], ledger_url: str) -> tuple[int, dict[str, Any]]:
    session = sessiontrace.current_session()
    log.info("claim received for policy %s", claim.get("policy"))
    with tracer.start_as_current_span("validate claim") as span:
        span.set_attribute("claim.policy", str(claim.get("policy")))
        await asyncio.sleep(0.01)
        valid = bool(claim.get("policy")) and float(claim.get("amount", 0)) > 0
        span.add_event("claim.validated", {"valid": valid})
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{ledger_url}/entries", json={"policy": claim.get("policy"), "amount": claim.get("amount")}
        )
    background.submit(notify_adjuster, claim.get("policy"))
    return 201, {"session_id": session.id if session else None, "ledger": response.json()}


def notify_adjuster(policy: object) -> None:
    """A background task on another thread: the session follows it there."""
    with tracer.start_as_current_span("notify adjuster") as span:
        span.set_attribute("claim.policy", str(policy))
        log.info("adjuster notified")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ledger", required=True)
    args = parser.parse_args()
    sessiontrace.configure(service_name="frontdoor")
    HTTPXClientInstrumentor().instrument()
    OutboundPolicyInstrumentor().instrument()
    app = OpenTelemetryMiddleware(SessionMiddleware(make_app(args.ledger), trigger_source="api"))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
