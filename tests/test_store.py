"""The embedded span store: round trip, session queries, concurrency and safe fallbacks."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

from _pathdata import provider, write_scenario
from sessiontrace import semconv
from sessiontrace.context import new_session_id
from sessiontrace.store import (
    SCHEMA_VERSION,
    SpanStore,
    StoreCorrupt,
    StoreNotFound,
    StoreNotWritable,
    StoreSpanExporter,
    StoreTooNew,
    default_store_path,
    fallback_store_path,
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "spans.sqlite3"


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the fallback location (tempfile.gettempdir()) into this test's directory."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def _spans(count: int, session_id: str | None = None, start: int = 1_000, first: int = 0) -> list[ReadableSpan]:
    """``count`` spans; the ids depend only on ``first`` and the index, so calls can overlap."""
    attributes = {semconv.SESSION_ID: session_id} if session_id else {}
    spans = []
    for i in range(first, first + count):
        ctx = SpanContext(0xABC + i, 0x1 + i, is_remote=False, trace_flags=TraceFlags(1))
        spans.append(
            ReadableSpan("op", context=ctx, attributes=attributes, start_time=start + i,
                         end_time=start + i + 10)
        )  # fmt: skip
    return spans


def _failed(spans: list[ReadableSpan], *indices: int) -> list[ReadableSpan]:
    """``spans`` with those at ``indices`` ended in error; same ids, so a re-export is a duplicate."""
    return [
        ReadableSpan(s.name, context=s.context, attributes=s.attributes, start_time=s.start_time,
                     end_time=s.end_time, status=Status(StatusCode.ERROR, "boom") if i in indices else s.status)
        for i, s in enumerate(spans)
    ]  # fmt: skip


class TestDefaultPath:
    """The store path comes from SESSIONTRACE_STORE, else XDG_DATA_HOME, else ~/.local/share."""

    def test_env_var_wins(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.setenv("SESSIONTRACE_STORE", str(tmp_path / "x.db"))
        assert default_store_path() == tmp_path / "x.db"

    def test_xdg_data_home(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        monkeypatch.delenv("SESSIONTRACE_STORE", raising=False)
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
        assert default_store_path() == tmp_path / "sessiontrace" / "spans.sqlite3"

    def test_home_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("SESSIONTRACE_STORE", raising=False)
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
        expected = Path.home() / ".local" / "share" / "sessiontrace" / "spans.sqlite3"
        assert default_store_path() == expected


class TestRoundTrip:
    """What the SDK recorded is what comes back: attributes, events, links, status, resource."""

    def test_scenario_round_trip(self, store_path: Path) -> None:
        scenario = write_scenario(store_path)
        with SpanStore(store_path, readonly=True) as store:
            spans = {s.name: s for s in store.session_spans(scenario.session_id)}

        root = spans["POST /claims"]
        assert root.kind == "SERVER"
        assert root.parent_span_id is None
        assert root.trace_id == scenario.web_trace_id
        assert root.service_name == "web"
        assert root.resource["service.name"] == "web"
        assert root.scope_name == "tests.web"
        assert root.attributes["claim.ids"] == [1, 2, 3]
        assert root.attributes[semconv.USER_ID] == "alice"
        assert root.session_id == scenario.session_id
        assert root.end_ns is not None
        assert root.end_ns >= root.start_ns

        vendor = spans["vendor lookup"]
        assert vendor.session_id is None
        assert vendor.parent_span_id == spans["validate claim"].span_id
        assert [(e.name, dict(e.attributes)) for e in vendor.events] == [
            ("cache miss", {"cache.key": "vendor:42", "ttl": 30})
        ]
        assert vendor.events[0].time_ns >= vendor.start_ns

        ai = spans["chat gpt-4o"]
        assert (ai.status_code, ai.status_message) == ("ERROR", "model timeout")
        assert ai.events[0].attributes == {"gen_ai.evaluation.score.value": 0.42}

        job = spans["process claim"]
        assert len(job.links) == 1
        assert job.links[0].trace_id == scenario.web_trace_id
        assert job.links[0].span_id == root.span_id
        assert job.links[0].attributes == {"link.reason": "enqueued"}

    def test_odd_attribute_values_never_fail_the_batch(self, store_path: Path) -> None:
        ctx = SpanContext(0x1, 0x2, is_remote=False, trace_flags=TraceFlags(1))

        class Odd:
            def __str__(self) -> str:
                return "odd!"

        span = ReadableSpan(
            "odd",
            context=ctx,
            attributes={
                "bytes.text": b"plain",
                "bytes.binary": b"\xff\x00\x01",
                "tuple": ("a", "b"),
                "object": Odd(),  # type: ignore[dict-item]
                "float": 1.5,
                "bool": True,
            },
            start_time=1,
            end_time=2,
        )
        with SpanStore(store_path) as store:
            store.write([span])
            rows = store.span_count()
        assert rows == 1
        raw = sqlite3.connect(store_path).execute("SELECT attributes FROM spans").fetchone()[0]
        assert '"bytes.text":"plain"' in raw
        assert '"bytes.binary":"base64:/wAB"' in raw
        assert '"tuple":["a","b"]' in raw
        assert '"object":"odd!"' in raw

    def test_same_span_exported_twice_is_stored_once(self, store_path: Path) -> None:
        spans = _spans(3)
        with SpanStore(store_path) as store:
            store.write(spans)
            store.write(spans)
            assert store.span_count() == 3

    def test_schema_version_and_wal(self, store_path: Path) -> None:
        SpanStore(store_path).close()
        conn = sqlite3.connect(store_path)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


class TestSessionQueries:
    """A session's spans come back with the rest of their traces; listings are newest first."""

    def test_session_spans_include_unstamped_spans_of_its_traces(self, store_path: Path) -> None:
        scenario = write_scenario(store_path)
        with SpanStore(store_path, readonly=True) as store:
            spans = store.session_spans(scenario.session_id)
            other = store.session_spans(scenario.other_session_id)
        assert {s.trace_id for s in spans} == {scenario.web_trace_id, scenario.worker_trace_id}
        assert sorted(s.name for s in spans) == sorted(
            ["POST /claims", "validate claim", "vendor lookup", "process claim", "chat gpt-4o",
             "save claim", "late callback"]
        )  # fmt: skip
        assert [s.start_ns for s in spans] == sorted(s.start_ns for s in spans)
        assert [s.name for s in other] == ["GET /health"]

    def test_unknown_session_is_empty(self, store_path: Path) -> None:
        write_scenario(store_path)
        with SpanStore(store_path, readonly=True) as store:
            assert store.session_spans(new_session_id()) == []

    def test_sessions_listing(self, store_path: Path) -> None:
        scenario = write_scenario(store_path)
        with SpanStore(store_path, readonly=True) as store:
            listing = store.sessions()
            assert [s.session_id for s in store.sessions(limit=1)] == [scenario.other_session_id]
        assert [s.session_id for s in listing] == [scenario.other_session_id, scenario.session_id]
        main = listing[1]
        assert main.span_count == 6  # stamped spans only: "vendor lookup" has no session.id
        assert main.error_count == 2
        assert main.user_id == "alice"
        assert main.trigger_source == "api"
        assert main.root_name == "POST /claims"
        assert main.services == ("web", "worker")
        assert main.duration_ns > 0

    def test_summary_merges_batches_out_of_order(self, store_path: Path) -> None:
        sid = new_session_id()
        late, early = _spans(2, sid, start=5_000), _spans(1, sid, start=100)
        late = [
            ReadableSpan("child", context=s.context, parent=early[0].context,
                         attributes=s.attributes, start_time=s.start_time, end_time=s.end_time)
            for s in late
        ]  # fmt: skip
        with SpanStore(store_path) as store:
            store.write(late)
            store.write([ReadableSpan("root", context=SpanContext(7, 7, False), attributes={
                semconv.SESSION_ID: sid}, start_time=100, end_time=200)])  # fmt: skip
            (summary,) = store.sessions()
        assert summary.span_count == 3
        assert summary.first_start_ns == 100
        assert summary.last_end_ns == 5_011
        assert summary.root_name == "root"

    def test_summary_counts_a_batch_exported_twice_once(self, store_path: Path) -> None:
        sid = new_session_id()
        batch = _failed(_spans(4, sid), 1, 3)
        with SpanStore(store_path) as store:
            store.write(batch)
            store.write(batch)  # an exporter retry, or a second exporter on the same file
            (summary,) = store.sessions()
            assert len(store.session_spans(sid)) == 4
        assert (summary.span_count, summary.error_count) == (4, 2)
        assert (summary.first_start_ns, summary.last_end_ns) == (1_000, 1_013)
        assert summary.root_name == "op"

    def test_summary_counts_only_the_new_spans_of_an_overlapping_batch(self, store_path: Path) -> None:
        sid, other, old = new_session_id(), new_session_id(), new_session_id()
        with SpanStore(store_path) as store:
            store.write(_failed(_spans(3, sid), 0) + _spans(2, old, first=100))
            # Spans 0-2 of ``sid`` and both of ``old`` again, then two new spans of each session.
            store.write(
                _failed(_spans(5, sid), 0, 4) + _spans(2, old, first=100) + _failed(_spans(2, other, first=50), 1)
            )
            summaries = {s.session_id: s for s in store.sessions()}
            stored = {s: len(store.session_spans(s)) for s in (sid, other, old)}
        assert stored == {sid: 5, other: 2, old: 2}
        assert {s: (v.span_count, v.error_count) for s, v in summaries.items()} == {
            sid: (5, 2),
            other: (2, 1),
            old: (2, 0),
        }

    def test_summary_counts_a_span_repeated_within_a_batch_once(self, store_path: Path) -> None:
        sid = new_session_id()
        spans = _failed(_spans(2, sid), 0)
        with SpanStore(store_path) as store:
            store.write(spans + spans)
            (summary,) = store.sessions()
        assert (summary.span_count, summary.error_count) == (2, 1)

    def test_no_session_is_listed_for_spans_that_were_not_stored(self, store_path: Path) -> None:
        # The same span ids come back stamped with a session: ignored, so that session has no spans.
        with SpanStore(store_path) as store:
            store.write(_spans(2))
            store.write(_spans(2, new_session_id()))
            assert store.span_count() == 2
            assert store.sessions() == []


class TestConcurrency:
    """Several processes and threads write one file; nothing is lost."""

    def test_two_processes_lose_nothing(self, store_path: Path) -> None:
        shared = new_session_id()
        script = textwrap.dedent(
            """
            import sys
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from sessiontrace.store import StoreSpanExporter

            path, service, shared = sys.argv[1], sys.argv[2], sys.argv[3]
            tp = TracerProvider(resource=Resource.create({"service.name": service}))
            tp.add_span_processor(BatchSpanProcessor(StoreSpanExporter(path),
                                  max_export_batch_size=64, schedule_delay_millis=5))
            tracer = tp.get_tracer("load")
            for i in range(1500):
                with tracer.start_as_current_span(f"{service}-{i}",
                                                  attributes={"session.id": shared}):
                    pass
            tp.shutdown()
            """
        )
        procs = [
            subprocess.Popen([sys.executable, "-c", script, str(store_path), name, shared])
            for name in ("alpha", "beta")
        ]
        assert [p.wait(timeout=90) for p in procs] == [0, 0]
        with SpanStore(store_path, readonly=True) as store:
            assert store.span_count() == 3000
            (summary,) = store.sessions()
            assert len(store.session_spans(shared)) == 3000
        assert summary.span_count == 3000
        assert summary.services == ("alpha", "beta")

    def test_opening_a_new_file_waits_out_another_opener(self, store_path: Path) -> None:
        # A second process setting up the same new file holds its write lock. Switching to WAL
        # then fails at once (SQLite skips the busy handler there), so opening must retry itself.
        other = sqlite3.connect(store_path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
        release.start()
        try:
            with SpanStore(store_path) as store:
                store.write(_spans(3))
                assert store.span_count() == 3
        finally:
            release.join()
            other.close()

    def test_a_store_another_process_creates_while_this_one_looks_is_not_foreign(
        self, store_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The race behind the next test, made deterministic: this opener has read the new file's
        marks (none yet) when another process commits the whole store. What it reads next must
        not show the tables without the marks, as another program's file would look."""
        connect = sqlite3.connect
        created: list[bool] = []

        def create_meanwhile(statement: str) -> None:
            if "sqlite_master" in statement and not created:
                created.append(True)  # before this statement runs: it must see all or nothing of it
                SpanStore(store_path).close()

        def traced_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn = connect(*args, **kwargs)
            if not created:
                conn.set_trace_callback(create_meanwhile)
            return conn

        monkeypatch.setattr(sqlite3, "connect", traced_connect)
        with SpanStore(store_path) as store:
            store.write(_spans(3))
            assert store.span_count() == 3
        assert created

    def test_processes_opening_new_files_together_all_succeed(self, tmp_path: Path) -> None:
        script = textwrap.dedent(
            """
            import sys
            from sessiontrace.store import SpanStore

            for name in sys.argv[1:]:
                SpanStore(name).close()
            """
        )
        paths = [str(tmp_path / f"s{i}.sqlite3") for i in range(15)]
        procs = [
            subprocess.Popen([sys.executable, "-c", script, *paths], stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        errors = [p.communicate(timeout=90)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, errors
        for path in paths:
            with SpanStore(path, readonly=True) as store:
                assert store.span_count() == 0

    def test_threads_share_one_exporter(self, store_path: Path) -> None:
        exporter = StoreSpanExporter(store_path)
        batches = [_spans(50, start=i * 1_000_000) for i in range(8)]
        for i, batch in enumerate(batches):  # distinct ids per thread
            batch[:] = [
                ReadableSpan("t", context=SpanContext(i + 1, j + 1, False), start_time=j,
                             end_time=j + 1)
                for j in range(len(batch))
            ]  # fmt: skip
        results: list[SpanExportResult] = []
        threads = [threading.Thread(target=lambda b=b: results.append(exporter.export(b))) for b in batches]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert exporter.force_flush()
        exporter.shutdown()
        assert results == [SpanExportResult.SUCCESS] * 8
        with SpanStore(store_path, readonly=True) as store:
            assert store.span_count() == 400


class TestBrokenStores:
    """Readers get a StoreError that says what is wrong; the exporter recovers on its own."""

    def test_corrupt_file_is_reported(self, store_path: Path) -> None:
        store_path.write_bytes(b"this is not sqlite at all\n" * 100)
        with pytest.raises(StoreCorrupt, match="not a sessiontrace store") as info:
            SpanStore(store_path)
        assert str(store_path) in str(info.value)

    def test_other_programs_sqlite_file_is_refused(self, store_path: Path) -> None:
        conn = sqlite3.connect(store_path)
        conn.execute("CREATE TABLE invoices (id INTEGER)")
        conn.commit()
        conn.close()
        with pytest.raises(StoreCorrupt, match="not a sessiontrace store"):
            SpanStore(store_path)
        assert sqlite3.connect(store_path).execute("SELECT count(*) FROM invoices").fetchone()

    def test_newer_schema_is_refused(self, store_path: Path) -> None:
        SpanStore(store_path).close()
        conn = sqlite3.connect(store_path)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        with pytest.raises(StoreTooNew, match="schema version 99, newer") as info:
            SpanStore(store_path)
        assert "upgrade sessiontrace" in str(info.value)

    def test_missing_store_for_reader(self, store_path: Path) -> None:
        with pytest.raises(StoreNotFound, match="no store at"):
            SpanStore(store_path, readonly=True)
        assert not store_path.exists()

    def test_exporter_moves_corrupt_file_aside(self, store_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        garbage = b"\x00garbage" * 512
        store_path.write_bytes(garbage)
        tp, _exporter = provider(store_path, "svc")
        tracer = tp.get_tracer("t")
        with caplog.at_level(logging.WARNING, logger="sessiontrace.store"):
            for i in range(3):
                tracer.start_span(f"s{i}").end()
        tp.shutdown()

        (aside,) = store_path.parent.glob("spans.sqlite3.corrupt-*")
        assert aside.read_bytes() == garbage  # kept for forensics
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert str(aside) in warnings[0]
        assert str(store_path) in warnings[0]
        with SpanStore(store_path, readonly=True) as store:
            assert store.span_count() == 3

    def test_exporter_falls_back_when_directory_cannot_exist(
        self, tmp_path: Path, private_tmp: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        # A regular file where the directory should be: unwritable even for root.
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")
        self._assert_falls_back(blocker / "spans.sqlite3", private_tmp, caplog)

    @pytest.mark.parametrize("locked", ["directory", "file"])
    def test_exporter_falls_back_when_read_only(self, locked: str) -> None:
        # Permissions do not stop root, so the writer runs as an unprivileged user when we are root.
        base = Path(tempfile.mkdtemp(prefix="sessiontrace-ro-"))
        try:
            base.chmod(0o755)
            fallback_tmp = base / "tmp"
            fallback_tmp.mkdir(mode=0o777)
            fallback_tmp.chmod(0o777)
            if locked == "directory":
                wanted = base / "locked" / "spans.sqlite3"
                wanted.parent.mkdir()
                wanted.parent.chmod(0o555)
            else:
                wanted = base / "spans.sqlite3"
                SpanStore(wanted).close()
                wanted.chmod(0o444)
            report = _export_unprivileged(wanted, fallback_tmp)
            assert report["results"] == ["SUCCESS", "SUCCESS"]
            assert report["warnings"] == 1
            assert str(wanted.parent if locked == "directory" else wanted) in report["message"]
            assert report["fallback"].startswith(str(fallback_tmp))
            with SpanStore(Path(report["fallback"]), readonly=True) as store:
                assert store.span_count() == 2  # both batches carry the same two span ids
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def test_unwritable_path_is_reported_to_writers(self, tmp_path: Path) -> None:
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")
        with pytest.raises(StoreNotWritable, match="cannot create the store directory"):
            SpanStore(blocker / "spans.sqlite3")

    def test_exporter_gives_up_quietly_on_newer_schema(
        self, store_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        SpanStore(store_path).close()
        conn = sqlite3.connect(store_path)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        exporter = StoreSpanExporter(store_path)
        with caplog.at_level(logging.WARNING, logger="sessiontrace.store"):
            assert exporter.export(_spans(1)) is SpanExportResult.FAILURE
            assert exporter.export(_spans(1)) is SpanExportResult.FAILURE
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "newer" in warnings[0]
        conn = sqlite3.connect(store_path)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 99  # left alone

    def test_exporter_retries_a_store_that_stayed_locked(
        self, store_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("sessiontrace.store._store.BUSY_TIMEOUT_MS", 200)  # not ten seconds
        other = sqlite3.connect(store_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        exporter = StoreSpanExporter(store_path)
        with caplog.at_level(logging.WARNING, logger="sessiontrace.store"):
            assert exporter.export(_spans(1)) is SpanExportResult.FAILURE
            other.execute("COMMIT")
            other.close()
            assert exporter.export(_spans(2, start=50)) is SpanExportResult.SUCCESS
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "will retry" in warning
        assert "stayed locked" in warning
        exporter.shutdown()
        with SpanStore(store_path, readonly=True) as store:
            assert store.span_count() == 2

    def test_exporter_after_shutdown_fails_without_raising(self, store_path: Path) -> None:
        exporter = StoreSpanExporter(store_path)
        assert exporter.export(_spans(1)) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert exporter.export(_spans(1)) is SpanExportResult.FAILURE

    @staticmethod
    def _assert_falls_back(wanted: Path, private_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
        exporter = StoreSpanExporter(wanted)
        with caplog.at_level(logging.WARNING, logger="sessiontrace.store"):
            assert exporter.export(_spans(2)) is SpanExportResult.SUCCESS
            assert exporter.export(_spans(2, start=99)) is SpanExportResult.SUCCESS
        exporter.shutdown()
        fallback = fallback_store_path()
        assert fallback.is_relative_to(private_tmp)
        assert exporter.store_path is None  # closed
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert str(fallback) in warnings[0]
        with SpanStore(fallback, readonly=True) as store:
            assert store.span_count() == 2  # the second batch repeats the same span ids


def _unprivileged_writer(wanted: Path, fallback_tmp: Path, conn: Any) -> None:
    """Runs in a forked child: drop to nobody (when root), export two batches, report back."""
    if IS_ROOT:
        os.setgid(65534)
        os.setuid(65534)
    tempfile.tempdir = str(fallback_tmp)
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("sessiontrace.store").addHandler(handler)
    exporter = StoreSpanExporter(wanted)
    results = [exporter.export(_spans(2, start=1 + batch * 100)).name for batch in range(2)]
    exporter.shutdown()
    conn.send({"results": results, "warnings": len(messages), "message": " ".join(messages),
               "fallback": str(fallback_store_path())})  # fmt: skip


def _export_unprivileged(wanted: Path, fallback_tmp: Path) -> dict[str, Any]:
    """Export to ``wanted`` from a forked child that cannot write it (fork: no exec, so the
    child needs no access to the interpreter's files)."""
    import concurrent.futures.thread  # noqa: F401  # imported lazily below; nobody cannot read our site-packages

    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_unprivileged_writer, args=(wanted, fallback_tmp, sender))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0, f"writer exited with {child.exitcode}"
    report: dict[str, Any] = receiver.recv()
    return report
