"""``configure()`` and zero-code setup, end to end.

The global ``TracerProvider`` can be set only once per process, so every scenario runs a small
script in a fresh interpreter and asserts on what it prints (one JSON line), its exit code, and
what reached the real backend: the embedded store file or a loopback OTLP server.
"""

from __future__ import annotations

import gzip
import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from sessiontrace import semconv
from sessiontrace.store import SpanStore

BIN = Path(sys.executable).parent
SESSION_ID = "0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b"


# --- running a script in a fresh interpreter -------------------------------------------------------
def _clean_env(tmp_path: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The parent's environment without any telemetry or proxy setting, plus ``extra``.

    ``XDG_DATA_HOME`` points into ``tmp_path`` so a default store never lands in the real home.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "SESSIONTRACE_"))
        and key.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run(
    script: str,
    tmp_path: Path,
    env: Mapping[str, str] | None = None,
    *,
    command: list[str] | None = None,
    timeout: float = 60,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Write ``script`` to ``app.py`` and run it (with ``command`` as the launcher, if given)."""
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(script))
    argv = [*(command or [sys.executable]), str(app)]
    result = subprocess.run(
        argv,
        cwd=tmp_path,
        env=_clean_env(tmp_path, env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def output(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The last stdout line, which every script prints as JSON."""
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines, f"no output\nstderr:\n{result.stderr}"
    parsed: dict[str, Any] = json.loads(lines[-1])
    return parsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- a real OTLP/HTTP receiver on loopback -----------------------------------------------------------
class _Receiver(http.server.ThreadingHTTPServer):
    requests: list[tuple[str, str, bytes]]


class _OtlpHandler(http.server.BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.requests.append((self.path, self.headers.get("Content-Type", ""), body))
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass


@pytest.fixture
def otlp_receiver() -> Iterator[_Receiver]:
    server = _Receiver(("127.0.0.1", 0), _OtlpHandler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _spans_of(request: ExportTraceServiceRequest) -> dict[str, dict[str, Any]]:
    """Span name -> attributes (string and string-array values) of every span in ``request``."""
    spans: dict[str, dict[str, Any]] = {}
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes: dict[str, Any] = {}
                for kv in span.attributes:
                    kind = kv.value.WhichOneof("value")
                    if kind == "array_value":
                        attributes[kv.key] = [v.string_value for v in kv.value.array_value.values]
                    else:
                        attributes[kv.key] = getattr(kv.value, kind) if kind else None
                spans[span.name] = attributes
    return spans


# --- no provider yet: configure() creates one ----------------------------------------------------------
class TestNewProvider:
    """With no provider registered, configure() creates one, makes it global and exports it."""

    def test_creates_global_provider_and_writes_the_store(self, tmp_path: Path) -> None:
        store = tmp_path / "spans.sqlite3"
        result = run(
            """
            import json
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            import sessiontrace

            configuration = sessiontrace.configure(service_name="checkout")
            provider = trace.get_tracer_provider()
            tracer = trace.get_tracer("app")
            with sessiontrace.session(user_id="alice", roles=["clerk"], trigger_source="api") as s:
                with tracer.start_as_current_span("work"):
                    pass
            provider.shutdown()  # flushes the batch processor into the store
            print(json.dumps({
                "sdk": isinstance(provider, TracerProvider),
                "same": provider is configuration.tracer_provider,
                "reused": configuration.reused_provider,
                "exporter": configuration.exporter,
                "store_path": str(configuration.store_path),
                "session_id": s.id,
            }))
            """,
            tmp_path,
            {"SESSIONTRACE_STORE": str(store)},
        )
        out = output(result)
        assert out["sdk"]
        assert out["same"]
        assert out["reused"] is False
        assert out["exporter"] == "store"
        assert out["store_path"] == str(store)

        with SpanStore(store, readonly=True) as spans_store:
            spans = {span.name: span for span in spans_store.session_spans(out["session_id"])}
        assert set(spans) == {"session", "work"}
        work = spans["work"]
        assert work.session_id == out["session_id"]
        assert work.attributes[semconv.SESSION_ID] == out["session_id"]
        assert work.attributes[semconv.USER_ID] == "alice"
        assert list(work.attributes[semconv.USER_ROLES]) == ["clerk"]
        assert work.service_name == "checkout"

    def test_a_relative_store_is_reported_where_it_is_written(self, tmp_path: Path) -> None:
        """``SESSIONTRACE_STORE=rel/spans.sqlite3`` is the directory configure() ran in: the
        ``Configuration`` says where, absolute, as the spans are written there."""
        result = run(
            """
            import json, os
            from opentelemetry import trace
            import sessiontrace

            configuration = sessiontrace.configure()
            with sessiontrace.session(user_id="alice"):
                pass
            trace.get_tracer_provider().shutdown()
            print(json.dumps({"store_path": str(configuration.store_path)}))
            """,
            tmp_path,
            {"SESSIONTRACE_STORE": "rel/spans.sqlite3"},
        )
        store = tmp_path / "rel" / "spans.sqlite3"
        assert output(result)["store_path"] == str(store)
        assert store.is_file()


# --- the application already set up OpenTelemetry --------------------------------------------------------
_APP_PROVIDER = """
import json, os
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import sessiontrace

provider = TracerProvider()
app_exporter = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(app_exporter))
trace.set_tracer_provider(provider)

first = sessiontrace.configure()
second = sessiontrace.configure()
with sessiontrace.session(user_id="bob") as s:
    with trace.get_tracer("app").start_as_current_span("work"):
        pass
processors = [type(p).__name__ for p in provider._active_span_processor._span_processors]
spans = {span.name: dict(span.attributes) for span in app_exporter.get_finished_spans()}
provider.shutdown()
print(json.dumps({
    "reused": [first.reused_provider, second.reused_provider],
    "exporter": [first.exporter, second.exporter],
    "same": [first.tracer_provider is provider, second.tracer_provider is provider],
    "global_same": trace.get_tracer_provider() is provider,
    "processors": processors,
    "spans": spans,
    "session_id": s.id,
}, default=list))
"""


class TestExistingProvider:
    """An application's own SDK provider is reused: we add stamping, never replace its exporters."""

    def test_adds_stamping_and_no_exporter(self, tmp_path: Path) -> None:
        out = output(run(_APP_PROVIDER, tmp_path, {"SESSIONTRACE_STORE": str(tmp_path / "unused.sqlite3")}))
        assert out["reused"] == [True, True]
        assert out["exporter"] == ["none", "none"]
        assert out["same"] == [True, True]
        assert out["global_same"]
        # Configured twice: still exactly one stamping processor, and no exporter of ours; redaction
        # goes before the application's exporting processor.
        assert out["processors"] == ["RedactingSpanProcessor", "SimpleSpanProcessor", "SessionSpanProcessor"]
        work = out["spans"]["work"]
        assert work[semconv.SESSION_ID] == out["session_id"]
        assert work[semconv.USER_ID] == "bob"
        assert not (tmp_path / "unused.sqlite3").exists()

    def test_adds_our_exporter_only_when_asked(self, tmp_path: Path) -> None:
        store = tmp_path / "spans.sqlite3"
        out = output(run(_APP_PROVIDER, tmp_path, {"SESSIONTRACE_EXPORTER": "store", "SESSIONTRACE_STORE": str(store)}))
        assert out["processors"] == [
            "RedactingSpanProcessor",
            "SimpleSpanProcessor",
            "SessionSpanProcessor",
            "_Exporting",
        ]
        assert out["exporter"] == ["store", "store"]
        assert out["spans"]["work"][semconv.SESSION_ID] == out["session_id"]
        with SpanStore(store, readonly=True) as spans_store:
            names = {span.name for span in spans_store.session_spans(out["session_id"])}
        assert names == {"session", "work"}


# --- OTLP ------------------------------------------------------------------------------------------------
_SESSION_SPAN_SCRIPT = """
import json, time
from opentelemetry import trace
import sessiontrace

started = time.monotonic()
configuration = sessiontrace.configure()
with sessiontrace.session(user_id="carol") as s:
    with trace.get_tracer("app").start_as_current_span("work"):
        pass
print(json.dumps({"phase": "block done", "seconds": time.monotonic() - started}), flush=True)
trace.get_tracer_provider().shutdown()
print(json.dumps({
    "exporter": configuration.exporter,
    "session_id": s.id,
    "total_seconds": time.monotonic() - started,
}))
"""


class TestOtlp:
    """With an OTLP endpoint in the environment, spans go to it, stamped; a dead endpoint is harmless."""

    def test_http_protobuf_to_a_loopback_collector(self, tmp_path: Path, otlp_receiver: _Receiver) -> None:
        port = otlp_receiver.server_address[1]
        out = output(run(_SESSION_SPAN_SCRIPT, tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}))
        assert out["exporter"] == "otlp"

        assert otlp_receiver.requests, "the collector received nothing"
        spans: dict[str, dict[str, Any]] = {}
        for path, content_type, body in otlp_receiver.requests:
            assert path == "/v1/traces"
            assert content_type == "application/x-protobuf"
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            spans.update(_spans_of(request))
        assert set(spans) == {"session", "work"}
        assert spans["work"][semconv.SESSION_ID] == out["session_id"]
        assert spans["work"][semconv.USER_ID] == "carol"

    def test_grpc_endpoint_down_never_fails_the_app(self, tmp_path: Path) -> None:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        }
        started = time.monotonic()
        result = run(_SESSION_SPAN_SCRIPT, tmp_path, env, timeout=45)
        elapsed = time.monotonic() - started
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert lines[0]["phase"] == "block done"
        # The application's own work is not slowed by the dead endpoint: export is in the background.
        assert lines[0]["seconds"] < 5
        assert lines[-1]["exporter"] == "otlp"
        assert "Failed to export" in result.stderr  # it did try, and only logged the failure
        assert elapsed < 40


# --- malformed environment ----------------------------------------------------------------------------------
_CONFIGURE_ERROR = """
import json
import sessiontrace
try:
    sessiontrace.configure()
except ValueError as error:
    print(json.dumps({
        "error": type(error).__name__,
        "config_error": isinstance(error, sessiontrace.ConfigError),
        "message": str(error),
    }))
else:
    print(json.dumps({"error": None}))
"""


class TestBadEnvironment:
    """A malformed variable fails configure() at startup, with a message naming the variable."""

    @pytest.mark.parametrize(
        ("env", "named"),
        [
            ({"SESSIONTRACE_EXPORTER": "bogus"}, "SESSIONTRACE_EXPORTER"),
            ({"SESSIONTRACE_REQUIRE_SIGNATURE": "maybe"}, "SESSIONTRACE_REQUIRE_SIGNATURE"),
            ({"SESSIONTRACE_TRUSTED_PEERS": "not-an-ip"}, "SESSIONTRACE_TRUSTED_PEERS"),
            ({"SESSIONTRACE_BAGGAGE_HOSTS": "10.0.0.0/99"}, "SESSIONTRACE_BAGGAGE_HOSTS"),
            ({"SESSIONTRACE_REQUIRE_SIGNATURE": "true"}, "SESSIONTRACE_REQUIRE_SIGNATURE"),
            (
                {"SESSIONTRACE_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                {"SESSIONTRACE_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "carrier-pigeon"},
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            ),
        ],
        ids=[
            "exporter",
            "require-signature-flag",
            "trusted-peers",
            "baggage-hosts",
            "signature-without-key",
            "protocol",
            "traces-protocol",
        ],
    )
    def test_config_error_names_the_variable(self, tmp_path: Path, env: dict[str, str], named: str) -> None:
        out = output(run(_CONFIGURE_ERROR, tmp_path, env))
        assert out["error"] == "ConfigError", out
        assert out["config_error"]
        assert named in out["message"]


# --- OTEL_SDK_DISABLED and OTEL_PROPAGATORS ------------------------------------------------------------------
class TestStandardVariables:
    def test_sdk_disabled_keeps_propagation(self, tmp_path: Path) -> None:
        """No provider is created, yet the session still crosses process boundaries."""
        result = run(
            """
            import json
            from opentelemetry import propagate, trace
            from opentelemetry.sdk.trace import TracerProvider
            import sessiontrace

            configuration = sessiontrace.configure()
            carrier = {}
            with sessiontrace.session() as s:
                propagate.inject(carrier)
            print(json.dumps({
                "provider": configuration.tracer_provider is not None,
                "sdk_global": isinstance(trace.get_tracer_provider(), TracerProvider),
                "propagator": type(propagate.get_global_textmap()).__name__,
                "baggage": carrier.get("baggage", ""),
                "session_id": s.id,
            }))
            """,
            tmp_path,
            {"OTEL_SDK_DISABLED": "true"},
        )
        out = output(result)
        assert out["provider"] is False
        assert out["sdk_global"] is False
        assert out["propagator"] == "SessionPropagator"
        assert f"{semconv.BAGGAGE_SESSION_ID}={out['session_id']}" in out["baggage"]
        assert not list((tmp_path / "xdg").rglob("*.sqlite3"))

    def test_propagators_without_baggage(self, tmp_path: Path) -> None:
        """``OTEL_PROPAGATORS=tracecontext`` is honoured as written: we wrap it, and since W3C
        baggage is off the session does not cross HTTP (spans in this process are still stamped)."""
        result = run(
            f"""
            import json
            from opentelemetry import propagate, trace
            import sessiontrace

            sessiontrace.configure(exporter="none")
            propagator = propagate.get_global_textmap()
            carrier = {{}}
            with sessiontrace.session() as s:
                with trace.get_tracer("app").start_as_current_span("work") as span:
                    propagate.inject(carrier)
                    stamped = span.attributes.get("session.id") == s.id
            inbound = sessiontrace.extract({{"baggage": "session.id={SESSION_ID}"}})
            print(json.dumps({{
                "propagator": type(propagator).__name__,
                "fields": sorted(propagator.fields),
                "headers": sorted(carrier),
                "stamped": stamped,
                "inbound_session": getattr(sessiontrace.current_session(inbound), "id", None),
            }}))
            """,
            tmp_path,
            {"OTEL_PROPAGATORS": "tracecontext"},
        )
        out = output(result)
        assert out["propagator"] == "SessionPropagator"
        assert out["fields"] == ["traceparent", "tracestate"]
        assert out["headers"] == ["traceparent"]
        assert out["stamped"] is True
        assert out["inbound_session"] is None


# --- zero code: opentelemetry-instrument --------------------------------------------------------------------------
class TestZeroCode:
    """``opentelemetry-instrument python app.py`` with no sessiontrace import in the app."""

    @pytest.mark.parametrize(
        "selection",
        [{}, {"OTEL_PYTHON_CONFIGURATOR": "sessiontrace", "OTEL_PYTHON_DISTRO": "sessiontrace"}],
        ids=["only-configurator-installed", "selected-by-name"],
    )
    def test_configurator_and_propagator_are_ours(self, tmp_path: Path, selection: dict[str, str]) -> None:
        instrument = BIN / "opentelemetry-instrument"
        assert instrument.exists(), "opentelemetry-instrument is not installed next to the interpreter"
        store = tmp_path / "spans.sqlite3"
        session_id = str(uuid.uuid4())
        result = run(
            f"""
            import json
            from opentelemetry import context, propagate, trace

            token = context.attach(propagate.extract({{"baggage": "session.id={session_id}"}}))
            try:
                with trace.get_tracer("app").start_as_current_span("zero-code work") as span:
                    attributes = dict(span.attributes)
            finally:
                context.detach(token)
            propagator = propagate.get_global_textmap()
            trace.get_tracer_provider().shutdown()
            print(json.dumps({{
                "propagator": type(propagator).__module__ + "." + type(propagator).__name__,
                "provider": type(trace.get_tracer_provider()).__module__,
                "attributes": attributes,
            }}))
            """,
            tmp_path,
            {
                **selection,
                "SESSIONTRACE_EXPORTER": "store",
                "SESSIONTRACE_STORE": str(store),
                "OTEL_SERVICE_NAME": "zero",
            },
            command=[str(instrument), sys.executable],
        )
        out = output(result)
        assert out["propagator"] == "sessiontrace.propagation.SessionPropagator"
        assert out["provider"].startswith("opentelemetry.sdk.trace")
        assert out["attributes"][semconv.SESSION_ID] == session_id

        with SpanStore(store, readonly=True) as spans_store:
            spans = spans_store.session_spans(session_id)
        assert [span.name for span in spans] == ["zero-code work"]
        assert spans[0].session_id == session_id
        assert spans[0].service_name == "zero"


# --- logs -----------------------------------------------------------------------------------------------------
class TestLogs:
    """Log records emitted inside a session carry its id, through stdlib logging and the OTel API."""

    def test_stdlib_and_otel_api_logs_are_stamped(self, tmp_path: Path) -> None:
        result = run(
            """
            import io, json, logging
            from opentelemetry import _logs
            from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
            from opentelemetry.sdk._logs.export import (
                LogRecordExporter, LogRecordExportResult, SimpleLogRecordProcessor,
            )
            import sessiontrace

            class SnapshotExporter(LogRecordExporter):
                # Copies attributes at export time: a processor that stamps after the export
                # (too late for any real exporter) must not pass by mutating a shared record.
                def __init__(self):
                    self.records = []

                def export(self, batch):
                    for readable in batch:
                        record = readable.log_record
                        self.records.append({"body": str(record.body), "attributes": dict(record.attributes or {})})
                    return LogRecordExportResult.SUCCESS

                def shutdown(self):
                    pass

                def force_flush(self, timeout_millis=30000):
                    return True

            exporter = SnapshotExporter()
            logger_provider = LoggerProvider()
            logger_provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
            _logs.set_logger_provider(logger_provider)

            sessiontrace.configure(exporter="none")

            app_log = logging.getLogger("app")
            app_log.setLevel(logging.INFO)
            app_log.propagate = False
            app_log.addHandler(LoggingHandler(logger_provider=logger_provider))
            text = io.StringIO()
            plain = logging.StreamHandler(text)
            plain.setFormatter(logging.Formatter("%(session.id)s %(message)s", defaults={"session.id": "-"}))
            app_log.addHandler(plain)

            with sessiontrace.session(user_id="dora") as s:
                app_log.info("inside via stdlib")
                logger_provider.get_logger("direct").emit(body="inside via api")
            app_log.info("outside via stdlib")
            logger_provider.get_logger("direct").emit(body="outside via api")

            print(json.dumps({
                "session_id": s.id,
                "records": {r["body"]: r["attributes"] for r in exporter.records},
                "formatted": text.getvalue().splitlines(),
            }, default=list))
            """,
            tmp_path,
        )
        out = output(result)
        sid, records = out["session_id"], out["records"]
        assert set(records) == {"inside via stdlib", "inside via api", "outside via stdlib", "outside via api"}, out
        assert records["inside via stdlib"].get(semconv.SESSION_ID) == sid, out
        assert records["inside via stdlib"][semconv.USER_ID] == "dora"
        assert records["inside via api"].get(semconv.SESSION_ID) == sid, out
        assert records["inside via api"][semconv.USER_ID] == "dora"
        assert semconv.SESSION_ID not in records["outside via stdlib"]
        assert semconv.SESSION_ID not in records["outside via api"]
        assert out["formatted"] == [f"{sid} inside via stdlib", "- outside via stdlib"]

    def test_provider_set_after_configure_is_stamped(self, tmp_path: Path) -> None:
        result = run(
            """
            import json
            from opentelemetry import _logs
            from opentelemetry.sdk._logs import LoggerProvider
            from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
            import sessiontrace

            sessiontrace.configure(exporter="none")  # tracing first, logging afterwards
            exporter = InMemoryLogRecordExporter()
            logger_provider = LoggerProvider()
            logger_provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
            _logs.set_logger_provider(logger_provider)

            with sessiontrace.session(user_id="dora") as s:
                logger_provider.get_logger("direct").emit(body="inside")
            finished = exporter.get_finished_logs()
            records = {str(r.log_record.body): dict(r.log_record.attributes or {}) for r in finished}
            print(json.dumps({"session_id": s.id, "records": records}, default=list))
            """,
            tmp_path,
        )
        out = output(result)
        assert out["records"]["inside"].get(semconv.SESSION_ID) == out["session_id"], out
        assert out["records"]["inside"][semconv.USER_ID] == "dora"
