"""The Alembic helpers in a real Alembic run: upgrade creates the columns, the log and the triggers,
the audited table is audited, downgrade removes it all. A scratch database of its own."""

from __future__ import annotations

import os
import secrets
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, inspect, text

from sessiontrace.audit import chain

SERVER = os.environ.get("SESSIONTRACE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")

ENV_PY = """
from alembic import context
from sqlalchemy import create_engine

engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""

MIGRATION = '''
"""claims, audited"""
import os

import sqlalchemy as sa
from alembic import op

from sessiontrace.audit import migrations

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "claims",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("amount", sa.Numeric),
        sa.Column("ssn", sa.Text),
    )
    migrations.add_audit_columns(op, "claims")
    migrations.create_audit_log(
        op, key=os.environ["ST_TEST_AUDIT_KEY"].encode(), app_role=os.environ["ST_TEST_APP_ROLE"]
    )
    migrations.install_triggers(op, ["claims"], mask={"claims": ["ssn"]})


def downgrade() -> None:
    migrations.drop_triggers(op, ["claims"])
    migrations.drop_audit_log(op)
    migrations.drop_audit_columns(op, "claims")
    op.drop_table("claims")
'''


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = f"st_pg_{secrets.token_hex(5)}"
    admin = create_engine(f"{SERVER}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            conn.execute(text(f'DROP ROLE IF EXISTS "st_app_{name.removeprefix("st_pg_")}"'))
        admin.dispose()


@pytest.fixture
def alembic_config(tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch) -> Config:
    scripts = tmp_path / "migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(textwrap.dedent(ENV_PY))
    (scripts / "versions" / "0001_claims.py").write_text(MIGRATION)
    monkeypatch.setenv("ST_TEST_AUDIT_KEY", "migration-key")
    monkeypatch.setenv("ST_TEST_APP_ROLE", f"st_app_{database.removeprefix('st_pg_')}")
    config = Config()
    config.set_main_option("script_location", str(scripts))
    config.set_main_option("sqlalchemy.url", f"{SERVER}/{database}")
    return config


@pytest.fixture
def engine(database: str) -> Iterator[Engine]:
    eng = create_engine(f"{SERVER}/{database}")
    yield eng
    eng.dispose()


class TestAlembicRoundTrip:
    """upgrade → audited writes → downgrade → nothing of ours left; and upgrade works again."""

    def test_upgrade_audit_downgrade(self, alembic_config: Config, engine: Engine) -> None:
        command.upgrade(alembic_config, "head")

        columns = {c["name"] for c in inspect(engine).get_columns("claims")}
        assert {"session_id", "changed_by_user_id", "change_timestamp"} <= columns
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO claims (id, amount, ssn) VALUES (1, 10, '123')"))
            conn.execute(text("UPDATE claims SET amount = 11 WHERE id = 1"))
        with engine.connect() as conn:
            rows = [
                dict(r)
                for r in conn.execute(
                    text(
                        "SELECT seq, table_name, record_id, change_type, changed_fields::text, previous_values::text,"
                        " new_values::text, session_id::text, changed_by_user_id, change_timestamp, trace_id, span_id,"
                        " transaction_id, db_user, source, prev_hash, row_hash FROM audit_log ORDER BY seq"
                    )
                ).mappings()
            ]
        assert [(r["change_type"], r["record_id"]) for r in rows] == [("insert", '{"id":1}'), ("update", '{"id":1}')]
        assert '"ssn": "[MASKED]"' in rows[0]["new_values"]
        previous = chain.GENESIS
        for row in rows:
            assert row["row_hash"] == chain.link(previous, chain.line(row), b"migration-key")
            previous = row["row_hash"]

        command.downgrade(alembic_config, "base")
        tables = set(inspect(engine).get_table_names())
        assert not tables & {"claims", "audit_log", "audit_log_secret"}
        with engine.connect() as conn:
            leftovers = conn.execute(
                text(
                    "SELECT proname FROM pg_proc"
                    " WHERE proname LIKE 'audit_log_%' AND pronamespace = 'public'::regnamespace"
                )
            ).scalars()
            assert list(leftovers) == []

        command.upgrade(alembic_config, "head")  # and back up again, from scratch
        assert "audit_log" in inspect(engine).get_table_names()
        command.downgrade(alembic_config, "base")
