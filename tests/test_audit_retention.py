"""Retention on real PostgreSQL: dropping a partitioned log's old months keeps ``verify`` exact.

The retirement is signed before anything is dropped; ``verify(..., checkpoints=...)`` resumes the
chain after it, while a month dropped by hand (or a retirement verified without its checkpoints)
is still a seq gap. Appends wait while a retirement counts its rows, the newest row never goes, and
rows verify would not reach from the retirement (below seq 1, below the retirement) are reported,
never skipped (on SQLite too, for rows below seq 1).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, MetaData, create_engine, text

from sessiontrace.audit import audit_log_table
from sessiontrace.audit.checkpoint import load_checkpoints, write_checkpoint
from sessiontrace.audit.postgres import AuditSetupError, install
from sessiontrace.audit.retention import RetentionError, Retirement, retire_partitions
from sessiontrace.audit.verify import (
    CHECKPOINT_MISMATCH,
    HASH_MISMATCH,
    SEQ_GAP,
    SEQ_OUT_OF_RANGE,
    verify,
)
from sessiontrace.audit.writer import Change, write_changes
from sessiontrace.cli import main
from test_audit_postgres import KEY, SERVER, orm_insert

SIGNING_KEY = b"retention-checkpoint-key"
THIS_MONTH = datetime.now(timezone.utc).date().replace(day=1)


def months_ago(count: int) -> date:
    index = THIS_MONTH.year * 12 + THIS_MONTH.month - 1 - count
    return date(index // 12, index % 12 + 1, 1)


def at(month: date, day: int = 4) -> datetime:
    return datetime.combine(month, datetime.min.time(), timezone.utc) + timedelta(days=day - 1)


@contextmanager
def partitioned_log(*, this_month_row: bool) -> Iterator[Engine]:
    """A database of its own with a partitioned log holding three past months and this one:
    seq 1-2 in the oldest month, 3-4 in the next, 5 in the last past month, and 6 now when
    ``this_month_row``."""
    name = f"st_ret_{secrets.token_hex(5)}"
    admin = create_engine(f"{SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    eng = create_engine(f"{SERVER}/{name}")
    try:
        install(eng, key=KEY, partition_by_month=True)
        with eng.begin() as conn:
            for back in (3, 2, 1):
                start, end = months_ago(back), months_ago(back - 1)
                conn.execute(
                    text(
                        f"CREATE TABLE audit_log_p{start:%Y%m} PARTITION OF audit_log"
                        f" FOR VALUES FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')"
                    )
                )
            for back in (3, 3, 2, 2, 1):
                orm_insert(conn, "audit_log", ts=at(months_ago(back)))
            if this_month_row:
                orm_insert(conn, "audit_log")
        yield eng
    finally:
        eng.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture
def engine() -> Iterator[Engine]:
    """Seq 1-5 in the three past months, seq 6 (the newest) in this one."""
    with partitioned_log(this_month_row=True) as eng:
        yield eng


@pytest.fixture
def past_only() -> Iterator[Engine]:
    """Seq 1-5 in the three past months and nothing yet this month: seq 5, last month, is the newest."""
    with partitioned_log(this_month_row=False) as eng:
        yield eng


def seqs(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT seq FROM audit_log ORDER BY seq")).scalars())


def superuser(engine: Engine, *statements: str) -> None:
    """Tampering as the database superuser, around every trigger (the chain's too)."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            conn.exec_driver_sql(statement)


def copy_row(seq: int, new_seq: int) -> str:
    """A statement adding a copy of row ``seq`` (hash and link included) as ``new_seq``."""
    columns = (
        "table_name, record_id, change_type, changed_fields, previous_values, new_values, session_id,"
        " changed_by_user_id, change_timestamp, trace_id, span_id, transaction_id, db_user, source, prev_hash, row_hash"
    )
    return f"INSERT INTO audit_log (seq, {columns}) SELECT {new_seq}, {columns} FROM audit_log WHERE seq = {seq}"


def partitions(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(
            conn.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = 'audit_log'::regclass"
                )
            ).scalars()
        )


class TestRetirePartitions:
    def test_retired_months_are_signed_dropped_and_verify_resumes(self, engine: Engine, tmp_path: Path) -> None:
        write_checkpoint(engine, tmp_path, signing_key=SIGNING_KEY)  # an earlier checkpoint, at seq 6
        retirement = retire_partitions(engine, months_ago(1), tmp_path, signing_key=SIGNING_KEY)
        gone = [f"audit_log_p{months_ago(3):%Y%m}", f"audit_log_p{months_ago(2):%Y%m}"]
        assert retirement.partitions == tuple(gone)
        assert retirement.retired_through == 4
        assert not set(gone) & set(partitions(engine))
        newest = load_checkpoints(tmp_path, SIGNING_KEY, table="public.audit_log")[-1]
        assert retirement.checkpoint is not None
        assert newest.name == retirement.checkpoint.name
        assert newest.retired is not None
        assert newest.retired[0] == 4

        report = verify(engine, key=KEY, checkpoints=tmp_path, checkpoint_key=SIGNING_KEY)
        assert report.ok, report.summary()
        assert (report.first_seq, report.last_seq, report.retired_through) == (5, 6, 4)
        assert "rows up to seq 4 retired" in report.summary()
        # Without the signed record, the missing rows are what they look like: a deletion.
        bare = verify(engine, key=KEY)
        assert bare.broken is not None
        assert bare.broken.reason == SEQ_GAP
        # Checkpoints still go on after a retirement (their anchor is the retirement).
        write_checkpoint(engine, tmp_path, signing_key=SIGNING_KEY)
        assert verify(engine, key=KEY, checkpoints=tmp_path, checkpoint_key=SIGNING_KEY).ok

    def test_a_month_dropped_by_hand_after_a_retirement_is_a_gap(self, engine: Engine, tmp_path: Path) -> None:
        retire_partitions(engine, months_ago(2), tmp_path, signing_key=SIGNING_KEY)
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE audit_log_p{months_ago(2):%Y%m}"))
        report = verify(engine, key=KEY, checkpoints=tmp_path, checkpoint_key=SIGNING_KEY)
        assert report.broken is not None
        assert report.broken.reason == SEQ_GAP
        assert (report.broken.seq, report.broken.expected_seq) == (5, 3)

    def test_a_tampered_row_is_not_retired(self, engine: Engine, tmp_path: Path) -> None:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
            conn.execute(text("UPDATE audit_log SET record_id = :r WHERE seq = 2"), {"r": '{"id":9}'})
            conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER USER"))
        with pytest.raises(Exception, match="seq 2: hash mismatch"):
            retire_partitions(engine, months_ago(1), tmp_path, signing_key=SIGNING_KEY)
        assert f"audit_log_p{months_ago(3):%Y%m}" in partitions(engine)
        assert not list(tmp_path.glob("*.json"))

    def test_interleaved_months_are_refused(self, engine: Engine, tmp_path: Path) -> None:
        with engine.begin() as conn:  # seq 7 lands in the oldest month, after later months' rows
            orm_insert(conn, "audit_log", ts=datetime.combine(months_ago(3), datetime.min.time(), timezone.utc))
        with pytest.raises(RetentionError, match=r"seq 3 stays .* seq 7 would go"):
            retire_partitions(engine, months_ago(2), tmp_path, signing_key=SIGNING_KEY)
        assert len(partitions(engine)) == 7
        assert not list(tmp_path.glob("*.json"))

    def test_dry_run_changes_nothing(self, engine: Engine, tmp_path: Path) -> None:
        retirement = retire_partitions(engine, months_ago(0), tmp_path, signing_key=SIGNING_KEY, dry_run=True)
        assert len(retirement.partitions) == 3
        assert retirement.retired_through == 5
        assert retirement.checkpoint is None
        assert len(partitions(engine)) == 7
        assert not list(tmp_path.glob("*.json"))

    def test_bad_requests(self, engine: Engine, tmp_path: Path) -> None:
        future = r"--before can be at most \d{4}-\d{2}: only the months before the current one"
        with pytest.raises(RetentionError, match=future):
            retire_partitions(engine, months_ago(-1), tmp_path, signing_key=SIGNING_KEY)
        nothing = retire_partitions(engine, months_ago(3), tmp_path, signing_key=SIGNING_KEY)
        assert nothing.partitions == ()
        assert nothing.checkpoint is None
        with engine.begin() as conn:
            conn.execute(text("CREATE SCHEMA plain"))
        install(engine, key=KEY, schema="plain")
        with pytest.raises(AuditSetupError, match="not a partitioned audit log"):
            retire_partitions(engine, months_ago(1), tmp_path, signing_key=SIGNING_KEY, schema="plain")


def wait_for_a_lock_wait(engine: Engine) -> None:
    """Return once a session of this database waits for a lock (the retirement, behind an append)."""
    deadline = time.monotonic() + 30
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                    " WHERE NOT l.granted AND d.datname = current_database()"
                )
            ).scalar_one()
            conn.rollback()
            if waiting:
                return
            time.sleep(0.05)
    raise AssertionError("nothing ever waited for the append in flight")


class TestRetirementAndAppends:
    def test_an_append_in_flight_into_a_retiring_month_is_never_dropped(self, engine: Engine, tmp_path: Path) -> None:
        # A change stamped in last month's last microsecond, still committing when the retirement starts.
        appender = engine.connect()
        orm_insert(appender, "audit_log", ts=at(months_ago(0), day=1) - timedelta(microseconds=1))
        outcome: list[Retirement | Exception] = []

        def retire() -> None:
            try:
                outcome.append(retire_partitions(engine, months_ago(0), tmp_path, signing_key=SIGNING_KEY))
            except Exception as exc:  # asserted below, in the test's thread
                outcome.append(exc)

        worker = threading.Thread(target=retire)
        worker.start()
        try:
            wait_for_a_lock_wait(engine)
        finally:
            appender.commit()
            appender.close()
            worker.join(60)
        # The retirement waited for it and counted it: seq 7 would go while seq 6 (this month)
        # stays, so nothing goes. Unlocked, it signed seq 5 as the last to go and its DROP then took
        # the committed seq 7 along, unseen by verify.
        (result,) = outcome
        assert isinstance(result, RetentionError), result
        assert "seq 6 stays (it is in a later month) but seq 7 would go" in str(result)
        assert seqs(engine) == [1, 2, 3, 4, 5, 6, 7]
        assert not list(tmp_path.glob("*.json"))
        assert verify(engine, key=KEY).ok

    def test_the_newest_row_never_goes(self, past_only: Engine, tmp_path: Path) -> None:
        # Without seq 5, this month's first row would start a new chain at seq 1.
        for dry_run in (True, False):
            with pytest.raises(RetentionError, match=r"seq 5, the log's newest row, is in a month to retire"):
                retire_partitions(past_only, months_ago(0), tmp_path, signing_key=SIGNING_KEY, dry_run=dry_run)
        assert len(partitions(past_only)) == 7
        assert not list(tmp_path.glob("*.json"))
        with past_only.begin() as conn:  # once this month has a row, last month can go
            orm_insert(conn, "audit_log")
        retirement = retire_partitions(past_only, months_ago(0), tmp_path, signing_key=SIGNING_KEY)
        assert retirement.retired_through == 5
        with past_only.begin() as conn:
            orm_insert(conn, "audit_log")
        report = verify(past_only, key=KEY, checkpoints=tmp_path, checkpoint_key=SIGNING_KEY)
        assert report.ok, report.summary()
        assert (report.first_seq, report.last_seq) == (6, 7)


class TestRowsVerifyMustNotSkip:
    """Verify streams the rows after the latest retirement: every other row is reported, not skipped."""

    @pytest.mark.parametrize(("new_rows", "reason", "seq"), [(3, SEQ_OUT_OF_RANGE, 1), (7, CHECKPOINT_MISMATCH, 5)])
    def test_a_chain_started_again_below_a_retirement(
        self, past_only: Engine, tmp_path: Path, new_rows: int, reason: str, seq: int
    ) -> None:
        # What a retirement of the newest row led to (now refused), or its partition dropped by
        # hand: this month's rows chain again from seq 1, all below the retired seq 5 or re-using it.
        write_checkpoint(past_only, tmp_path, signing_key=SIGNING_KEY, retire_through=5)
        with past_only.begin() as conn:
            for back in (3, 2, 1):
                conn.execute(text(f"DROP TABLE audit_log_p{months_ago(back):%Y%m}"))
        with past_only.begin() as conn:
            for _ in range(new_rows):
                orm_insert(conn, "audit_log", n='{"amount": 1000}')
        assert seqs(past_only) == list(range(1, new_rows + 1))
        report = verify(past_only, key=KEY, checkpoints=tmp_path, checkpoint_key=SIGNING_KEY)
        assert not report.ok
        assert report.broken is not None
        assert (report.broken.seq, report.broken.reason) == (seq, reason)
        if reason == SEQ_OUT_OF_RANGE:
            assert "do not reach it: the chain started again" in report.summary()

    def test_rows_below_seq_1_are_out_of_range(self, engine: Engine) -> None:
        superuser(engine, copy_row(6, 0), copy_row(6, -3))
        report = verify(engine, key=KEY)
        assert not report.ok
        assert report.broken is not None
        assert (report.broken.seq, report.broken.reason) == (-3, SEQ_OUT_OF_RANGE)
        assert "2 row(s) with seq below 1" in report.summary()

    def test_a_row_added_below_a_retirement_is_out_of_range(self, engine: Engine, tmp_path: Path) -> None:
        retire_partitions(engine, months_ago(1), tmp_path, signing_key=SIGNING_KEY)  # seq 1-4
        superuser(engine, copy_row(5, 3))
        report = verify(engine, key=KEY, checkpoints=tmp_path, checkpoint_key=SIGNING_KEY)
        assert report.broken is not None
        assert (report.broken.seq, report.broken.reason) == (3, SEQ_OUT_OF_RANGE)
        assert "does not follow a retirement" in report.summary()

    def test_rows_below_seq_1_are_out_of_range_on_sqlite(self, tmp_path: Path) -> None:
        lite = create_engine(f"sqlite:///{tmp_path / 'app.sqlite3'}")
        audit = audit_log_table(MetaData())
        audit.create(lite)
        with lite.begin() as conn:
            for n in (1, 2):
                change = Change("claims", {"id": n}, "insert", ["amount"], None, {"amount": n})
                write_changes(conn, [change], audit_table=audit, key=KEY)
        assert verify(lite, key=KEY).ok
        with lite.begin() as conn:
            conn.exec_driver_sql(copy_row(2, 0))
        report = verify(lite, key=KEY)
        lite.dispose()
        assert report.broken is not None
        assert (report.broken.seq, report.broken.reason) == (0, SEQ_OUT_OF_RANGE)


class TestFailedDrop:
    """A retirement signed, then its DROP failed: the rows stay, are checked, and go on a second run."""

    def test_the_rows_left_are_still_checked(self, engine: Engine, tmp_path: Path) -> None:
        write_checkpoint(engine, tmp_path, signing_key=SIGNING_KEY, retire_through=4)  # and no drop
        report = verify(engine, key=KEY, checkpoints=tmp_path, checkpoint_key=SIGNING_KEY)
        assert report.ok, report.summary()
        assert (report.first_seq, report.rows_checked, report.retired_through) == (1, 6, 4)
        assert "seq 1..4 are still in the log and were checked" in report.summary()
        superuser(engine, """UPDATE audit_log SET record_id = '{"id":9}' WHERE seq = 2""")
        report = verify(engine, key=KEY, checkpoints=tmp_path, checkpoint_key=SIGNING_KEY)
        assert report.broken is not None
        assert (report.broken.seq, report.broken.reason) == (2, HASH_MISMATCH)

    def test_running_the_retirement_again_drops_them(self, engine: Engine, tmp_path: Path) -> None:
        _, signed = write_checkpoint(engine, tmp_path, signing_key=SIGNING_KEY, retire_through=4)
        with pytest.raises(RetentionError, match=r"seq 3 would stay, but checkpoint .* retired the rows up to seq 4"):
            retire_partitions(engine, months_ago(2), tmp_path, signing_key=SIGNING_KEY)
        retirement = retire_partitions(engine, months_ago(1), tmp_path, signing_key=SIGNING_KEY)
        assert retirement.retired_through == 4
        assert retirement.checkpoint == signed  # the retirement already signed: no second one
        assert list(tmp_path.glob("*.json")) == [signed]
        assert seqs(engine) == [5, 6]
        report = verify(engine, key=KEY, checkpoints=tmp_path, checkpoint_key=SIGNING_KEY)
        assert report.ok, report.summary()
        assert (report.first_seq, report.last_seq, report.retired_through) == (5, 6, 4)


class TestRetireCommand:
    def test_retire_then_verify(self, engine: Engine, tmp_path: Path) -> None:
        url = f"{SERVER}/{engine.url.database}"
        env = {"ST_SIGN": SIGNING_KEY.decode()}
        runner = CliRunner()
        before = f"{months_ago(1):%Y-%m}"
        base = ["audit", "retire", "--db", url, "--checkpoints", str(tmp_path), "--checkpoint-key-env", "ST_SIGN"]
        dry = runner.invoke(main, [*base, "--before", before, "--dry-run"], env=env)
        assert dry.exit_code == 0, dry.output
        assert "would drop" in dry.output
        assert "rows up to seq 4" in dry.output
        done = runner.invoke(main, [*base, "--before", before], env=env)
        assert done.exit_code == 0, done.output
        assert "retirement signed in" in done.output
        verified = runner.invoke(
            main,
            ["audit", "verify", "--db", url, "--checkpoints", str(tmp_path), "--checkpoint-key-env", "ST_SIGN"],
            env=env,
        )
        assert verified.exit_code == 0, verified.output
        assert "rows up to seq 4 retired" in verified.output

    @pytest.mark.parametrize(("before", "message"), [("2024-13", "not a month"), ("soon", "not a month")])
    def test_bad_month_exits_2(self, engine: Engine, tmp_path: Path, before: str, message: str) -> None:
        result = CliRunner().invoke(
            main,
            [
                "audit",
                "retire",
                "--db",
                f"{SERVER}/{engine.url.database}",
                "--before",
                before,
                "--checkpoints",
                str(tmp_path),
                "--checkpoint-key-env",
                "ST_SIGN",
            ],
            env={"ST_SIGN": "k"},
        )
        assert result.exit_code == 2
        assert message in result.output
