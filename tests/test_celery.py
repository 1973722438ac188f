"""The session crosses a real broker: Redis on loopback, a real Celery worker in a subprocess.

The worker configures sessiontrace with the embedded store and instruments Celery at import
(``tests/celery_app.py``). The test process publishes inside ``session()``; what the worker saw
comes back twice: in the task result (through the Redis backend) and in the worker's span store.
Redis must be running: without it these tests fail, they are never skipped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind

import celery_app
from _servers import require_redis, wait_for
from sessiontrace import semconv
from sessiontrace.context import session
from sessiontrace.policy import InboundPolicy
from sessiontrace.store import SpanStore, StoreError
from sessiontrace.testing import CapturedSpans, capture

ROOT = Path(__file__).resolve().parent.parent
SIGNING_KEY = "celery-test-signing-key-0123456789"
RUN_SPAN = f"run/{celery_app.TASK_NAME}"
PUBLISH_SPAN = f"apply_async/{celery_app.TASK_NAME}"
tracer = trace.get_tracer("sessiontrace_tests.celery.publisher")


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    queue: str
    store_path: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A real ``celery worker`` subprocess on a queue of its own, terminated at teardown."""
    require_redis()
    directory = tmp_path_factory.mktemp("celery")
    queue = f"sessiontrace-tests-{uuid.uuid4().hex[:12]}"
    store_path, log_path = directory / "worker-spans.sqlite3", directory / "worker.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SESSIONTRACE_", "OTEL_"))}
    env.update(
        SESSIONTRACE_TEST_STORE=str(store_path),
        SESSIONTRACE_SIGNING_KEY=SIGNING_KEY,  # verifies signed users; unsigned ids still accepted
        OTEL_BSP_SCHEDULE_DELAY="100",  # export within a tenth of a second, not five
        PYTHONUNBUFFERED="1",
    )
    command = [
        sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker",
        "--pool=solo", "-c", "1", "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-Q", queue, "--loglevel=INFO", "-n", f"{queue}@%h",
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    running = Worker(process, queue, store_path, log_path)
    try:
        wait_for(
            lambda: process.poll() is not None or "ready." in running.log(),
            timeout=60,
            what="the Celery worker to start",
        )
        if process.poll() is not None:
            pytest.fail(f"the Celery worker exited with {process.returncode}:\n{running.log()}")
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def publisher(capsession: CapturedSpans) -> Iterator[CapturedSpans]:
    """The test process as the publishing service: configured and Celery-instrumented."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    import sessiontrace.integrations.celery

    capture()
    sessiontrace.integrations.celery.instrument()
    try:
        yield capsession
    finally:
        CeleryInstrumentor().uninstrument()


def run_task(worker: Worker, label: str, task: Any = celery_app.observe) -> dict[str, Any]:
    """Run ``task`` on the worker and return its result, failing with the worker's log if it dies."""
    result = task.apply_async(args=[label], queue=worker.queue)
    deadline = time.monotonic() + 60
    while not result.ready():
        if worker.process.poll() is not None:
            pytest.fail(f"the Celery worker died (exit {worker.process.returncode}):\n{worker.log()}")
        if time.monotonic() > deadline:
            pytest.fail(f"the task did not finish within 60s; worker log:\n{worker.log()}")
        time.sleep(0.05)
    value = result.get(timeout=5)
    assert isinstance(value, dict), value
    return value


def stored_spans(worker: Worker, session_id: str, names: set[str]) -> dict[str, Any]:
    """The worker's stored spans of ``session_id`` by name, once all of ``names`` are there."""

    def read() -> dict[str, Any] | None:
        if not worker.store_path.exists():
            return None
        try:
            with SpanStore(worker.store_path, readonly=True) as store:
                spans = {span.name: span for span in store.session_spans(session_id)}
        except StoreError:
            return None  # the worker is still creating the file
        return spans if names <= set(spans) else None

    return wait_for(read, timeout=30, what=f"worker spans {sorted(names)} in {worker.store_path}")


class TestSessionCrossesCelery:
    """A task published inside a session runs in that session on the worker: the worker's task
    span, a span and a log record made inside the task carry the session id, in the publisher's
    trace. The user travels only when the publisher signs it with the worker's key."""

    def test_session_reaches_task_span_log_and_store(self, worker: Worker, publisher: CapturedSpans) -> None:
        with (
            session(trigger_source="ui", trigger_type="approve claim") as current,
            tracer.start_as_current_span("publish claim") as publish,
        ):
            seen = run_task(worker, "basic")
        trace_id = format(publish.get_span_context().trace_id, "032x")

        # What the task observed, returned through the Redis result backend:
        assert seen["session_id"] == current.id
        assert seen["span_attributes"][semconv.SESSION_ID] == current.id
        assert seen["span_attributes"][semconv.TRIGGER_SOURCE] == "ui"
        assert seen["span_attributes"][semconv.TRIGGER_TYPE] == "approve claim"
        assert seen["log_session_id"] == current.id
        assert seen["trace_id"] == trace_id

        # The publisher's own producer span, in this process:
        (producer,) = publisher.named(PUBLISH_SPAN)
        assert producer.kind == SpanKind.PRODUCER
        assert (producer.attributes or {})[semconv.SESSION_ID] == current.id

        # What the worker exported to its embedded store:
        spans = stored_spans(worker, current.id, {RUN_SPAN, "task work basic"})
        run, work = spans[RUN_SPAN], spans["task work basic"]
        assert run.kind == "CONSUMER"
        assert run.service_name == "celery-worker"
        assert {run.trace_id, work.trace_id} == {trace_id}
        assert run.parent_span_id == format(producer.context.span_id, "016x")
        assert work.parent_span_id == run.span_id
        for span in (run, work):
            assert span.session_id == current.id
            assert span.attributes[semconv.SESSION_ID] == current.id

    def test_unsigned_user_is_not_believed_by_the_worker(self, worker: Worker, publisher: CapturedSpans) -> None:
        with session(user_id="alice") as current:
            seen = run_task(worker, "unsigned")
        assert seen["session_id"] == current.id
        assert seen["user_id"] is None
        assert semconv.USER_ID not in seen["span_attributes"]

    def test_signed_user_reaches_the_worker(
        self, worker: Worker, publisher: CapturedSpans, reconfigure: Callable[..., Any]
    ) -> None:
        reconfigure(inbound=InboundPolicy(signing_key=SIGNING_KEY.encode()))
        with session(user_id="alice") as current:
            seen = run_task(worker, "signed")
        assert seen["session_id"] == current.id
        assert seen["user_id"] == "alice"
        assert seen["span_attributes"][semconv.USER_ID] == "alice"
        spans = stored_spans(worker, current.id, {RUN_SPAN, "task work signed"})
        assert spans["task work signed"].attributes[semconv.USER_ID] == "alice"

    def test_task_published_outside_a_session_has_none(self, worker: Worker, publisher: CapturedSpans) -> None:
        seen = run_task(worker, "no session")
        assert seen["session_id"] is None
        assert semconv.SESSION_ID not in seen["span_attributes"]
        assert seen["log_session_id"] is None
