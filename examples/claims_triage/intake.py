"""The intake: an ASGI service (uvicorn) where claims are filed and triaged.

``POST /claims`` with ``{"policy", "line", "amount", "description"}`` starts a session (the
``SessionMiddleware`` mints it and answers its id in ``x-session-id``), runs the
``claims-triage`` workflow (``triage.py``), and answers 201 with the outcome, or 422 naming the
rules an invalid claim breaks. Afterwards an adjuster is notified from a background thread: the
session follows the work there too.

The severity comes from the local model trained at start-up, or from an OpenAI chat model when
``OPENAI_API_KEY`` or ``OPENAI_BASE_URL`` is set (``CLAIMS_TRIAGE_OPENAI_MODEL``, default
``gpt-4o-mini``).

With ``--audit-db URL`` (default: ``SESSIONTRACE_DEMO_AUDIT_DB``) the claims are kept in that
database through audited models (``records.py``), each write inside the step that makes it.

    python -m claims_triage.ledger --port 8002 --audit-db sqlite:///claims.sqlite3 &
    python -m claims_triage.intake --port 8001 --ledger http://127.0.0.1:8002 --audit-db sqlite:///claims.sqlite3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx
from opentelemetry import trace

import sessiontrace
from claims_triage import AUDIT_DB_ENV, model
from claims_triage import attributes as attr
from claims_triage.triage import (
    CONFIDENCE_THRESHOLD,
    Claim,
    ClaimRecords,
    Classifier,
    InvalidClaim,
    LocalClassifier,
    OpenAIClassifier,
    Reviewer,
    StandInReviewer,
    triage,
)

if TYPE_CHECKING:
    from claims_triage.records import ClaimsDatabase

log = logging.getLogger("claims_triage.intake")
tracer = trace.get_tracer("claims_triage.intake")
background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="notify")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def make_app(
    classifier: Classifier,
    reviewer: Reviewer,
    ledger_url: str,
    threshold: float,
    records: ClaimRecords | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> ASGIApp:
    # One client for the service's life: building one per request costs tens of milliseconds.
    clients: list[httpx.AsyncClient] = []

    async def reserve_funds(claim: Claim, severity: str) -> str:
        if not clients:
            clients.append(httpx.AsyncClient(timeout=10))
        response = await clients[0].post(
            f"{ledger_url}/reserves",
            json={"claim_id": claim.id, "policy": claim.policy, "severity": severity, "amount": claim.amount},
        )
        response.raise_for_status()
        return str(response.json()["reserve_id"])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, clients, on_shutdown)
            return
        if (scope["method"], scope["path"]) != ("POST", "/claims"):
            await _answer(send, 404, {"error": "POST /claims only"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            raw = json.loads(body or b"{}")
            if not isinstance(raw, dict):
                raise ValueError("a claim is a JSON object")
        except ValueError as error:
            await _answer(send, 400, {"error": f"malformed claim: {error}"})
            return
        session = sessiontrace.current_session()
        try:
            outcome = await triage(
                raw,
                classifier=classifier,
                reviewer=reviewer,
                reserve_funds=reserve_funds,
                threshold=threshold,
                records=records,
            )
        except InvalidClaim as error:
            await _answer(send, 422, {"error": str(error), "session_id": session.id if session else None})
            return
        background.submit(notify_adjuster, outcome.claim.id, outcome.severity)
        await _answer(
            send,
            201,
            {
                "claim_id": outcome.claim.id,
                "severity": outcome.severity,
                "confidence": round(outcome.confidence, 4),
                "decided_by": outcome.decided_by,
                "reserve_id": outcome.reserve_id,
                "session_id": session.id if session else None,
            },
        )

    return app


def notify_adjuster(claim_id: str, severity: str) -> None:
    """Background work on another thread: the session (and the trace) follow it there."""
    with tracer.start_as_current_span("notify adjuster") as span:
        span.set_attributes({attr.CLAIM_ID: claim_id, attr.CLAIM_SEVERITY: severity})
        log.info("adjuster notified of claim %s (%s)", claim_id, severity)


async def _lifespan(
    receive: Receive, send: Send, clients: list[httpx.AsyncClient], on_shutdown: Callable[[], None] | None
) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    for client in clients:
        await client.aclose()
    if on_shutdown is not None:
        on_shutdown()
    # uvicorn re-raises SIGTERM after shutting down, which skips atexit: flush here.
    background.shutdown(wait=True)
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        flush()
    await send({"type": "lifespan.shutdown.complete"})


async def _answer(send: Send, status: int, payload: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


def uses_openai(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether the AI step goes to OpenAI: ``OPENAI_API_KEY`` or ``OPENAI_BASE_URL`` is set."""
    environ = os.environ if environ is None else environ
    return bool(environ.get("OPENAI_API_KEY") or environ.get("OPENAI_BASE_URL"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The claims intake service (ASGI).")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--ledger", default="http://127.0.0.1:8002", help="base URL of the ledger service")
    parser.add_argument("--threshold", type=float, default=CONFIDENCE_THRESHOLD, help="human review below this")
    parser.add_argument(
        "--audit-db",
        default=os.environ.get(AUDIT_DB_ENV),
        metavar="URL",
        help="keep the claims in this database, audited [env: SESSIONTRACE_DEMO_AUDIT_DB; default: no database]",
    )
    args = parser.parse_args(argv)

    import uvicorn
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    from sessiontrace.integrations.asgi import SessionMiddleware
    from sessiontrace.integrations.outbound import OutboundPolicyInstrumentor

    sessiontrace.configure(service_name="intake")
    HTTPXClientInstrumentor().instrument()
    OutboundPolicyInstrumentor().instrument()  # session baggage goes to the ledger, never to OpenAI

    started = time.perf_counter()
    trained = model.train()
    log.info("trained %s on %d claims in %.2f s", trained.version, trained.examples, time.perf_counter() - started)
    classifier: Classifier
    if uses_openai():
        from sessiontrace.ai.openai import OpenAIInstrumentor

        OpenAIInstrumentor().instrument()
        classifier = OpenAIClassifier()
    else:
        classifier = LocalClassifier(trained)
    reviewer = StandInReviewer(model.load_examples())
    database: ClaimsDatabase | None = None
    records: ClaimRecords | None = None
    if args.audit_db:
        from claims_triage.records import ClaimsDatabase, IntakeRecords

        database = ClaimsDatabase(args.audit_db)
        records = IntakeRecords(database)

    app = make_app(
        classifier,
        reviewer,
        args.ledger.rstrip("/"),
        args.threshold,
        records=records,
        on_shutdown=database.close if database is not None else None,
    )
    wrapped = OpenTelemetryMiddleware(SessionMiddleware(app, trigger_source="api"))
    uvicorn.run(wrapped, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
