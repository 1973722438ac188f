"""Inside one process the session follows the work wherever it runs: asyncio tasks, threads,
thread pools, nested scopes and decorated functions; ``session()`` rejects malformed values."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from _servers import APP_LOGGER, RecordingHandler
from sessiontrace import semconv
from sessiontrace.context import current_session, new_session_id, session
from sessiontrace.testing import CapturedSpans, assert_session_on_every_span

tracer = trace.get_tracer("sessiontrace_tests.inprocess")
log = logging.getLogger(APP_LOGGER)


def work(name: str) -> str | None:
    """A unit of work: a span, a log line, and what session it saw."""
    with tracer.start_as_current_span(name):
        log.info("work %s", name)
        current = current_session()
        return current.id if current else None


async def async_work(name: str) -> str | None:
    await asyncio.sleep(0)
    return work(name)


def session_ids(captured: CapturedSpans, prefix: str) -> set[Any]:
    return {(span.attributes or {}).get(semconv.SESSION_ID) for span in captured.spans if span.name.startswith(prefix)}


class TestAsyncio:
    """Tasks created inside a session, by any API, run in it and stamp their spans."""

    def test_create_task_gather_and_task_group(self, capsession: CapturedSpans, app_logs: RecordingHandler) -> None:
        async def main() -> tuple[str, list[str | None]]:
            async with session(trigger_source="system") as current:
                seen = [await asyncio.create_task(async_work("task create_task"))]
                seen += await asyncio.gather(*(async_work(f"task gather {i}") for i in range(3)))
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(async_work(f"task group {i}")) for i in range(3)]
                seen += [task.result() for task in tasks]
            return current.id, seen

        sid, seen = asyncio.run(main())
        assert seen == [sid] * 7
        tasks = [span for span in capsession.spans if span.name.startswith("task ")]
        assert len(tasks) == 7
        assert_session_on_every_span(tasks, sid)
        records = [r for r in app_logs.records if r.getMessage().startswith("work task")]
        assert [r.__dict__.get("session.id") for r in records] == [sid] * 7

    def test_concurrent_sessions_do_not_mix(self, capsession: CapturedSpans) -> None:
        async def one(index: int) -> tuple[str, list[str | None]]:
            async with session() as current:
                seen = []
                for step in range(5):
                    await asyncio.sleep(0.001 * ((index + step) % 3))
                    seen.append(work(f"mix {index}.{step}"))
                return current.id, seen

        async def main() -> list[tuple[str, list[str | None]]]:
            return await asyncio.gather(*(one(i) for i in range(10)))

        results = asyncio.run(main())
        assert len({sid for sid, _ in results}) == 10
        for sid, seen in results:
            assert seen == [sid] * 5


class TestThreads:
    """A thread or pool task started inside a session runs in it; its spans and logs carry the id;
    a pool worker does not keep it for work submitted later, outside the session."""

    def test_thread(self, capsession: CapturedSpans, app_logs: RecordingHandler) -> None:
        seen: list[str | None] = []
        with session() as current:
            thread = threading.Thread(target=lambda: seen.append(work("thread work")))
            thread.start()
            thread.join()
        assert seen == [current.id]
        assert_session_on_every_span(capsession.named("thread work"), current.id)
        (record,) = app_logs.messages("work thread work")
        assert record.__dict__["session.id"] == current.id
        assert record.thread != threading.get_ident()

    def test_thread_pool_submit_and_map(self, capsession: CapturedSpans, app_logs: RecordingHandler) -> None:
        with ThreadPoolExecutor(max_workers=2) as pool:
            with session() as current:
                submitted = [pool.submit(work, f"pool submit {i}") for i in range(4)]
                mapped = list(pool.map(work, [f"pool map {i}" for i in range(4)]))
            assert [future.result() for future in submitted] == [current.id] * 4
            assert mapped == [current.id] * 4
            # The same worker threads, after the session ended: no leftover session.
            assert pool.submit(work, "pool after").result() is None
            assert list(pool.map(work, ["pool after map"])) == [None]

        assert_session_on_every_span([s for s in capsession.spans if s.name.startswith("pool ")][:8], current.id)
        assert session_ids(capsession, "pool after") == {None}
        records = [r for r in app_logs.records if r.getMessage().startswith("work pool submit")]
        assert len(records) == 4
        assert {r.__dict__.get("session.id") for r in records} == {current.id}
        assert {r.thread for r in records} != {threading.get_ident()}

    def test_no_session_outside(self, capsession: CapturedSpans) -> None:
        assert current_session() is None
        with session():
            pass
        assert current_session() is None
        assert work("after all") is None


class TestNesting:
    """An inner ``session()`` is a new session with its own id; leaving it makes the outer
    current again, and spans stamp whichever is innermost."""

    def test_nested_sessions(self, capsession: CapturedSpans) -> None:
        with session(user_id="alice") as outer:
            before = work("outer before")
            with session(trigger_source="system") as inner:
                during = work("inner")
                assert current_session() is inner
            after = work("outer after")
            assert current_session() is outer

        assert inner.id != outer.id
        assert (before, during, after) == (outer.id, inner.id, outer.id)
        (inner_span,) = capsession.named("inner")
        # The inner session does not inherit the outer user: a user change is a new session.
        assert (inner_span.attributes or {}).get(semconv.USER_ID) is None
        assert (capsession.named("outer after")[0].attributes or {}).get(semconv.USER_ID) == "alice"


class TestDecorator:
    """``@session(...)`` makes every call its own session, for sync and async functions."""

    def test_sync_function(self, capsession: CapturedSpans) -> None:
        @session(trigger_source="schedule", trigger_type="nightly")
        def job() -> str | None:
            current = current_session()
            assert current is not None
            assert current.trigger_type == "nightly"
            return work("job")

        first, second = job(), job()
        assert first
        assert second
        assert first != second
        assert uuid.UUID(first).version == 7
        assert session_ids(capsession, "job") == {first, second}
        assert current_session() is None

    def test_async_function(self, capsession: CapturedSpans) -> None:
        @session(trigger_source="queue")
        async def handler(name: str) -> str | None:
            return await async_work(name)

        async def main() -> list[str | None]:
            return await asyncio.gather(handler("async job 1"), handler("async job 2"), handler("async job 3"))

        ids = asyncio.run(main())
        assert len(set(ids)) == 3
        assert None not in ids
        sessions = capsession.named("session")
        assert len(sessions) == 3
        assert {(span.attributes or {}).get(semconv.TRIGGER_SOURCE) for span in sessions} == {"queue"}


class TestSessionSpan:
    """The ``session`` span: ``session.start`` / ``session.end`` events when the id is minted, none
    when an existing id is continued; an exception marks it ERROR and still propagates."""

    def test_minted_session_records_start_and_end(self, capsession: CapturedSpans) -> None:
        with session(user_id="alice") as current:
            pass
        (span,) = capsession.named("session")
        assert [event.name for event in span.events] == [semconv.SESSION_START_EVENT, semconv.SESSION_END_EVENT]
        assert dict(span.events[0].attributes or {})[semconv.SESSION_ID] == current.id
        assert dict(span.events[0].attributes or {})[semconv.USER_ID] == "alice"
        assert (span.attributes or {})[semconv.SESSION_ID] == current.id

    def test_continued_session_records_no_start(self, capsession: CapturedSpans) -> None:
        given = new_session_id()
        with session(id=given) as current:
            assert work("continued") == given
        assert current.id == given
        (span,) = capsession.named("session")
        assert (span.attributes or {})[semconv.SESSION_ID] == given
        assert [event.name for event in span.events] == []

    def test_continued_id_is_canonicalised(self, capsession: CapturedSpans) -> None:
        given = new_session_id()
        with session(id=given.upper()) as current:
            pass
        assert current.id == given

    def test_exception_marks_the_session_span_and_propagates(self, capsession: CapturedSpans) -> None:
        with pytest.raises(KeyError, match="missing"), session():
            raise KeyError("missing")
        (span,) = capsession.named("session")
        assert span.status.status_code == StatusCode.ERROR
        assert "KeyError" in (span.status.description or "")
        assert [event.name for event in span.events] == [
            semconv.SESSION_START_EVENT,
            "exception",
            semconv.SESSION_END_EVENT,
        ]
        assert current_session() is None

    def test_scope_cannot_be_entered_twice(self, capsession: CapturedSpans) -> None:
        scope = session()
        with scope, pytest.raises(RuntimeError, match="entered twice"), scope:
            pass


class TestValidation:
    """Malformed arguments fail where they are written, with a ``ValueError`` naming the field."""

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"id": "not-a-uuid"}, "session id"),
            ({"id": "0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b\n"}, "session id"),
            ({"previous_id": "12345"}, "previous id"),
            ({"user_id": "alice\nINFO forged log line"}, "user id"),
            ({"user_id": ""}, "user id"),
            ({"user_id": "x" * 257}, "user id"),
            ({"trigger_source": "carrier-pigeon"}, "trigger source"),
            ({"trigger_type": "nightly\r"}, "trigger type"),
            ({"roles": [f"role{i}" for i in range(33)]}, "roles"),
            ({"roles": ["admin, root"]}, "role"),
            ({"roles": ["ok", "not ok"]}, "role"),
        ],
    )
    def test_bad_argument_names_the_field(self, kwargs: dict[str, Any], field: str) -> None:
        with pytest.raises(ValueError, match=field):
            session(**kwargs)
        assert current_session() is None

    def test_limits_are_inclusive(self) -> None:
        with session(user_id="x" * 256, roles=[f"role{i}" for i in range(32)]) as current:
            assert len(current.roles) == 32
