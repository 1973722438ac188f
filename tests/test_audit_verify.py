"""Verifying the audit log: an intact chain passes; a row modified, deleted, inserted or reordered by
the database superuser (triggers disabled) is reported at the right seq with the right reason;
signed checkpoints catch history rewritten and re-chained with the database's own key. PostgreSQL
in a scratch database of this module, SQLite in a file per test."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, MetaData, Numeric, String, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import sessiontrace
from _audit_db import reset_public_schema, scratch_postgres
from sessiontrace.audit import Audited, audit_log_table, chain, enable_auditing
from sessiontrace.audit.checkpoint import CheckpointError, load_checkpoints, write_checkpoint
from sessiontrace.audit.postgres import install
from sessiontrace.audit.verify import (
    CHECKPOINT_INVALID,
    CHECKPOINT_MISMATCH,
    CHECKPOINT_MISSING,
    HASH_MISMATCH,
    PREV_HASH_MISMATCH,
    SEQ_GAP,
    KeyUnavailableError,
    NotChainedError,
    verify,
)
from sessiontrace.cli import main

KEY = b"verify-chain-key"
CHECKPOINT_KEY = b"checkpoint-key-kept-elsewhere"
SESSION = "0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b"
ROWS = 10
FILL = """
INSERT INTO audit_log (table_name, record_id, change_type, changed_fields, previous_values, new_values,
                       session_id, changed_by_user_id, change_timestamp, trace_id, source)
SELECT 'claims', '{"id":' || g || '}', 'update', '["amount","note"]',
       jsonb_build_object('amount', g * 1.5, 'note', null),
       jsonb_build_object('amount', (g + 1)::text, 'note', E'línea ✓ \\u0001 "q"'),
       CAST(:session AS uuid), 'u-' || g, timestamptz '2024-02-29 23:59:59.999999+05' + g * interval '1.000001 second',
       md5(g::text), 'orm'
  FROM generate_series(:start, :start + :n - 1) AS g
"""


class Base(DeclarativeBase):
    pass


class VfClaim(Audited, Base):
    __tablename__ = "vf_claim"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(100))
    amount: Mapped[Any] = mapped_column(Numeric(12, 2))


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with scratch_postgres("verify") as url:
        yield url


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Engine]:
    """A fresh log with ``ROWS`` rows chained by the trigger under ``KEY``."""
    reset_public_schema(postgres_url)
    engine = create_engine(postgres_url)
    install(engine, key=KEY)
    fill(engine, ROWS)
    yield engine
    engine.dispose()


def fill(engine: Engine, n: int, start: int = 1) -> None:
    with engine.begin() as conn:
        conn.execute(text(FILL), {"n": n, "start": start, "session": SESSION})


def tamper(engine: Engine, *statements: str, how: str = "replica") -> None:
    """As the superuser, around the append-only triggers: either way an owner can."""
    with engine.begin() as conn:
        if how == "replica":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
        for statement in statements:
            conn.exec_driver_sql(statement)
        if how != "replica":
            conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER USER"))


def rows(engine: Engine) -> list[dict[str, Any]]:
    columns = ", ".join(f"{n}::text AS {n}" if n.endswith(("values", "fields")) else n for n in chain.LINE_FIELDS)
    with engine.connect() as conn:
        found = conn.execute(text(f"SELECT id, {columns}, prev_hash, row_hash FROM audit_log ORDER BY seq"))
        return [dict(r) for r in found.mappings()]


def rechain(engine: Engine, key: bytes) -> None:
    """What a superuser holding the chain key can do: recompute every link after a rewrite."""
    previous = chain.GENESIS
    updates = []
    for row in rows(engine):
        row_hash = chain.link(previous, chain.line(row), key)
        updates.append(f"UPDATE audit_log SET prev_hash = '{previous}', row_hash = '{row_hash}' WHERE id = {row['id']}")
        previous = row_hash
    tamper(engine, *updates)


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["audit", *args], env=env, catch_exceptions=False)


# --- PostgreSQL --------------------------------------------------------------------------------------------


class TestIntact:
    def test_intact_chain_passes(self, pg: Engine) -> None:
        report = verify(pg, key=KEY)
        assert report.ok
        assert (report.rows_checked, report.first_seq, report.last_seq) == (ROWS, 1, ROWS)
        assert report.head_hash == rows(pg)[-1]["row_hash"]
        assert report.table == "public.audit_log"

    def test_the_installed_key_is_read_when_none_is_given(self, pg: Engine) -> None:
        assert verify(pg).ok  # connected as the superuser: the key table is readable

    def test_a_role_that_cannot_read_the_key_must_pass_it(self, pg: Engine, postgres_url: str) -> None:
        role = "st_verify_reader_" + postgres_url.rsplit("_", 1)[-1]
        with pg.begin() as conn:
            conn.execute(text(f'CREATE ROLE "{role}" NOLOGIN'))
            conn.execute(text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
            conn.execute(text(f'GRANT SELECT ON audit_log TO "{role}"'))
        try:
            with pg.connect() as conn:
                conn.execute(text(f'SET ROLE "{role}"'))
                with pytest.raises(KeyUnavailableError, match="audit_log_secret"):
                    verify(conn)
                conn.rollback()
                conn.execute(text(f'SET ROLE "{role}"'))
                assert verify(conn, key=KEY).ok
                conn.rollback()
        finally:
            with pg.begin() as conn:
                conn.execute(text(f'DROP OWNED BY "{role}"'))
                conn.execute(text(f'DROP ROLE "{role}"'))

    def test_a_wrong_key_fails_at_the_first_row(self, pg: Engine) -> None:
        report = verify(pg, key=b"not the key")
        assert report.broken is not None
        assert (report.broken.seq, report.broken.reason) == (1, HASH_MISMATCH)
        assert "key is wrong" in report.broken.detail

    def test_the_verifier_hashes_exactly_what_chain_py_hashes(self, pg: Engine) -> None:
        previous = chain.GENESIS
        for row in rows(pg):
            assert row["row_hash"] == chain.link(previous, chain.line(row), KEY)
            previous = row["row_hash"]


class TestTampering:
    """Each kind of tampering, made as the superuser around the triggers, at the right seq."""

    @pytest.mark.parametrize("how", ["replica", "disable"])
    def test_modified_row(self, pg: Engine, how: str) -> None:
        tamper(pg, """UPDATE audit_log SET new_values = '{"amount": "999"}' WHERE seq = 4""", how=how)
        broken = verify(pg, key=KEY).broken
        assert broken is not None
        assert (broken.seq, broken.reason, broken.meaning) == (4, HASH_MISMATCH, "row modified")

    def test_modified_timestamp_by_one_microsecond(self, pg: Engine) -> None:
        tamper(pg, "UPDATE audit_log SET change_timestamp = change_timestamp + interval '1 microsecond' WHERE seq = 7")
        broken = verify(pg, key=KEY).broken
        assert broken is not None
        assert (broken.seq, broken.reason) == (7, HASH_MISMATCH)

    def test_deleted_row(self, pg: Engine) -> None:
        tamper(pg, "DELETE FROM audit_log WHERE seq = 5")
        report = verify(pg, key=KEY)
        assert report.broken is not None
        assert (report.broken.seq, report.broken.reason, report.broken.expected_seq) == (6, SEQ_GAP, 5)
        assert report.rows_checked == 4
        assert "seq 5 missing" in report.broken.detail

    def test_deleted_first_row(self, pg: Engine) -> None:
        tamper(pg, "DELETE FROM audit_log WHERE seq = 1")
        broken = verify(pg, key=KEY).broken
        assert broken is not None
        assert (broken.seq, broken.reason, broken.expected_seq) == (2, SEQ_GAP, 1)

    def test_inserted_row_even_with_a_valid_hash(self, pg: Engine) -> None:
        """A forged row slipped in at seq 4 (later rows renumbered), linked to seq 3 and hashed with
        the real key: it passes, but the row after it does not link to it."""
        before = rows(pg)
        tamper(
            pg,
            "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 4",
            "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000",
            "INSERT INTO audit_log (seq, table_name, record_id, change_type, changed_fields, new_values,"
            " change_timestamp, source, prev_hash, row_hash)"
            """ VALUES (4, 'claims', '{"id":99}', 'update', '["amount"]', '{"amount": "0"}',"""
            f" now(), 'orm', '{before[2]['row_hash']}', 'to be computed')",
        )
        forged = next(r for r in rows(pg) if r["seq"] == 4)
        forged_hash = chain.link(before[2]["row_hash"], chain.line(forged), KEY)
        tamper(pg, f"UPDATE audit_log SET row_hash = '{forged_hash}' WHERE seq = 4")
        broken = verify(pg, key=KEY).broken
        assert broken is not None
        assert (broken.seq, broken.reason) == (5, PREV_HASH_MISMATCH)

    def test_inserted_row_without_the_key(self, pg: Engine) -> None:
        """Linked to seq 3 by copying a link, but without the key its hash cannot match."""
        tamper(
            pg,
            "UPDATE audit_log SET seq = seq + 1000 WHERE seq >= 4",
            "UPDATE audit_log SET seq = seq - 999 WHERE seq >= 1000",
            "INSERT INTO audit_log (seq, table_name, record_id, change_type, changed_fields, change_timestamp,"
            " source, prev_hash, row_hash) SELECT 4, table_name, '{\"id\":99}', change_type, changed_fields,"
            " change_timestamp, source, prev_hash, row_hash FROM audit_log WHERE seq = 5",
        )
        broken = verify(pg, key=KEY).broken
        assert broken is not None
        assert (broken.seq, broken.reason) == (4, HASH_MISMATCH)

    def test_appended_row_with_a_made_up_link(self, pg: Engine) -> None:
        tamper(
            pg,
            "INSERT INTO audit_log (seq, table_name, record_id, change_type, changed_fields, change_timestamp,"
            f" source, prev_hash, row_hash) SELECT {ROWS + 1}, table_name, record_id, change_type, changed_fields,"
            " change_timestamp, source, prev_hash, row_hash FROM audit_log WHERE seq = 3",  # a replayed row
        )
        broken = verify(pg, key=KEY).broken
        assert broken is not None
        assert (broken.seq, broken.reason, broken.meaning) == (
            ROWS + 1,
            PREV_HASH_MISMATCH,
            "row inserted or rows reordered",
        )

    def test_reordered_rows(self, pg: Engine) -> None:
        tamper(
            pg,
            "UPDATE audit_log SET seq = -4 WHERE seq = 4",
            "UPDATE audit_log SET seq = 4 WHERE seq = 5",
            "UPDATE audit_log SET seq = 5 WHERE seq = -4",
        )
        broken = verify(pg, key=KEY).broken
        assert broken is not None
        assert (broken.seq, broken.reason) == (4, PREV_HASH_MISMATCH)

    def test_rewrite_and_rechain_with_the_key_passes_plain_verify(self, pg: Engine) -> None:
        tamper(pg, """UPDATE audit_log SET new_values = '{"amount": "999"}' WHERE seq = 3""")
        rechain(pg, KEY)
        assert verify(pg, key=KEY).ok  # the chain alone cannot tell: that is what checkpoints are for


class TestNotChained:
    def test_no_audit_table(self, postgres_url: str) -> None:
        reset_public_schema(postgres_url)
        engine = create_engine(postgres_url)
        try:
            with pytest.raises(NotChainedError, match=r"public\.audit_log does not exist"):
                verify(engine, key=KEY)
            result = cli("verify", "--db", postgres_url)
            assert result.exit_code == 3
            assert "does not exist" in result.output
        finally:
            engine.dispose()

    def test_rows_with_null_seq(self, postgres_url: str) -> None:
        """The ORM mode on PostgreSQL without ``install()``: rows are never chained."""
        reset_public_schema(postgres_url)
        engine = create_engine(postgres_url)
        try:
            audit_log_table(MetaData()).create(engine)
            fill(engine, 3)
            report = verify(engine, key=KEY)
            assert (report.ok, report.rows_checked, report.unchained_rows) == (False, 0, 3)
            assert report.broken is None
            result = cli("verify", "--db", postgres_url)
            assert result.exit_code == 3
            assert "never chained" in result.output
        finally:
            engine.dispose()


# --- checkpoints ---------------------------------------------------------------------------------------------


class TestCheckpoints:
    def test_rewrite_and_rechain_is_caught_by_a_checkpoint(self, pg: Engine, tmp_path: Path) -> None:
        first, first_path = write_checkpoint(pg, tmp_path, signing_key=CHECKPOINT_KEY)
        fill(pg, 5, start=ROWS + 1)
        second, _ = write_checkpoint(pg, tmp_path, signing_key=CHECKPOINT_KEY)
        assert (first.seq, second.seq) == (ROWS, ROWS + 5)
        assert second.previous == first.digest
        assert json.loads(first_path.read_text())["signature"] == first.signature
        assert verify(pg, key=KEY, checkpoints=tmp_path, checkpoint_key=CHECKPOINT_KEY).ok

        tamper(pg, """UPDATE audit_log SET new_values = '{"amount": "999"}' WHERE seq = 3""")
        rechain(pg, KEY)
        assert verify(pg, key=KEY).ok
        report = verify(pg, key=KEY, checkpoints=tmp_path, checkpoint_key=CHECKPOINT_KEY)
        assert report.broken is not None
        assert (report.broken.seq, report.broken.reason) == (ROWS, CHECKPOINT_MISMATCH)
        assert report.broken.checkpoint == first.name

        env = {"CHAIN": KEY.decode(), "CP": CHECKPOINT_KEY.decode()}
        url = pg.url.render_as_string(hide_password=False)
        plain = cli("verify", "--db", url, "--key-env", "CHAIN", env=env)
        assert plain.exit_code == 0, plain.output
        result = cli(
            "verify", "--db", url, "--key-env", "CHAIN", "--checkpoints", str(tmp_path), "--checkpoint-key-env", "CP",
            env=env,
        )  # fmt: skip
        assert result.exit_code == 1
        assert f"seq {ROWS}" in result.output
        assert first.name in result.output
        assert CHECKPOINT_MISMATCH in result.output
        # and the checkpoint command refuses to pin the rewritten history
        refused = cli("checkpoint", "--db", url, "--key-env", "CP", "--out", str(tmp_path), env=env)
        assert refused.exit_code == 1
        assert "history was rewritten" in refused.output

    def test_removed_tail_rows_are_caught(self, pg: Engine, tmp_path: Path) -> None:
        checkpoint, _ = write_checkpoint(pg, tmp_path, signing_key=CHECKPOINT_KEY, chain_key=KEY)
        tamper(pg, f"DELETE FROM audit_log WHERE seq >= {ROWS - 1}")
        assert verify(pg, key=KEY).ok  # a shorter chain is still a chain
        broken = verify(pg, key=KEY, checkpoints=tmp_path, checkpoint_key=CHECKPOINT_KEY).broken
        assert broken is not None
        assert (broken.seq, broken.reason, broken.checkpoint) == (ROWS, CHECKPOINT_MISSING, checkpoint.name)

    def test_altered_removed_or_foreign_checkpoints_are_caught(self, pg: Engine, tmp_path: Path) -> None:
        paths = []
        for n in range(3):
            fill(pg, 1, start=100 + n)
            paths.append(write_checkpoint(pg, tmp_path, signing_key=CHECKPOINT_KEY)[1])
        assert len(load_checkpoints(tmp_path, CHECKPOINT_KEY, table="public.audit_log")) == 3
        with pytest.raises(CheckpointError, match="signature"):
            load_checkpoints(tmp_path, b"another key", table="public.audit_log")

        document = json.loads(paths[1].read_text())
        paths[1].write_text(json.dumps({**document, "seq": document["seq"] - 1}))
        broken = verify(pg, key=KEY, checkpoints=tmp_path, checkpoint_key=CHECKPOINT_KEY).broken
        assert broken is not None
        assert (broken.reason, broken.checkpoint) == (CHECKPOINT_INVALID, paths[1].name)

        paths[1].unlink()  # removing the evidence breaks the next checkpoint's link
        broken = verify(pg, key=KEY, checkpoints=tmp_path, checkpoint_key=CHECKPOINT_KEY).broken
        assert broken is not None
        assert (broken.reason, broken.checkpoint) == (CHECKPOINT_INVALID, paths[2].name)
        assert "removed or replaced" in broken.detail

    def test_checkpoint_of_a_broken_chain_is_refused(self, pg: Engine, tmp_path: Path) -> None:
        tamper(pg, "DELETE FROM audit_log WHERE seq = 2")
        with pytest.raises(CheckpointError, match="seq gap"):
            write_checkpoint(pg, tmp_path, signing_key=CHECKPOINT_KEY)
        assert not list(tmp_path.glob("*.json"))

    def test_cli_writes_and_verifies_checkpoints(self, pg: Engine, tmp_path: Path) -> None:
        env = {"CP": CHECKPOINT_KEY.decode()}
        url = pg.url.render_as_string(hide_password=False)
        out = tmp_path / "checkpoints"
        result = cli("checkpoint", "--db", url, "--key-env", "CP", "--out", str(out), env=env)
        assert result.exit_code == 0, result.output
        assert f"at seq {ROWS}" in result.output
        [written] = out.glob("*.json")
        assert set(json.loads(written.read_text())) == {
            "previous",
            "row_hash",
            "seq",
            "signature",
            "table",
            "timestamp",
            "version",
        }
        ok = cli("verify", "--db", url, "--checkpoints", str(out), "--checkpoint-key-env", "CP", env=env)
        assert ok.exit_code == 0, ok.output
        assert "1 checkpoint(s) hold" in ok.output


# --- CLI -------------------------------------------------------------------------------------------------------


class TestCli:
    def test_intact_exits_0(self, pg: Engine) -> None:
        result = cli("verify", "--db", pg.url.render_as_string(hide_password=False))
        assert result.exit_code == 0, result.output
        assert f"chain intact, {ROWS} rows" in result.output

    @pytest.mark.parametrize(
        ("statement", "seq", "reason"),
        [
            ("UPDATE audit_log SET record_id = '{\"id\":7}' WHERE seq = 3", 3, HASH_MISMATCH),
            ("DELETE FROM audit_log WHERE seq = 3", 4, SEQ_GAP),
        ],
    )
    def test_tampering_exits_1_naming_the_row(self, pg: Engine, statement: str, seq: int, reason: str) -> None:
        tamper(pg, statement)
        result = cli("verify", "--db", pg.url.render_as_string(hide_password=False))
        assert result.exit_code == 1
        assert f"broken at seq {seq}: {reason}" in result.output

    def test_wrong_key_variable_exits_1_and_missing_variable_exits_2(self, pg: Engine) -> None:
        url = pg.url.render_as_string(hide_password=False)
        assert cli("verify", "--db", url, "--key-env", "K", env={"K": "wrong"}).exit_code == 1
        assert cli("verify", "--db", url, "--key-env", "UNSET_VARIABLE_X").exit_code == 2

    @pytest.mark.parametrize(
        "args",
        [
            ["--db", "postgresql://u@h:port/db"],  # a port that is not a number
            ["--db", "mysql://h/db"],
            ["--db", "sqlite://"],
            ["--db", "postgresql://h/db", "--checkpoints", "."],  # without --checkpoint-key-env
            [],
        ],
    )
    def test_usage_errors_exit_2(self, args: list[str]) -> None:
        assert cli("verify", *args).exit_code == 2

    def test_unreachable_database_exits_4(self, tmp_path: Path) -> None:
        assert cli("verify", "--db", f"sqlite:///{tmp_path / 'missing.sqlite3'}").exit_code == 4
        assert cli("verify", "--db", "postgresql://postgres@127.0.0.1:1/x").exit_code == 4

    def test_help_documents_the_exit_codes(self) -> None:
        result = cli("verify", "--help")
        for line in ("0  the chain is intact", "1  tampering", "2  usage error", "3  not chained", "4  the database"):
            assert line in result.output

    def test_as_a_subprocess(self, pg: Engine) -> None:
        url = pg.url.render_as_string(hide_password=False)
        command = [sys.executable, "-m", "sessiontrace.cli", "audit", "verify", "--db", url]
        ok = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert ok.returncode == 0, ok.stderr
        tamper(pg, "UPDATE audit_log SET seq = 99 WHERE seq = 6")
        broken = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert broken.returncode == 1
        assert "broken at seq 7: seq gap" in broken.stderr


# --- SQLite (ORM mode, chained in Python) ----------------------------------------------------------------------


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.sqlite3'}")
    audit = audit_log_table(MetaData())
    audit.create(engine)
    Base.metadata.create_all(engine)
    maker = sessionmaker(engine)
    enable_auditing(maker, audit_table=audit, key=KEY)
    with sessiontrace.session(user_id="u-lite"):
        for n in range(1, 6):
            with maker.begin() as orm:
                orm.add(VfClaim(id=n, title=f"claim ✓ {n}", amount="1.10"))
        with maker.begin() as orm:
            orm.get_one(VfClaim, 2).amount = "2.20"
    yield engine
    engine.dispose()


class TestSqlite:
    def _raw(self, engine: Engine, sql: str) -> None:
        db = sqlite3.connect(str(engine.url.database))
        db.executescript(sql)
        db.commit()
        db.close()

    def test_intact(self, lite: Engine) -> None:
        report = verify(lite, key=KEY)
        assert report.ok
        assert report.rows_checked == 6
        with lite.connect() as conn:  # the ORM writer stores session_id as 32 hex digits: hashed as stored
            assert len(conn.execute(text("SELECT session_id FROM audit_log")).scalars().first() or "") == 32
        result = cli("verify", "--db", str(lite.url), "--key-env", "K", env={"K": KEY.decode()})
        assert result.exit_code == 0, result.output
        assert cli("verify", "--db", str(lite.url)).exit_code == 1  # the empty key is the wrong key

    @pytest.mark.parametrize(
        ("statement", "seq", "reason"),
        [
            ("""UPDATE audit_log SET new_values = '{"amount":"9.99"}' WHERE seq = 6""", 6, HASH_MISMATCH),
            ("UPDATE audit_log SET change_timestamp = '2020-01-01 00:00:00.000000' WHERE seq = 2", 2, HASH_MISMATCH),
            ("DELETE FROM audit_log WHERE seq = 3", 4, SEQ_GAP),
            (
                "UPDATE audit_log SET seq = -seq WHERE seq IN (4, 5); UPDATE audit_log SET seq = 9 + seq WHERE seq < 0",
                4,
                PREV_HASH_MISMATCH,
            ),
        ],
    )
    def test_tampering(self, lite: Engine, statement: str, seq: int, reason: str) -> None:
        self._raw(lite, statement)
        broken = verify(lite, key=KEY).broken
        assert broken is not None
        assert (broken.seq, broken.reason) == (seq, reason)

    def test_checkpoint_on_sqlite(self, lite: Engine, tmp_path: Path) -> None:
        checkpoint, _ = write_checkpoint(lite, tmp_path / "cp", signing_key=CHECKPOINT_KEY, chain_key=KEY)
        assert (checkpoint.table, checkpoint.seq) == ("audit_log", 6)
        assert verify(lite, key=KEY, checkpoints=tmp_path / "cp", checkpoint_key=CHECKPOINT_KEY).ok
