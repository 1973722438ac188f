"""Reverting a session: every change undone in reverse order, in one transaction, restoring the
exact previous values; conflicts with later sessions listed and refused unless forced; masked values
never restored; the revert itself a new, audited session whose chain still verifies. ORM mode on
SQLite and PostgreSQL, trigger mode on PostgreSQL (a scratch database of this module)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import DateTime, Engine, LargeBinary, MetaData, Numeric, String, Uuid, create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import sessiontrace
from _audit_db import reset_public_schema, scratch_postgres
from sessiontrace import semconv
from sessiontrace.audit import MASKED, Audited, audit_log_table, enable_auditing
from sessiontrace.audit import postgres as audit_postgres
from sessiontrace.audit.revert import RevertRefusedError, SessionNotFoundError, revert_session
from sessiontrace.audit.verify import verify
from sessiontrace.cli import main
from sessiontrace.testing import CapturedSpans

KEY = b"revert-chain-key"
AUDIT = audit_log_table(MetaData())
DUE = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
LATER = datetime(2025, 1, 2, 3, 4, 5, 654321, tzinfo=timezone(timedelta(hours=-5)))
REF = uuid.UUID("0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b")
BUSINESS = ("id", "title", "amount", "due", "ref", "blob", "score", "ssn")


class Base(DeclarativeBase):
    pass


class RvClaim(Audited, Base):
    __tablename__ = "rv_claim"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(100))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    due: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ref: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    blob: Mapped[bytes | None] = mapped_column(LargeBinary)
    score: Mapped[float | None]
    ssn: Mapped[str | None] = mapped_column(String(20))  # masked


TRIGGER_TABLE = """
CREATE TABLE rv_claim (
    id integer PRIMARY KEY, title text NOT NULL, amount numeric(12, 2), due timestamptz, ref uuid, blob bytea,
    score double precision, ssn text, session_id uuid, changed_by_user_id varchar(256), change_timestamp timestamptz
)
"""


@dataclass
class Db:
    mode: str  # sqlite-orm, postgres-orm, postgres-trigger
    url: str
    engine: Engine
    maker: sessionmaker[Session]
    masked_maker: sessionmaker[Session]

    @property
    def trigger(self) -> bool:
        return self.mode == "postgres-trigger"

    def mask_ssn(self) -> None:
        """From now on ``rv_claim.ssn`` is recorded masked."""
        if self.trigger:
            audit_postgres.audit_tables(self.engine, ["rv_claim"], mask={"rv_claim": ["ssn"]})
        self.maker = self.masked_maker

    def change(self, **session: Any) -> Any:
        """A session scope; in trigger mode the engine is instrumented, so the context follows it."""
        return sessiontrace.session(**session)

    def state(self) -> dict[int, dict[str, Any]]:
        with self.maker() as orm:
            return {
                c.id: {name: getattr(c, name) for name in BUSINESS}
                for c in orm.scalars(select(RvClaim).order_by(RvClaim.id))
            }

    def audit_rows(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(AUDIT).order_by(AUDIT.c.seq)).mappings())


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with scratch_postgres("revert") as url:
        yield url


@pytest.fixture(scope="module")
def session_classes() -> tuple[type[Session], type[Session]]:
    """Audited Session classes for the module (auditing is enabled once per class): plain, and
    masking ``rv_claim.ssn``."""
    plain = type("RevertAuditedSession", (Session,), {})
    enable_auditing(plain, audit_table=AUDIT, key=KEY)
    masked = type("RevertMaskedSession", (Session,), {})
    enable_auditing(masked, audit_table=AUDIT, key=KEY, mask={"rv_claim": ["ssn"]})
    return plain, masked


@pytest.fixture(params=["sqlite-orm", "postgres-orm", "postgres-trigger"])
def db(
    request: pytest.FixtureRequest, tmp_path: Path, session_classes: tuple[type[Session], type[Session]]
) -> Iterator[Db]:
    maker_class, masked_class = session_classes
    mode = request.param
    if mode == "sqlite-orm":
        url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
        engine = create_engine(url)
        AUDIT.create(engine)
        Base.metadata.create_all(engine)
        maker = sessionmaker(engine, class_=maker_class)
        masked = sessionmaker(engine, class_=masked_class)
    else:
        url = request.getfixturevalue("postgres_url")
        reset_public_schema(url)
        engine = create_engine(url)
        audit_postgres.install(engine, key=KEY)
        if mode == "postgres-orm":
            Base.metadata.create_all(engine)
            maker = sessionmaker(engine, class_=maker_class)
            masked = sessionmaker(engine, class_=masked_class)
        else:
            with engine.begin() as conn:
                conn.execute(text(TRIGGER_TABLE))
            audit_postgres.audit_tables(engine, ["rv_claim"])
            audit_postgres.instrument_engine(engine)
            maker = masked = sessionmaker(engine)  # not ORM-audited: the triggers audit
    yield Db(mode, url, engine, maker, masked)
    if mode == "postgres-trigger":
        audit_postgres.uninstrument_engine(engine)
    engine.dispose()


def seed(db: Db) -> None:
    with db.change(user_id="u-seed"), db.maker.begin() as orm:
        orm.add(RvClaim(id=1, title="hail", amount=Decimal("100.10"), due=DUE, ref=REF, blob=b"\x00\xff", score=0.1))
        orm.add(RvClaim(id=2, title="flood", amount=Decimal("0.01"), due=None, blob=b"\x01", score=1e-7))


def busy_session(db: Db) -> str:
    """Updates (one record twice), an insert and a delete, in several transactions."""
    with db.change(user_id="u-481") as s:
        with db.maker.begin() as orm:
            claim = orm.get_one(RvClaim, 1)
            claim.amount = Decimal("200.20")
            claim.title = "hail, revised"
            claim.due = LATER
        with db.maker.begin() as orm:
            orm.add(RvClaim(id=3, title="new", amount=Decimal("3.33"), ref=uuid.uuid4(), blob=b"\x03"))
            orm.delete(orm.get_one(RvClaim, 2))
        with db.maker.begin() as orm:
            orm.get_one(RvClaim, 1).amount = Decimal("300.30")
    return s.id


def comparable(state: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Datetimes as instants (SQLite keeps wall time without offset; PostgreSQL answers in UTC)."""
    out = {}
    for key, row in state.items():
        due = row["due"]
        if isinstance(due, datetime) and due.tzinfo is not None:
            due = due.astimezone(timezone.utc).replace(tzinfo=None)
        out[key] = {**row, "due": due}
    return out


class TestRevert:
    def test_restores_the_exact_previous_state(self, db: Db, capsession: CapturedSpans) -> None:
        seed(db)
        before = db.state()
        reverted = busy_session(db)
        assert db.state() != before
        audit_before = len(db.audit_rows())

        plan = revert_session(db.engine, reverted, key=KEY, user_id="u-admin")

        assert plan.applied
        assert not plan.conflicts
        assert not plan.blockers
        assert [(op.undoes, op.action) for op in plan.operations] == [
            ("update", "update"),
            ("delete", "insert"),
            ("insert", "delete"),
            ("update", "update"),
        ]
        assert [op.seq for op in plan.operations] == sorted((op.seq for op in plan.operations), reverse=True)
        after = db.state()
        if db.mode == "sqlite-orm":
            assert after == before  # the stored wall time, byte for byte
        else:
            assert comparable(after) == comparable(before)
        assert after[1]["amount"] == Decimal("100.10")
        assert after[2]["amount"] == Decimal("0.01")
        assert after[1]["due"] == (DUE.replace(tzinfo=None) if db.mode == "sqlite-orm" else DUE)
        assert (after[1]["ref"], after[1]["blob"], after[2]["score"]) == (REF, b"\x00\xff", 1e-7)

        new_rows = db.audit_rows()[audit_before:]
        assert len(new_rows) == 4  # one per undo: written once, by the trigger or by the revert
        assert {r["session_id"] for r in new_rows} == {plan.revert_session_id}
        assert {r["changed_by_user_id"] for r in new_rows} == {"u-admin"}
        assert {r["source"] for r in new_rows} == {"trigger" if db.trigger else "revert"}
        assert [r["change_type"] for r in new_rows] == ["update", "insert", "delete", "update"]
        assert new_rows[0]["new_values"]["amount"] in ("200.20", 200.20)

        [span] = [s for s in capsession.named(semconv.SESSION_SPAN) if s.attributes and
                  s.attributes.get(semconv.SESSION_ID) == plan.revert_session_id]  # fmt: skip
        assert span.attributes is not None
        assert span.attributes[semconv.SESSION_PREVIOUS_ID] == reverted
        assert span.attributes[semconv.TRIGGER_TYPE] == "audit revert"
        assert span.attributes[semconv.TRIGGER_SOURCE] == "system"

        with db.maker() as orm:  # the restored rows carry the revert session
            assert orm.get_one(RvClaim, 2).session_id == plan.revert_session_id
        assert verify(db.engine, key=KEY).ok

    def test_conflicts_are_listed_and_refused_unless_forced(self, db: Db) -> None:
        seed(db)
        reverted = busy_session(db)
        with db.change() as later, db.maker.begin() as orm:
            orm.get_one(RvClaim, 1).amount = Decimal("400.40")
        with db.maker.begin() as orm:  # outside any session: another field of a record the session inserted
            orm.get_one(RvClaim, 3).score = 0.5
        audit_before = len(db.audit_rows())

        with pytest.raises(RevertRefusedError) as refused:
            revert_session(db.engine, reverted, key=KEY)
        conflicts = refused.value.plan.conflicts
        assert {(c.table, c.record_id, c.field, c.later_session) for c in conflicts} == {
            ("rv_claim", '{"id":1}', "amount", later.id),
            ("rv_claim", '{"id":3}', "score", None),
        }
        assert all(c.later_seq > c.seq for c in conflicts)
        assert "conflict" in str(refused.value)
        assert db.state()[1]["amount"] == Decimal("400.40")
        assert len(db.audit_rows()) == audit_before  # nothing written

        plan = revert_session(db.engine, reverted, key=KEY, force=True)
        assert plan.applied
        assert plan.forced
        assert plan.conflicts
        state = db.state()
        assert state[1]["amount"] == Decimal("100.10")
        assert 3 not in state
        assert 2 in state
        assert verify(db.engine, key=KEY).ok

    @pytest.mark.parametrize("db", ["postgres-orm", "postgres-trigger"], indirect=True)
    def test_a_change_in_flight_is_waited_for_then_refused_as_a_conflict(self, db: Db) -> None:
        # Another transaction holds a change to the record when the revert starts: the revert must
        # not plan without it and then overwrite it once it commits.
        seed(db)
        with db.change(user_id="u-first") as first, db.maker.begin() as orm:
            orm.get_one(RvClaim, 1).title = "first"
        outcome: dict[str, Any] = {}

        def revert() -> None:
            try:
                outcome["plan"] = revert_session(db.engine, first.id, key=KEY)
            except RevertRefusedError as refused:
                outcome["refused"] = refused

        with db.change(user_id="u-second") as second:
            other = db.maker()
            other.get_one(RvClaim, 1).title = "second"
            other.flush()  # the row is locked and changed, not yet committed
            reverting = threading.Thread(target=revert)
            reverting.start()
            reverting.join(0.5)  # the revert is waiting for the row
            other.commit()
            other.close()
        reverting.join(30)
        assert "refused" in outcome, outcome
        conflicts = outcome["refused"].plan.conflicts
        assert [(c.field, c.later_session) for c in conflicts] == [("title", second.id)]
        assert db.state()[1]["title"] == "second"

    def test_later_changes_to_other_fields_do_not_conflict(self, db: Db) -> None:
        seed(db)
        with db.change() as s, db.maker.begin() as orm:
            orm.get_one(RvClaim, 1).amount = Decimal("5.55")
        with db.change(), db.maker.begin() as orm:
            orm.get_one(RvClaim, 1).title = "retitled later"
        plan = revert_session(db.engine, s.id, key=KEY)
        assert plan.applied
        assert not plan.conflicts
        assert (db.state()[1]["amount"], db.state()[1]["title"]) == (Decimal("100.10"), "retitled later")

    def test_masked_values_block_unless_forced(self, db: Db) -> None:
        seed(db)
        db.mask_ssn()
        with db.change() as s, db.maker.begin() as orm:
            orm.get_one(RvClaim, 1).ssn = "123-45-6789"
            orm.get_one(RvClaim, 1).amount = Decimal("9.99")
            orm.delete(orm.get_one(RvClaim, 2))
        with pytest.raises(RevertRefusedError, match="masked") as refused:
            revert_session(db.engine, s.id, key=KEY)
        blockers = {(b.table, b.record_id, b.field) for b in refused.value.plan.blockers}
        assert blockers == {("rv_claim", '{"id":1}', "ssn"), ("rv_claim", '{"id":2}', "ssn")}
        assert "recorded masked" in str(refused.value.plan.blockers[0])
        assert db.state()[1]["ssn"] == "123-45-6789"

        plan = revert_session(db.engine, s.id, key=KEY, force=True)
        assert plan.applied
        assert len(plan.skipped) == 2
        assert all("ssn recorded masked" in n for n in plan.skipped)
        state = db.state()
        assert (state[1]["amount"], state[1]["ssn"]) == (Decimal("100.10"), "123-45-6789")  # ssn left as it is
        assert (state[2]["title"], state[2]["ssn"]) == ("flood", None)  # re-inserted without its ssn
        assert verify(db.engine, key=KEY).ok

    def test_a_session_that_inserted_a_masked_value_can_be_reverted(self, db: Db) -> None:
        db.mask_ssn()
        with db.change() as s, db.maker.begin() as orm:
            orm.add(RvClaim(id=7, title="with ssn", ssn="987-65-4321"))
        plan = revert_session(db.engine, s.id, key=KEY)
        assert plan.applied
        assert 7 not in db.state()
        last = db.audit_rows()[-1]
        assert (last["change_type"], last["previous_values"]["ssn"]) == ("delete", MASKED)

    def test_dry_run_changes_nothing(self, db: Db) -> None:
        seed(db)
        reverted = busy_session(db)
        state, audit_count = db.state(), len(db.audit_rows())
        plan = revert_session(db.engine, reverted, key=KEY, dry_run=True)
        assert plan.dry_run
        assert not plan.applied
        assert len(plan.operations) == 4
        assert plan.revert_session_id is None
        assert db.state() == state
        assert len(db.audit_rows()) == audit_count

    def test_unknown_and_malformed_sessions(self, db: Db) -> None:
        with pytest.raises(SessionNotFoundError, match="no change made by session"):
            revert_session(db.engine, str(uuid.uuid4()))
        with pytest.raises(ValueError, match="must be a UUID"):
            revert_session(db.engine, "not-a-session")

    def test_reverting_the_revert_restores_the_session_again(self, db: Db) -> None:
        seed(db)
        reverted = busy_session(db)
        changed = db.state()
        plan = revert_session(db.engine, reverted, key=KEY)
        assert plan.revert_session_id is not None
        again = revert_session(db.engine, plan.revert_session_id, key=KEY)
        assert again.applied
        if db.mode == "sqlite-orm":
            assert db.state() == changed
        else:
            assert comparable(db.state()) == comparable(changed)
        assert verify(db.engine, key=KEY).ok

    def test_with_given_tables_and_inside_the_callers_transaction(self, db: Db) -> None:
        seed(db)
        reverted = busy_session(db)
        tables = Base.metadata if not db.trigger else None
        with db.engine.connect() as conn:
            plan = revert_session(conn, reverted, key=KEY, tables=tables)
            assert plan.applied
            conn.rollback()  # the caller's transaction: rolled back, nothing happened
        assert db.state()[1]["amount"] == Decimal("300.30")
        assert verify(db.engine, key=KEY).ok


# --- CLI ---------------------------------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["audit", "revert", *args], env=env, catch_exceptions=False)


class TestCli:
    @pytest.mark.parametrize("db", ["sqlite-orm", "postgres-trigger"], indirect=True)
    def test_exit_codes(self, db: Db) -> None:
        seed(db)
        reverted = busy_session(db)
        with db.change(), db.maker.begin() as orm:
            orm.get_one(RvClaim, 1).amount = Decimal("1.00")
        env = {"CHAIN": KEY.decode()}
        base = ["--db", db.url, "--key-env", "CHAIN"]

        dry = cli(reverted, *base, "--dry-run", env=env)
        assert dry.exit_code == 3, dry.output
        assert 'conflict: rv_claim {"id":1} field amount' in dry.output
        assert "would be refused" in dry.output

        refused = cli(reverted, *base, env=env)
        assert refused.exit_code == 3
        assert db.state()[1]["amount"] == Decimal("1.00")

        forced = cli(reverted, *base, "--force", "--user", "u-admin", env=env)
        assert forced.exit_code == 0, forced.output
        assert f"reverted 4 change(s) of session {reverted}" in forced.output
        assert db.state()[1]["amount"] == Decimal("100.10")

        assert cli(str(uuid.uuid4()), *base, env=env).exit_code == 1
        assert cli("not-a-uuid", *base, env=env).exit_code == 2
        assert cli(reverted, "--db", "mysql://x/y").exit_code == 2
        verified = CliRunner().invoke(main, ["audit", "verify", *base], env=env)
        assert verified.exit_code == 0, verified.output

    def test_help_documents_the_exit_codes(self) -> None:
        result = cli("--help")
        for line in (
            "0  reverted",
            "1  the audit log has no change",
            "2  usage error",
            "3  refused",
            "4  the database",
        ):
            assert line in result.output

    @pytest.mark.parametrize("db", ["postgres-orm"], indirect=True)
    def test_as_a_subprocess(self, db: Db) -> None:
        seed(db)
        reverted = busy_session(db)
        command = [sys.executable, "-m", "sessiontrace.cli", "audit", "revert", reverted, "--db", db.url]
        dry = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, timeout=60, check=False)
        assert dry.returncode == 0, dry.stderr
        assert "dry run: 4 change(s) would be undone" in dry.stdout
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert db.state()[1]["amount"] == Decimal("100.10")
        again = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert again.returncode == 3  # the revert's own changes now conflict with reverting again
