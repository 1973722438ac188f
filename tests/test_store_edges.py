"""The exporter at the edges: files that are not ours, text SQLite cannot hold, fork(), a store
removed or corrupt under running processes, a full disk, a relative store path."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

from sessiontrace import semconv
from sessiontrace.store import SpanStore, StoreCorrupt, StoreSpanExporter

SID = "0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b"
# What os.listdir returns for a latin-1 file name on a UTF-8 system.
SURROGATE_NAME = os.fsdecode(b"report-\xff.csv")


def _spans(count: int, first: int = 0, name: str = "op", payload: str = "") -> list[ReadableSpan]:
    spans = []
    for i in range(first, first + count):
        ctx = SpanContext(0xABC + i, 0x1 + i, is_remote=False, trace_flags=TraceFlags(1))
        attributes = {semconv.SESSION_ID: SID, "payload": payload} if payload else {semconv.SESSION_ID: SID}
        spans.append(ReadableSpan(name, context=ctx, attributes=attributes, start_time=1_000 + i, end_time=2_000 + i))
    return spans


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


class TestForeignDatabase:
    def test_exporter_leaves_another_programs_database_untouched(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        app_db = tmp_path / "app.sqlite3"
        conn = sqlite3.connect(app_db)
        conn.execute("CREATE TABLE invoices (id INTEGER)")
        conn.execute("INSERT INTO invoices VALUES (42)")
        conn.commit()
        conn.close()
        before = app_db.read_bytes()

        exporter = StoreSpanExporter(app_db)
        with caplog.at_level(logging.WARNING, logger="sessiontrace.store"):
            assert exporter.export(_spans(1)) is SpanExportResult.FAILURE
            assert exporter.export(_spans(1)) is SpanExportResult.FAILURE
        exporter.shutdown()

        assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite3"]  # nothing moved aside
        assert app_db.read_bytes() == before
        (warning,) = _warnings(caplog)
        assert "another program's SQLite database" in warning
        assert "export disabled" in warning

    def test_marked_by_another_application_is_foreign(self, tmp_path: Path) -> None:
        from sessiontrace.store import StoreForeign

        other = tmp_path / "other.sqlite3"
        conn = sqlite3.connect(other)
        conn.execute("PRAGMA application_id = 1234")
        conn.close()
        with pytest.raises(StoreForeign):
            SpanStore(other)


class TestUnencodableText:
    def test_lone_surrogates_do_not_lose_the_batch(self, tmp_path: Path) -> None:
        store_path = tmp_path / "spans.sqlite3"
        ctx = SpanContext(0xFEED, 0xBEEF, is_remote=False, trace_flags=TraceFlags(1))
        bad = ReadableSpan(
            f"read {SURROGATE_NAME}",
            context=ctx,
            attributes={semconv.SESSION_ID: SID, "file.path": SURROGATE_NAME, SURROGATE_NAME: 1},
            events=[Event("opened", {"name": SURROGATE_NAME}, timestamp=1_500)],
            status=Status(StatusCode.ERROR, f"no such file {SURROGATE_NAME}"),
            resource=Resource({"service.name": f"svc-{SURROGATE_NAME}"}),
            start_time=1_000,
            end_time=2_000,
        )
        exporter = StoreSpanExporter(store_path)
        assert exporter.export([*_spans(50), bad, *_spans(50, first=50)]) is SpanExportResult.SUCCESS
        exporter.shutdown()

        with SpanStore(store_path, readonly=True) as store:
            assert store.span_count() == 101
            (span,) = [s for s in store.session_spans(SID) if s.span_id == f"{0xBEEF:016x}"]
            (session,) = store.sessions()
        shown = "report-\\xff.csv"  # the undecodable byte, visible
        assert span.name == f"read {shown}"
        assert span.attributes["file.path"] == shown
        assert span.attributes[shown] == 1
        assert span.events[0].attributes == {"name": shown}
        assert span.status_message == f"no such file {shown}"
        assert span.service_name == f"svc-{shown}"
        assert session.span_count == 101
        # Every stored JSON column is still strict JSON.
        conn = sqlite3.connect(store_path)
        for (text,) in conn.execute("SELECT attributes FROM spans UNION ALL SELECT attributes FROM resources"):
            json.loads(text)


class TestSessionIdsNoCommandCanOpen:
    """Other instrumentation sets ``session.id`` to anything. A value ``sessiontrace path`` refuses
    (over 256 characters, control characters) names no session: its span is kept, under none, and
    ``sessions`` never lists an id that cannot be opened."""

    @pytest.mark.parametrize("session_id", ["s" * 257, "abc\x1b[2J", "", "\u0130" * 200])  # İ: 2 chars lowered
    def test_the_span_is_stored_under_no_session(self, tmp_path: Path, session_id: str) -> None:
        store_path = tmp_path / "spans.sqlite3"
        ctx = SpanContext(0xFACE, 0xF00D, is_remote=False, trace_flags=TraceFlags(1))
        odd = ReadableSpan("odd", context=ctx, attributes={semconv.SESSION_ID: session_id}, start_time=1, end_time=2)
        exporter = StoreSpanExporter(store_path)
        assert exporter.export([odd, *_spans(2)]) is SpanExportResult.SUCCESS
        exporter.shutdown()

        with SpanStore(store_path, readonly=True) as store:
            assert store.span_count() == 3
            assert [session.session_id for session in store.sessions()] == [SID]

    def test_a_store_written_before_the_check_does_not_list_them(self, tmp_path: Path) -> None:
        store_path = tmp_path / "spans.sqlite3"
        exporter = StoreSpanExporter(store_path)
        assert exporter.export(_spans(1)) is SpanExportResult.SUCCESS
        exporter.shutdown()
        conn = sqlite3.connect(store_path)
        with conn:  # as an older version wrote them, newer than the good one
            row = conn.execute("SELECT * FROM sessions").fetchone()
            for index, bad in enumerate(("s" * 300, "abc\x1b[2J"), start=1):
                newer = {"last_end_ns": row[2] + index}
                conn.execute(
                    f"INSERT INTO sessions VALUES ({', '.join('?' * len(row))})",
                    (bad, row[1], *newer.values(), *row[3:]),
                )
        conn.close()

        with SpanStore(store_path, readonly=True) as store:
            assert [session.session_id for session in store.sessions()] == [SID]
            # left out before the limit: the newest openable sessions still fill it
            assert [session.session_id for session in store.sessions(limit=1)] == [SID]

    def test_the_longest_id_path_opens_is_listed(self, tmp_path: Path) -> None:
        store_path = tmp_path / "spans.sqlite3"
        longest = "s" * 256
        ctx = SpanContext(0xFACE, 0xF00D, is_remote=False, trace_flags=TraceFlags(1))
        span = ReadableSpan("long", context=ctx, attributes={semconv.SESSION_ID: longest}, start_time=1, end_time=2)
        exporter = StoreSpanExporter(store_path)
        assert exporter.export([span]) is SpanExportResult.SUCCESS
        exporter.shutdown()

        with SpanStore(store_path, readonly=True) as store:
            assert [session.session_id for session in store.sessions()] == [longest]
            assert [s.name for s in store.session_spans(longest)] == ["long"]


# -- fork -------------------------------------------------------------------------------------
def _child_export(exporter: StoreSpanExporter, first: int) -> None:
    # A deadlocked child dies of SIGALRM instead of hanging the run (default action: a plugin's
    # handler would let the child go on running pytest).
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(60)
    result = exporter.export(_spans(2, first=first, name="child"))
    exporter.shutdown()
    os._exit(0 if result is SpanExportResult.SUCCESS else 3)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_forked_children_export_while_the_parent_thread_exports(tmp_path: Path) -> None:
    """Pre-fork servers: children forked while the parent's export thread is inside export()."""
    store_path = tmp_path / "spans.sqlite3"
    exporter = StoreSpanExporter(store_path)
    big = _spans(2000, first=100_000, payload="x" * 200)
    stop = threading.Event()

    def parent_exports() -> None:  # like BatchSpanProcessor's worker thread
        while not stop.is_set():
            exporter.export(big)

    worker = threading.Thread(target=parent_exports)
    worker.start()
    statuses = []
    try:
        assert exporter.export(_spans(1, first=50_000)) is SpanExportResult.SUCCESS  # opened in the parent
        for k in range(5):
            pid = os.fork()
            if pid == 0:
                _child_export(exporter, first=1_000 * (k + 1))
            statuses.append(os.waitpid(pid, 0)[1])
    finally:
        stop.set()
        worker.join()
    assert [os.waitstatus_to_exitcode(s) for s in statuses] == [0] * 5
    exporter.shutdown()
    with SpanStore(store_path, readonly=True) as store:
        children = [s for s in store.session_spans(SID) if s.name == "child"]
    assert len(children) == 10


# -- the store file changes under a running exporter -----------------------------------------
def test_removed_store_is_recreated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store_path = tmp_path / "spans.sqlite3"
    exporter = StoreSpanExporter(store_path)
    assert exporter.export(_spans(1)) is SpanExportResult.SUCCESS
    for file in tmp_path.iterdir():  # rm spans.sqlite3*
        file.unlink()
    with caplog.at_level(logging.WARNING, logger="sessiontrace.store"):
        assert exporter.export(_spans(2, first=10)) is SpanExportResult.SUCCESS
        assert exporter.export(_spans(2, first=20)) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert store_path.exists()
    with SpanStore(store_path, readonly=True) as store:
        assert store.span_count() == 4
    (warning,) = _warnings(caplog)
    assert "removed or replaced" in warning


def _race_worker(path: Path, barrier: Any, index: int, results: Any) -> None:
    spans = _spans(20, first=index * 100)
    exporter = StoreSpanExporter(path)
    barrier.wait()
    outcome = [exporter.export(spans[:10]).name, exporter.export(spans[10:]).name]
    exporter.shutdown()
    results.put(outcome)


def test_a_store_replaced_meanwhile_is_used_not_moved_aside(tmp_path: Path) -> None:
    """The losing side of the race, made deterministic: this exporter saw the file corrupt, then
    another process moved it aside and started a fresh store before this one got the lock."""
    path = tmp_path / "spans.sqlite3"
    garbage = b"\x00garbage" * 4096
    path.write_bytes(garbage)
    with pytest.raises(StoreCorrupt) as seen:
        SpanStore(path)
    first = StoreSpanExporter(path)
    assert first.export(_spans(1)) is SpanExportResult.SUCCESS  # moved it aside, fresh store
    late = StoreSpanExporter(path)
    store = late._replace_corrupt(path, seen.value)
    assert store is not None
    store.close()
    assert first.export(_spans(1, first=1)) is SpanExportResult.SUCCESS
    first.shutdown()
    with SpanStore(path, readonly=True) as reader:
        assert reader.span_count() == 2
    (aside,) = [p for p in tmp_path.glob("spans.sqlite3.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert aside.read_bytes() == garbage


def test_processes_starting_on_a_corrupt_store_move_it_aside_once(tmp_path: Path) -> None:
    path = tmp_path / "spans.sqlite3"
    garbage = b"\x00garbage" * 4096
    path.write_bytes(garbage)
    context = multiprocessing.get_context("fork")
    workers = 8
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_race_worker, args=(path, barrier, i, results)) for i in range(workers)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join()

    succeeded = sum(outcome.count("SUCCESS") for outcome in outcomes) * 10
    with SpanStore(path, readonly=True) as store:
        assert store.span_count() == succeeded == workers * 20
    asides = [p for p in tmp_path.glob("spans.sqlite3.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(asides) == 1
    assert asides[0].read_bytes() == garbage  # the forensic copy


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_full_disk_at_the_first_export_is_retried(tmp_path: Path) -> None:
    """A file size limit makes every write fail like a full disk, in a real child process."""
    script = textwrap.dedent(
        """
        import io, json, logging, resource, signal, sys
        from opentelemetry.sdk.trace import TracerProvider
        from sessiontrace.store import StoreSpanExporter
        log = io.StringIO()
        logging.basicConfig(level=logging.WARNING, stream=log)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        tracer = TracerProvider().get_tracer("t")
        def batch(name):
            span = tracer.start_span(name)
            span.end()
            return [span]
        exporter = StoreSpanExporter(sys.argv[1])
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))  # nothing can be written
        results = [exporter.export(batch("full")).name, exporter.export(batch("still full")).name]
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space freed
        results += [exporter.export(batch("freed")).name]
        exporter.shutdown()
        print(json.dumps({"results": results, "log": log.getvalue()}))
        """
    )
    store_path = tmp_path / "spans.sqlite3"
    done = subprocess.run([sys.executable, "-c", script, str(store_path)], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    assert report["results"] == ["FAILURE", "FAILURE", "SUCCESS"]
    assert report["log"].count("WARNING") == 1
    assert "will retry" in report["log"]
    with SpanStore(store_path, readonly=True) as store:
        assert store.span_count() == 1


def test_relative_store_path_is_fixed_when_the_exporter_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, elsewhere = tmp_path / "app", tmp_path / "elsewhere"
    app.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(app)
    monkeypatch.setenv("SESSIONTRACE_STORE", "spans.sqlite3")
    exporter = StoreSpanExporter()
    explicit = StoreSpanExporter("explicit.sqlite3")
    monkeypatch.chdir(elsewhere)  # a daemon's chdir, a job runner's working directory
    assert exporter.export(_spans(1)) is SpanExportResult.SUCCESS
    assert explicit.export(_spans(1)) is SpanExportResult.SUCCESS
    exporter.shutdown()
    explicit.shutdown()
    assert exporter.path == app / "spans.sqlite3"
    assert sorted(p.name for p in app.iterdir() if p.suffix == ".sqlite3") == ["explicit.sqlite3", "spans.sqlite3"]
    assert list(elsewhere.iterdir()) == []


# --- a store on read-only media (an evidence copy, a read-only mount) ---------------------------------


def _read_on_read_only_media(directory: Path, store: Path) -> subprocess.CompletedProcess[str]:
    """``SpanStore(store, readonly=True)`` in a child that sees ``directory`` read-only: a read-only
    bind mount of its own (root writes anywhere), or the directory's write bit removed."""
    code = textwrap.dedent(
        f"""
        from sessiontrace.store import SpanStore, StoreError
        try:
            with SpanStore({str(store)!r}, readonly=True) as store:
                print(len(store.session_spans({SID!r})))
        except StoreError as error:
            print(f"StoreError: {{error}}")
        """
    )
    if os.geteuid() == 0:
        mount = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && exec "$2" -c "$3"'
        child = subprocess.run(
            ["unshare", "--mount", "sh", "-c", mount, "sh", str(directory), sys.executable, code],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Read-only file system" not in child.stderr, child.stderr
        return child
    directory.chmod(0o555)
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    finally:
        directory.chmod(0o755)


class TestReadOnlyMedia:
    def test_a_closed_store_is_read_where_nothing_may_be_written(self, tmp_path: Path) -> None:
        evidence = tmp_path / "evidence"
        evidence.mkdir()
        with SpanStore(evidence / "spans.sqlite3") as store:
            store.write(_spans(3))
        assert sorted(p.name for p in evidence.iterdir()) == ["spans.sqlite3"]  # the WAL merged on close

        child = _read_on_read_only_media(evidence, evidence / "spans.sqlite3")
        assert (child.returncode, child.stdout.strip()) == (0, "3"), child.stderr
        assert sorted(p.name for p in evidence.iterdir()) == ["spans.sqlite3"]

    def test_unmerged_spans_in_the_write_ahead_log_are_not_silently_left_out(self, tmp_path: Path) -> None:
        live, evidence = tmp_path / "live", tmp_path / "evidence"
        live.mkdir()
        evidence.mkdir()
        writer = SpanStore(live / "spans.sqlite3")
        try:
            writer.write(_spans(3))  # still open: the spans are in spans.sqlite3-wal
            for name in ("spans.sqlite3", "spans.sqlite3-wal"):  # copied while the writer runs
                (evidence / name).write_bytes((live / name).read_bytes())
        finally:
            writer.close()
        assert (evidence / "spans.sqlite3-wal").stat().st_size > 0

        child = _read_on_read_only_media(evidence, evidence / "spans.sqlite3")
        assert child.returncode == 0, child.stderr
        assert child.stdout.startswith("StoreError: "), child.stdout
        assert "write-ahead log spans.sqlite3-wal holds spans not yet merged" in child.stdout
        assert "copy both files to a writable directory" in child.stdout
