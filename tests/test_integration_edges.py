"""Edges where the session went missing or the application's data was damaged: a WSGI app mounted
under a prefix, header values the application passes as bytes or in its own ``baggage`` header,
``@session()`` on generators, ``threading.Thread`` subclasses, and ``configure()`` called twice.

Everything crosses real loopback servers with the real httpx and requests clients; what the
global provider decides runs in a fresh interpreter."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.threading import ThreadingInstrumentor
from opentelemetry.trace import StatusCode

from _servers import RunningServer, run_async, start_wsgi
from sessiontrace import semconv
from sessiontrace.context import current_session, new_session_id, session
from sessiontrace.integrations import wsgi as session_wsgi
from sessiontrace.policy import InboundPolicy, OutboundPolicy
from sessiontrace.testing import CapturedSpans

OUR_KEYS = set(semconv.OUR_BAGGAGE_KEYS)


def baggage_entries(headers: dict[str, str]) -> list[str]:
    return [entry.strip() for entry in headers.get("baggage", "").split(",") if entry.strip()]


def baggage_keys(headers: dict[str, str]) -> set[str]:
    return {entry.split("=", 1)[0] for entry in baggage_entries(headers)}


# --- a WSGI app mounted under a prefix ---------------------------------------------------------------
def mounted(prefix: str, app: Any) -> Callable[[dict[str, Any], Any], Iterable[bytes]]:
    """What werkzeug's DispatcherMiddleware and Flask mounts do: move the prefix to SCRIPT_NAME."""

    def dispatch(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path.startswith(prefix):
            environ["SCRIPT_NAME"], environ["PATH_INFO"] = prefix, path[len(prefix) :]
        served: Iterable[bytes] = app(environ, start_response)
        return served

    return dispatch


def answer(start_response: Any, body: object) -> Iterable[bytes]:
    start_response("200 OK", [("content-type", "application/json")])
    return [json.dumps(body).encode()]


@pytest.fixture
def signed_edge_and_ledger(
    reconfigure: Callable[..., Any], outbound_policy: None
) -> Iterator[tuple[RunningServer, RunningServer]]:
    """An edge app mounted under ``/app`` that calls a ledger; both require signed sessions."""
    reconfigure(inbound=InboundPolicy(signing_key=b"k" * 32, require_signature=True))

    def ledger(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        current = current_session()
        return answer(start_response, current.id if current else None)

    ledger_server = start_wsgi(session_wsgi.SessionMiddleware(ledger))

    def edge(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        current = current_session()
        assert current is not None
        theirs = requests.get(f"{ledger_server.url}/reserve", timeout=10).json()
        return answer(start_response, {"edge": current.id, "ledger": theirs, "trigger": current.trigger_type})

    edge_server = start_wsgi(mounted("/app", session_wsgi.SessionMiddleware(edge)))
    try:
        yield edge_server, ledger_server
    finally:
        edge_server.stop()
        ledger_server.stop()


class TestMountedWsgiTrigger:
    """The trigger type minted for a request is ``METHOD /path`` with no surrounding whitespace,
    also at a mount point (empty ``PATH_INFO``): receivers strip baggage values, so a signature
    over a value with a trailing space would not verify and the session chain would break."""

    @pytest.mark.parametrize(
        ("path", "trigger"),
        [("/app/x", "GET /x"), ("/app", "GET /"), ("/app/x%20", "GET /x")],
    )
    def test_mounted_app_continues_its_session_at_a_signed_peer(
        self, signed_edge_and_ledger: tuple[RunningServer, RunningServer], path: str, trigger: str
    ) -> None:
        edge_server, _ = signed_edge_and_ledger
        reply = requests.get(f"{edge_server.url}{path}", timeout=10).json()
        assert reply["trigger"] == trigger
        assert reply["ledger"] == reply["edge"], "the ledger refused the edge's signed session"


# --- the application's own headers going out ---------------------------------------------------------
class TestApplicationHeaders:
    """Whatever the application put in its request headers stays, apart from our own entries."""

    def test_bytes_baggage_to_a_refused_host_is_sent_without_ours(
        self, header_recorder: RunningServer, outbound_policy: None, reconfigure: Callable[..., Any]
    ) -> None:
        """requests accepts bytes header values; stripping our entries must not crash on them."""
        reconfigure(outbound=OutboundPolicy(allowed_hosts=("localhost",)))
        sid = new_session_id()
        url = f"http://127.0.0.1:{header_recorder.port}/not-allowed"
        plain = requests.get(url, headers={"baggage": b"tenant=acme"}, timeout=10)
        with session():
            ours = requests.get(
                url,
                headers={"baggage": f"tenant=acme,session.id={sid},region=eu".encode()},
                timeout=10,
            )

        assert (plain.status_code, ours.status_code) == (204, 204)
        first, second = header_recorder.requests
        assert first["baggage"] == "tenant=acme"
        assert second["baggage"] == "tenant=acme,region=eu"

    def test_bytes_baggage_to_an_allowed_host_is_merged(
        self, header_recorder: RunningServer, outbound_policy: None, reconfigure: Callable[..., Any]
    ) -> None:
        reconfigure(outbound=OutboundPolicy(allowed_hosts=("localhost",)))
        with session(user_id="alice") as current:
            reply = requests.get(
                f"http://localhost:{header_recorder.port}/allowed",
                headers={"baggage": b"tenant=acme"},
                timeout=10,
            )
        assert reply.status_code == 204
        (received,) = header_recorder.requests
        assert {"tenant=acme", f"session.id={current.id}", "user.id=alice"} <= set(baggage_entries(received))

    @pytest.mark.parametrize("client", ["httpx", "httpx-async", "requests"])
    def test_application_baggage_to_an_allowed_host_is_kept(
        self,
        header_recorder: RunningServer,
        outbound_policy: None,
        reconfigure: Callable[..., Any],
        client: str,
    ) -> None:
        """Ours are added to the application's ``baggage`` header; ours win by key, and a stale
        entry under one of our keys (a forwarded header's user id) does not ride with our session."""
        reconfigure(outbound=OutboundPolicy(allowed_hosts=("localhost",)))
        stale = new_session_id()
        headers = {"baggage": f"tenant=acme,session.id={stale},user.id=mallory,region=eu"}
        with session() as current:
            SEND[client](f"http://localhost:{header_recorder.port}/allowed", headers)
            SEND[client](f"http://127.0.0.1:{header_recorder.port}/not-allowed", headers)

        allowed, refused = header_recorder.requests
        entries = baggage_entries(allowed)
        assert {"tenant=acme", "region=eu", f"session.id={current.id}"} <= set(entries)
        assert len(entries) == len(set(baggage_keys(allowed))), f"a key is sent twice: {entries}"
        assert semconv.BAGGAGE_USER_ID not in baggage_keys(allowed)
        assert stale not in allowed["baggage"]
        assert "traceparent" in allowed
        assert refused["baggage"] == "tenant=acme,region=eu"

    def test_without_a_session_the_application_baggage_is_untouched(
        self, header_recorder: RunningServer, outbound_policy: None
    ) -> None:
        requests.get(header_recorder.url, headers={"baggage": "tenant=acme"}, timeout=10)
        (received,) = header_recorder.requests
        assert received["baggage"] == "tenant=acme"


def send_httpx(url: str, headers: dict[str, str]) -> None:
    with httpx.Client(timeout=10) as client:
        client.get(url, headers=headers).raise_for_status()


def send_httpx_async(url: str, headers: dict[str, str]) -> None:
    async def call() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            (await client.get(url, headers=headers)).raise_for_status()

    run_async(call())


def send_requests(url: str, headers: dict[str, str]) -> None:
    requests.get(url, headers=headers, timeout=10).raise_for_status()


SEND = {"httpx": send_httpx, "httpx-async": send_httpx_async, "requests": send_requests}


# --- @session() on generators --------------------------------------------------------------------------
def current_id() -> str | None:
    current = current_session()
    return current.id if current else None


@session(trigger_source="queue")
def consume(count: int) -> Generator[str | None, None, None]:
    for _ in range(count):
        yield current_id()


@session(trigger_source="queue")
async def consume_async(count: int) -> AsyncGenerator[str | None, None]:
    for _ in range(count):
        await asyncio.sleep(0)
        yield current_id()


@session(trigger_source="queue")
def consume_then_fail() -> Generator[str | None, None, None]:
    yield current_id()
    raise ValueError("poison message")


class TestSessionDecoratedGenerators:
    """Each call of a decorated generator is one session: current while its body runs, across
    yields, absent in the consumer between items, and ended when the generator finishes, fails
    or is closed."""

    def test_generator_body_runs_in_one_session(self, capsession: CapturedSpans) -> None:
        seen_by_consumer = []
        ids = []
        for item in consume(3):
            ids.append(item)
            seen_by_consumer.append(current_id())

        assert ids[0] is not None
        assert ids == [ids[0]] * 3
        assert seen_by_consumer == [None] * 3
        (span,) = capsession.named(semconv.SESSION_SPAN)
        assert (span.attributes or {})[semconv.SESSION_ID] == ids[0]
        assert (span.attributes or {})[semconv.TRIGGER_SOURCE] == "queue"
        assert [event.name for event in span.events] == [semconv.SESSION_START_EVENT, semconv.SESSION_END_EVENT]
        assert list(consume(1)) != ids[:1], "every call is a fresh session"

    @pytest.mark.parametrize("kind", ["sync", "async"])
    def test_a_span_the_body_keeps_open_across_a_yield_stays_current(
        self, capsession: CapturedSpans, kind: str
    ) -> None:
        tracer = trace.get_tracer("test")

        @session(trigger_source="queue", trigger_type="batch")
        def produce() -> Generator[int, None, None]:
            with tracer.start_as_current_span("batch"):
                yield 1
                with tracer.start_as_current_span("after the yield"):
                    yield 2

        @session(trigger_source="queue", trigger_type="batch")
        async def produce_async() -> AsyncGenerator[int, None]:
            with tracer.start_as_current_span("batch"):
                yield 1
                with tracer.start_as_current_span("after the yield"):
                    yield 2

        async def drain() -> list[int]:
            return [item async for item in produce_async()]

        items = list(produce()) if kind == "sync" else asyncio.run(drain())
        assert items == [1, 2]
        (batch,) = capsession.named("batch")
        (after,) = capsession.named("after the yield")
        assert after.parent is not None
        assert after.parent.span_id == batch.context.span_id

    def test_async_generator_body_runs_in_one_session(self, capsession: CapturedSpans) -> None:
        async def main() -> tuple[list[str | None], list[str | None]]:
            ids, seen_by_consumer = [], []
            async for item in consume_async(3):
                ids.append(item)
                seen_by_consumer.append(current_id())
            return ids, seen_by_consumer

        ids, seen_by_consumer = asyncio.run(main())
        assert ids[0] is not None
        assert ids == [ids[0]] * 3
        assert seen_by_consumer == [None] * 3
        (span,) = capsession.named(semconv.SESSION_SPAN)
        assert (span.attributes or {})[semconv.SESSION_ID] == ids[0]

    def test_closing_early_ends_the_session_without_error(self, capsession: CapturedSpans) -> None:
        generator = consume(5)
        first = next(generator)
        assert not capsession.named(semconv.SESSION_SPAN), "the session ended before the generator did"
        generator.close()

        async def main() -> str | None:
            generator = consume_async(5)
            item = await generator.__anext__()
            await generator.aclose()
            return item

        first_async = asyncio.run(main())
        spans = capsession.named(semconv.SESSION_SPAN)
        assert {(span.attributes or {})[semconv.SESSION_ID] for span in spans} == {first, first_async}
        assert all(span.status.status_code != StatusCode.ERROR for span in spans)
        assert current_id() is None

    def test_an_error_in_the_body_ends_the_session_as_failed(self, capsession: CapturedSpans) -> None:
        generator = consume_then_fail()
        first = next(generator)
        with pytest.raises(ValueError, match="poison message"):
            next(generator)
        (span,) = capsession.named(semconv.SESSION_SPAN)
        assert (span.attributes or {})[semconv.SESSION_ID] == first
        assert span.status.status_code == StatusCode.ERROR
        assert current_id() is None

    def test_values_sent_and_returned_pass_through(self, capsession: CapturedSpans) -> None:
        @session()
        def echo() -> Generator[Any, Any, str]:
            received = yield current_id()
            received = yield received
            return f"done after {received}"

        generator = echo()
        sid = next(generator)
        assert generator.send("a") == "a"
        with pytest.raises(StopIteration) as stop:
            generator.send("b")
        assert stop.value.value == "done after b"
        assert sid is not None


# --- threading.Thread subclasses ----------------------------------------------------------------------
class Worker(threading.Thread):
    """The standard way to subclass: override ``run()``."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: str | None = "not run"

    def run(self) -> None:
        self.seen = current_id()


class DelayedWorker(threading.Timer):
    def __init__(self) -> None:
        super().__init__(0, lambda: None)
        self.seen: str | None = "not run"

    def run(self) -> None:
        self.seen = current_id()


class TestThreadSubclasses:
    """The context captured at ``start()`` is current in a subclass's own ``run()`` too, and is
    attached once, not twice, for a plain ``Thread(target=...)``."""

    @pytest.mark.parametrize("worker_class", [Worker, DelayedWorker])
    def test_subclass_overriding_run_sees_the_session(
        self, capsession: CapturedSpans, worker_class: type[Worker | DelayedWorker]
    ) -> None:
        worker = worker_class()
        with session() as current:
            worker.start()
        worker.join(10)
        assert worker.seen == current.id
        assert current_id() is None

    def test_context_is_attached_once_per_thread(
        self, capsession: CapturedSpans, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        attaches: list[int] = []
        original = otel_context.attach

        def counting_attach(context: Any) -> Any:
            attaches.append(threading.get_ident())
            return original(context)

        seen: dict[str, str | None] = {}

        def target() -> None:
            seen["target"] = current_id()

        # Thread idents are reused once a thread ends: count per run, outside the main thread.
        in_thread: dict[str, int] = {}
        plain, worker = threading.Thread(target=target), Worker()
        with session() as current:
            monkeypatch.setattr(otel_context, "attach", counting_attach)
            for name, thread in (("plain", plain), ("subclass", worker)):
                attaches.clear()
                thread.start()
                thread.join(10)
                in_thread[name] = len([ident for ident in attaches if ident != threading.get_ident()])
            monkeypatch.undo()

        assert seen["target"] == worker.seen == current.id
        assert in_thread == {"plain": 1, "subclass": 1}

    def test_follows_the_threading_instrumentor(self, capsession: CapturedSpans) -> None:
        """Without the contrib instrumentor no context is captured, for subclasses as for targets."""
        instrumentor = ThreadingInstrumentor()
        instrumentor.uninstrument()
        try:
            worker = Worker()
            with session():
                worker.start()
            worker.join(10)
        finally:
            instrumentor.instrument()
        assert worker.seen is None


# --- configure() twice ----------------------------------------------------------------------------------
def run_fresh(script: str, tmp_path: Path) -> tuple[dict[str, Any], str]:
    """Run ``script`` in a fresh interpreter (no telemetry settings inherited); its last stdout
    line as JSON, and its stderr."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "SESSIONTRACE_"))}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(script))
    result = subprocess.run(
        [sys.executable, str(app)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


_CONFIGURE_TWICE = """
import json, sys
import sessiontrace
from sessiontrace.config import _processors

first = sessiontrace.configure(store_path=sys.argv[0] + ".sqlite3", environ={{}})
second = sessiontrace.configure({second})
exporters = [
    type(p.span_exporter).__name__ for p in _processors(second.tracer_provider) if hasattr(p, "span_exporter")
]
print(json.dumps({{
    "exporter": [first.exporter, second.exporter],
    "store_path": [str(first.store_path), str(second.store_path)],
    "exporters": exporters,
}}))
"""


class TestConfigureTwice:
    """A second ``configure()`` never adds a second exporter of ours, and reports the one that
    is installed; asking for another one is a warning, not a silent wrong answer."""

    def test_second_call_reports_the_exporter_kept(self, tmp_path: Path) -> None:
        script = _CONFIGURE_TWICE.format(
            second='exporter="otlp", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}'
        )
        out, stderr = run_fresh(script, tmp_path)
        store = str(tmp_path / "app.py.sqlite3")
        assert out["exporters"] == ["StoreSpanExporter"]
        assert out["exporter"] == ["store", "store"]
        assert out["store_path"] == [store, store]
        assert "asked for exporter 'otlp'" in stderr
        assert "'store' exporter of an earlier configure() is kept" in stderr

    def test_same_request_again_is_silent(self, tmp_path: Path) -> None:
        script = _CONFIGURE_TWICE.format(second='store_path=sys.argv[0] + ".sqlite3", environ={}')
        out, stderr = run_fresh(script, tmp_path)
        assert out["exporter"] == ["store", "store"]
        assert out["exporters"] == ["StoreSpanExporter"]
        assert "sessiontrace" not in stderr
