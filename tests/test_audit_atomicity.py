"""A change and its audit row live or die together: a writer killed between flush and commit
(SIGKILL, so nothing in the process gets to clean up) leaves neither the business row nor any
audit row, and the chain still verifies and goes on from where it was.

The writer is a child process that makes one audited change, checks inside its own transaction
that both the business row and the audit row were written, prints ``flushed`` and waits; the
parent kills it there. ORM mode on SQLite (a file) and PostgreSQL (a scratch database with the
chain trigger), and trigger mode (raw SQL) on PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, String, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from _audit_db import scratch_postgres
from sessiontrace.audit import Audited, audit_log_table, chain, enable_auditing
from sessiontrace.audit import postgres as audit_postgres

KEY = b"atomicity-test-key"
AUDIT = audit_log_table(MetaData())
CHILD_APP = "st-atomicity-child"
JSON_COLUMNS = ("changed_fields", "previous_values", "new_values")


class Base(DeclarativeBase):
    pass


class AtomicClaim(Audited, Base):
    # Audited mappers are process-wide: a name of its own keeps other modules' exclude/mask rules
    # (which name their own "claim" table) from applying to it.
    __tablename__ = "atomic_claim"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(100))


PLAIN_CLAIMS = "CREATE TABLE plain_claim (id int PRIMARY KEY, title text NOT NULL)"


# --- the child: one audited change, flushed, never committed ------------------------------------------


def child_main(mode: str, url: str) -> None:
    """Run by the child process: write claim 2 and its audit row, report, wait to be killed."""
    engine = create_engine(url)
    if mode == "orm":
        maker = sessionmaker(engine)
        enable_auditing(maker, audit_table=AUDIT, key=KEY)
        orm = maker()
        orm.add(AtomicClaim(id=2, title="lost in flight"))
        orm.flush()  # the INSERT and the audit row are sent; the transaction stays open
        conn = orm.connection()
        table = "atomic_claim"
    else:
        conn = engine.connect()
        conn.begin()
        audit_postgres.set_context(conn)
        conn.execute(text("INSERT INTO plain_claim (id, title) VALUES (2, 'lost in flight')"))
        table = "plain_claim"
    business = conn.execute(text(f"SELECT count(*) FROM {table} WHERE id = 2")).scalar_one()
    audit = conn.execute(
        text("SELECT count(*) FROM audit_log WHERE table_name = :t AND record_id = :r"),
        {"t": table, "r": '{"id":2}'},
    ).scalar_one()
    print(f"flushed business={business} audit={audit}", flush=True)
    sys.stdin.readline()  # until killed
    raise SystemExit("the parent was supposed to kill this writer")


# --- the parent -----------------------------------------------------------------------------------------


@dataclass
class Target:
    backend: str
    mode: str
    url: str
    engine: Engine
    table: str


def kill_after_flush(target: Target) -> str:
    """Start the writer, wait for its report, SIGKILL it; return the report."""
    env = dict(os.environ)
    tests_dir = str(Path(__file__).parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tests_dir, env.get("PYTHONPATH", "")) if p)
    url = target.url
    if target.backend == "postgresql":
        url += f"?application_name={CHILD_APP}"
    code = f"import test_audit_atomicity as t; t.child_main({target.mode!r}, {url!r})"
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        assert child.stdout is not None
        report = child.stdout.readline().decode()
        if not report.startswith("flushed"):
            child.kill()
            _, err = child.communicate(timeout=30)
            pytest.fail(f"the writer did not get to its flush: {report!r}\n{err.decode()}")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    if target.backend == "postgresql":
        wait_for_backend_exit(target.engine)
    return report.strip()


def wait_for_backend_exit(engine: Engine, timeout: float = 30.0) -> None:
    """The server rolls the dead client's transaction back when it sees the socket close."""
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while True:
            alive = conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :a"), {"a": CHILD_APP}
            ).scalar_one()
            conn.rollback()
            if alive == 0:
                return
            assert time.monotonic() < deadline, "the killed writer's backend is still there"
            time.sleep(0.05)


def verify_chain(target: Target) -> int:
    """The whole chain verifies; returns its length. Uses ``sessiontrace.audit.verify`` when it is
    there, and recomputes every link with ``chain.py`` in any case."""
    try:
        from sessiontrace.audit.verify import verify
    except ImportError:
        pass
    else:
        report = verify(target.engine, key=KEY)
        assert report.ok, report.summary()
    if target.backend == "postgresql":
        columns = ", ".join(f"{c}::text AS {c}" if c in JSON_COLUMNS else c for c in chain.LINE_FIELDS)
    else:
        columns = ", ".join(chain.LINE_FIELDS)
    with target.engine.connect() as conn:
        rows = [
            dict(r)
            for r in conn.execute(text(f"SELECT {columns}, prev_hash, row_hash FROM audit_log ORDER BY seq")).mappings()
        ]
    previous = chain.GENESIS
    for expected, row in enumerate(rows, start=1):
        assert row["seq"] == expected, f"seq gap at {expected}"
        assert row["prev_hash"] == previous, f"fork at seq {expected}"
        if target.backend == "postgresql":
            assert row["row_hash"] == chain.link(previous, chain.line(row), KEY), f"hash differs at seq {expected}"
        previous = row["row_hash"]
    return len(rows)


def committed_change(target: Target, claim_id: int) -> None:
    """An audited change that commits, through the same path as the child's."""
    if target.mode == "orm":
        maker = sessionmaker(target.engine)
        enable_auditing(maker, audit_table=AUDIT, key=KEY)
        with maker.begin() as orm:
            orm.add(AtomicClaim(id=claim_id, title=f"claim {claim_id}"))
    else:
        with target.engine.begin() as conn:
            conn.execute(text("INSERT INTO plain_claim (id, title) VALUES (:i, :t)"), {"i": claim_id, "t": "claim"})


def counts(target: Target) -> tuple[int, int, int]:
    """(business rows with id 2, audit rows of record 2, all audit rows)."""
    with target.engine.connect() as conn:
        business = conn.execute(text(f"SELECT count(*) FROM {target.table} WHERE id = 2")).scalar_one()
        audit = conn.execute(
            text("SELECT count(*) FROM audit_log WHERE table_name = :t AND record_id = :r"),
            {"t": target.table, "r": '{"id":2}'},
        ).scalar_one()
        total = conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one()
    return business, audit, total


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with scratch_postgres("atomic") as url:
        yield url


@pytest.fixture(params=[("sqlite", "orm"), ("postgresql", "orm"), ("postgresql", "trigger")], ids=lambda p: "-".join(p))
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    backend, mode = request.param
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
        engine = create_engine(url)
        AUDIT.create(engine)
    else:
        url = request.getfixturevalue("postgres_url")
        engine = create_engine(url)
        with engine.begin() as conn:  # each case starts from an empty database
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        audit_postgres.install(engine, key=KEY)
    Base.metadata.create_all(engine)
    table = "atomic_claim"
    if mode == "trigger":
        with engine.begin() as conn:
            conn.execute(text(PLAIN_CLAIMS))
        audit_postgres.audit_tables(engine, ["plain_claim"])
        table = "plain_claim"
    yield Target(backend, mode, url, engine, table)
    engine.dispose()


def test_a_writer_killed_between_flush_and_commit_leaves_neither(target: Target) -> None:
    committed_change(target, 1)  # the chain has a head before the lost change
    assert counts(target) == (0, 0, 1)

    report = kill_after_flush(target)

    assert report == "flushed business=1 audit=1"  # both were written, inside the open transaction
    assert counts(target) == (0, 0, 1)  # and neither survived the writer
    assert verify_chain(target) == 1
    committed_change(target, 3)  # the lock died with the writer; the chain goes on without a gap
    assert counts(target) == (0, 0, 2)
    assert verify_chain(target) == 2
