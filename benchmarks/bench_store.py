"""Benchmark the embedded span store at scale.

    python benchmarks/bench_store.py [--spans 1000000 --sessions 10000] [--path FILE]

Builds a store of ``--spans`` spans over ``--sessions`` sessions (several traces per session,
one unstamped span per trace) by exporting realistic SDK ``ReadableSpan``s (8 attributes, one
event) through ``StoreSpanExporter.export`` in batches of 512, as ``BatchSpanProcessor`` would.
Only the export calls are timed: spans are cloned from a few hundred real SDK spans beforehand.
Then times ``load_session_path`` (query + ``build_path``) for 200 random sessions and
``sessions(limit=20)``, and prints each figure beside its target.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from sessiontrace import semconv
from sessiontrace.context import new_session_id
from sessiontrace.path import build_path
from sessiontrace.sources.store import load_session_path
from sessiontrace.store import SpanStore, StoreSpanExporter

TARGET_EXPORT_SPANS_PER_S = 20_000
TARGET_PATH_MS = 50.0
TARGET_SESSIONS_MS = 50.0
BATCH = 512
TRACES_PER_SESSION = 4
SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def templates(count: int = 300) -> list[ReadableSpan]:
    """Real SDK spans, ~8 attributes and one event each, to clone from."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    kinds = [SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.CLIENT]
    for i in range(count):
        with tracer.start_as_current_span(f"step {i % 25}", kind=kinds[i % 3]) as span:
            span.set_attributes(
                {
                    semconv.USER_ID: f"user-{i % 97}",
                    semconv.TRIGGER_SOURCE: "api",
                    "workflow.name": "claims",
                    "workflow.step.name": f"step {i % 25}",
                    "http.request.method": "POST",
                    "http.response.status_code": 200,
                    "gen_ai.request.model": "gpt-4o",
                    "claim.amount": 1234.5 + i,
                }
            )
            span.add_event("db.change", {"db.collection.name": "claims", "record.id": str(i)})
            if i % 50 == 0:
                span.set_status(Status(StatusCode.ERROR, "validation failed"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def clone_session(
    session_index: int, spans_per_session: int, pool: list[ReadableSpan], rng: random.Random
) -> list[ReadableSpan]:
    """One session: ``TRACES_PER_SESSION`` traces, one span per trace without a session id."""
    sid = new_session_id()
    base = 1_700_000_000_000_000_000 + session_index * 2_000_000  # sessions overlap in time
    per_trace = max(1, spans_per_session // TRACES_PER_SESSION)
    out: list[ReadableSpan] = []
    made = 0
    for t in range(TRACES_PER_SESSION):
        trace_id = rng.getrandbits(128)
        root_ctx: SpanContext | None = None
        count = per_trace if t < TRACES_PER_SESSION - 1 else spans_per_session - made
        for k in range(count):
            tmpl = pool[(session_index * 7 + made) % len(pool)]
            ctx = SpanContext(trace_id, rng.getrandbits(64) or 1, False, SAMPLED)
            start = base + t * 500_000 + k * 10_000
            attributes = dict(tmpl.attributes or {})
            if k != 1:  # k == 1: a third-party span that never got session.id
                attributes[semconv.SESSION_ID] = sid
            event = tmpl.events[0]
            out.append(
                ReadableSpan(
                    tmpl.name,
                    context=ctx,
                    parent=root_ctx,
                    resource=tmpl.resource,
                    attributes=attributes,
                    events=(Event(event.name, event.attributes, start + 1_000),),
                    kind=tmpl.kind,
                    status=tmpl.status,
                    start_time=start,
                    end_time=start + 8_000 if k else base + t * 500_000 + count * 10_000,
                    instrumentation_scope=tmpl.instrumentation_scope,
                )
            )
            if root_ctx is None:
                root_ctx = ctx
            made += 1
    return out


def batches(total: int, sessions: int, pool: list[ReadableSpan], rng: random.Random) -> Iterator[list[ReadableSpan]]:
    """Export-sized batches; several sessions are in flight at once, as in a real service."""
    per_session = total // sessions
    group = 8
    pending: list[ReadableSpan] = []
    for first in range(0, sessions, group):
        for i in range(first, min(first + group, sessions)):
            pending.extend(clone_session(i, per_session, pool, rng))
        pending.sort(key=lambda s: s.end_time or 0)  # exporters see spans in end order
        while len(pending) >= BATCH:
            yield pending[:BATCH]
            del pending[:BATCH]
    if pending:
        yield pending


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--path", type=Path, default=Path(__file__).parent / ".data" / "bench.sqlite3")
    args = parser.parse_args()
    path: Path = args.path
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)

    rng = random.Random(7)
    pool = templates()
    exporter = StoreSpanExporter(path)
    exported = 0
    export_s = 0.0
    started = time.perf_counter()
    for batch in batches(args.spans, args.sessions, pool, rng):
        t0 = time.perf_counter()
        result = exporter.export(batch)
        export_s += time.perf_counter() - t0
        if result.name != "SUCCESS":
            print(f"export failed after {exported} spans", file=sys.stderr)
            return 1
        exported += len(batch)
        if exported % 100_000 < BATCH:
            print(f"  {exported:>9,} spans  {exported / export_s:,.0f} spans/s", file=sys.stderr)
    exporter.shutdown()
    wall = time.perf_counter() - started
    throughput = exported / export_s

    with SpanStore(path, readonly=True) as store:
        t0 = time.perf_counter()
        all_sessions = store.sessions(limit=args.sessions)
        ids = [s.session_id for s in all_sessions]
        listing = []
        for _ in range(20):
            t0 = time.perf_counter()
            store.sessions(limit=20)
            listing.append((time.perf_counter() - t0) * 1000)
        timings = []
        spans_seen = []
        for sid in rng.sample(ids, min(args.samples, len(ids))):
            t0 = time.perf_counter()
            session_path = load_session_path(store, sid)
            timings.append((time.perf_counter() - t0) * 1000)
            spans_seen.append(session_path.span_count)
        stored = store.span_count()
    assert build_path  # load_session_path includes build_path; imported to make that explicit

    timings.sort()
    median = statistics.median(timings)
    p95 = timings[int(len(timings) * 0.95) - 1]
    listing_median = statistics.median(listing)
    size_mb = path.stat().st_size / 1e6

    print()
    print(f"store: {path} ({size_mb:,.0f} MB), {stored:,} spans, {len(ids):,} sessions")
    print(f"spans per sampled path: {min(spans_seen)}-{max(spans_seen)}; wall {wall:,.1f} s")
    print(f"{'measure':<40}{'value':>14}  {'target':>12}  result")
    rows = [
        ("export throughput (spans/s)", f"{throughput:,.0f}", f">= {TARGET_EXPORT_SPANS_PER_S:,}",
         throughput >= TARGET_EXPORT_SPANS_PER_S),
        ("session path, median (ms)", f"{median:.2f}", f"<= {TARGET_PATH_MS:.0f}",
         median <= TARGET_PATH_MS),
        ("session path, p95 (ms)", f"{p95:.2f}", f"<= {TARGET_PATH_MS:.0f}",
         p95 <= TARGET_PATH_MS),
        ("sessions(limit=20), median (ms)", f"{listing_median:.2f}",
         f"<= {TARGET_SESSIONS_MS:.0f}", listing_median <= TARGET_SESSIONS_MS),
    ]  # fmt: skip
    for name, value, target, ok in rows:
        print(f"{name:<40}{value:>14}  {target:>12}  {verdict(ok)}")
    return 0 if all(row[3] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
