"""Retention on real PostgreSQL: dropping a partitioned log's old months keeps ``verify`` exact.

The retirement is signed before anything is dropped; ``verify(..., checkpoints=...)`` resumes the
chain after it, while a month dropped by hand (or a retirement verified without its checkpoints)
is still a seq gap.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, text

from sessiontrace.audit.checkpoint import load_checkpoints, write_checkpoint
from sessiontrace.audit.postgres import AuditSetupError, install
from sessiontrace.audit.retention import RetentionError, retire_partitions
from sessiontrace.audit.verify import SEQ_GAP, verify
from sessiontrace.cli import main
from test_audit_postgres import KEY, SERVER, orm_insert

SIGNING_KEY = b"retention-checkpoint-key"
THIS_MONTH = datetime.now(timezone.utc).date().replace(day=1)


def months_ago(count: int) -> date:
    index = THIS_MONTH.year * 12 + THIS_MONTH.month - 1 - count
    return date(index // 12, index % 12 + 1, 1)


@pytest.fixture
def engine() -> Iterator[Engine]:
    """A database of its own with a partitioned log holding three past months and this one:
    seq 1-2 in the oldest month, 3-4 in the next, 5 in the last past month, 6 now."""
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
                moment = datetime.combine(months_ago(back), datetime.min.time(), timezone.utc) + timedelta(days=3)
                orm_insert(conn, "audit_log", ts=moment)
            orm_insert(conn, "audit_log")
        yield eng
    finally:
        eng.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


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
        with pytest.raises(RetentionError, match="not the current month"):
            retire_partitions(engine, months_ago(-1), tmp_path, signing_key=SIGNING_KEY)
        nothing = retire_partitions(engine, months_ago(3), tmp_path, signing_key=SIGNING_KEY)
        assert nothing.partitions == ()
        assert nothing.checkpoint is None
        with engine.begin() as conn:
            conn.execute(text("CREATE SCHEMA plain"))
        install(engine, key=KEY, schema="plain")
        with pytest.raises(AuditSetupError, match="not a partitioned audit log"):
            retire_partitions(engine, months_ago(1), tmp_path, signing_key=SIGNING_KEY, schema="plain")


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
