"""Real SDK spans for the store, path and CLI tests: two services, one session over two traces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

from sessiontrace import semconv
from sessiontrace.context import new_session_id
from sessiontrace.store import StoreSpanExporter


def provider(path: Path, service: str) -> tuple[TracerProvider, StoreSpanExporter]:
    exporter = StoreSpanExporter(path)
    tp = TracerProvider(resource=Resource.create({"service.name": service}))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter


@dataclass
class Scenario:
    session_id: str
    other_session_id: str
    web_trace_id: str
    worker_trace_id: str
    orphan_parent_id: str


def write_scenario(path: Path) -> Scenario:
    """Session S: a web request (trace 1) hands work to a worker (trace 2).

    trace 1 (web):    POST /claims -> validate claim -> vendor lookup (no session.id, 1 event)
    trace 2 (worker): process claim -> chat gpt-4o (ERROR, event) -> save claim (ERROR, later)
                      plus "late callback", whose parent span was never exported (an orphan).
    A second session (one span, service web) is written after S.
    """
    sid, other = new_session_id(), new_session_id()
    stamp = {
        semconv.SESSION_ID: sid,
        semconv.USER_ID: "alice",
        semconv.TRIGGER_SOURCE: "api",
        semconv.TRIGGER_TYPE: "POST /claims",
    }
    web, web_exporter = provider(path, "web")
    worker, worker_exporter = provider(path, "worker")
    web_tracer, worker_tracer = web.get_tracer("tests.web"), worker.get_tracer("tests.worker")

    with web_tracer.start_as_current_span("POST /claims", kind=trace.SpanKind.SERVER) as root:
        root.set_attributes({**stamp, "http.request.method": "POST", "claim.ids": (1, 2, 3)})
        # "vendor lookup" is a third-party span: inside the request, never stamped with session.id.
        with (
            web_tracer.start_as_current_span("validate claim", attributes=stamp),
            web_tracer.start_as_current_span("vendor lookup") as vendor,
        ):
            vendor.add_event("cache miss", {"cache.key": "vendor:42", "ttl": 30})
        web_ctx = root.get_span_context()

    with worker_tracer.start_as_current_span(
        "process claim", attributes=stamp, links=[Link(web_ctx, {"link.reason": "enqueued"})]
    ) as job:
        with worker_tracer.start_as_current_span("chat gpt-4o", attributes=stamp) as ai:
            ai.add_event("gen_ai.evaluation.result", {"gen_ai.evaluation.score.value": 0.42})
            ai.set_status(Status(StatusCode.ERROR, "model timeout"))
        with worker_tracer.start_as_current_span("save claim", attributes=stamp) as save:
            save.set_status(Status(StatusCode.ERROR, "constraint violated"))
        worker_ctx = job.get_span_context()

    missing_parent = SpanContext(worker_ctx.trace_id, 0xDEADBEEF, is_remote=True, trace_flags=TraceFlags(1))
    parent_ctx = trace.set_span_in_context(NonRecordingSpan(missing_parent))
    worker_tracer.start_span("late callback", context=parent_ctx, attributes=stamp).end()

    with web_tracer.start_as_current_span("GET /health") as health:
        health.set_attribute(semconv.SESSION_ID, other)

    web.shutdown()
    worker.shutdown()
    for exporter in (web_exporter, worker_exporter):
        exporter.shutdown()
    return Scenario(
        session_id=sid,
        other_session_id=other,
        web_trace_id=f"{web_ctx.trace_id:032x}",
        worker_trace_id=f"{worker_ctx.trace_id:032x}",
        orphan_parent_id=f"{0xDEADBEEF:016x}",
    )
