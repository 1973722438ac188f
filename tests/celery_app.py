"""The Celery app of the Celery tests: one task that reports what it observes.

The test process imports it to publish; a real worker subprocess imports it as
``tests.celery_app``. Only the worker (``SESSIONTRACE_TEST_STORE`` set) configures sessiontrace
with the embedded store and instruments Celery at import, as a real worker module would.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from opentelemetry import trace

BROKER_URL = os.environ.get("SESSIONTRACE_TEST_BROKER", "redis://127.0.0.1:6379/7")
TASK_NAME = "sessiontrace_tests.observe"

app = Celery("sessiontrace_tests", broker=BROKER_URL, backend=BROKER_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=3,
    result_expires=600,
    worker_hijack_root_logger=False,
)

if os.environ.get("SESSIONTRACE_TEST_STORE"):  # the worker process
    import sessiontrace
    import sessiontrace.integrations.celery

    sessiontrace.configure(
        service_name="celery-worker", exporter="store", store_path=os.environ["SESSIONTRACE_TEST_STORE"]
    )
    sessiontrace.integrations.celery.instrument()

tracer = trace.get_tracer("sessiontrace_tests.celery")


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@app.task(name=TASK_NAME)
def observe(label: str) -> dict[str, Any]:
    """Create a span and a log record, and report the session and what was stamped on them."""
    from sessiontrace import current_session

    logger = logging.getLogger("sessiontrace_tests.worker")
    logger.setLevel(logging.DEBUG)
    recorder = _Recorder()
    logger.addHandler(recorder)
    try:
        with tracer.start_as_current_span(f"task work {label}") as span:
            logger.info("task %s running", label)
            attributes = dict(getattr(span, "attributes", None) or {})
            context = span.get_span_context()
    finally:
        logger.removeHandler(recorder)
    current = current_session()
    return {
        "session_id": current.id if current else None,
        "user_id": current.user_id if current else None,
        "span_attributes": {key: value for key, value in attributes.items() if isinstance(value, str)},
        "trace_id": format(context.trace_id, "032x"),
        "log_session_id": recorder.records[0].__dict__.get("session.id") if recorder.records else None,
    }


# --- workflow tests (tests/test_workflow.py) ----------------------------------------------------------------
WORKFLOW_TASK_NAME = "sessiontrace_tests.continue_run"


@app.task(name=WORKFLOW_TASK_NAME)
def continue_run(label: str) -> dict[str, Any]:
    """Run one ``step()`` in the worker and report the run it continued and what its span carries."""
    from sessiontrace import current_session
    from sessiontrace.workflow import current_run, step

    @step(f"task step {label}")
    def work() -> dict[str, Any]:
        run, current = current_run(), current_session()
        span = trace.get_current_span()
        attributes = dict(getattr(span, "attributes", None) or {})
        return {
            "run": [run.name, run.id] if run else None,
            "session_id": current.id if current else None,
            "span_attributes": {key: value for key, value in attributes.items() if isinstance(value, (str, int))},
            "trace_id": format(span.get_span_context().trace_id, "032x"),
        }

    return work()
