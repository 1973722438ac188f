"""The example's records: claims (written by the intake) and reserves (written by the ledger), in
one database that both services open, through SQLAlchemy models that sessiontrace audits.

Every write goes through an audited session (``enable_auditing``), so each change also writes an
audit log row in the same transaction, carrying the session, the user and the span (trace and
span ids) that made it: ``sessiontrace path <id> --audit-db URL`` shows each change under the
workflow step that made it, with the diff. That is why the services write inside their steps.

- ``claims``: inserted when the claim is validated; severity and confidence set when it is
  classified; status ``in_review`` → ``reviewed`` (and the reviewer's severity) in human review;
  status ``reserved`` and the reserve's id once the ledger has reserved the funds.
- ``reserves``: inserted by the ledger when it records a reserve.

The URL is any SQLAlchemy URL: a SQLite file (the demo's default), or PostgreSQL, where
``sessiontrace.audit.postgres.install`` first sets up the log with the trigger that chains it.

Two settings suit a demo only. The span events carry the changed values too
(``record_values_in_spans=True``): the data here is made up, whereas an application whose rows hold
personal data leaves that off (the default) and reads values from the audit log, whose access it
controls. And the hash chain is keyed with the empty key; a deployment gives ``enable_auditing``
(SQLite) or ``install`` (PostgreSQL) a secret one.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, MetaData, Numeric, String, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from sessiontrace.audit import Audited, audit_log_table, enable_auditing

if TYPE_CHECKING:
    from claims_triage import triage


class Base(DeclarativeBase):
    metadata = MetaData()


class Claim(Audited, Base):
    """A filed claim as it moves through triage."""

    __tablename__ = "claims"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    policy: Mapped[str] = mapped_column(String(16))
    line: Mapped[str] = mapped_column(String(16))
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    description: Mapped[str] = mapped_column(String(2000))
    severity: Mapped[str | None] = mapped_column(String(64))
    """``None`` until classified. 64 characters: a chat model's unrecognised answer is kept too."""
    # A probability, kept as NUMERIC in the database and a float in Python (and in the audit log).
    confidence: Mapped[float | None] = mapped_column(Numeric(5, 4, asdecimal=False))
    status: Mapped[str] = mapped_column(String(16))
    """``validated``, ``in_review``, ``reviewed``, ``reserved``."""
    reserve_id: Mapped[str | None] = mapped_column(String(16))


class Reserve(Audited, Base):
    """Funds the ledger holds for a claim."""

    __tablename__ = "reserves"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    claim_id: Mapped[str] = mapped_column(String(16), index=True)
    policy: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(64))
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))


AUDIT_LOG = audit_log_table(Base.metadata)


def new_reserve_id() -> str:
    return f"R-{uuid.uuid4().hex[:8].upper()}"


def money(amount: float) -> Decimal:
    """An amount in cents, exactly (``38500.0`` → ``Decimal("38500.00")``)."""
    return Decimal(f"{amount:.2f}")


def database_url(text: str) -> URL:
    """``text`` as a URL; ``postgresql://`` gets psycopg 3, the driver of sessiontrace's ``audit`` extra."""
    url = make_url(text)
    return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url


def create_schema(engine: Engine) -> None:
    """Create what is missing: the audit log (on PostgreSQL with ``install()``, so its chain trigger
    exists before the first change) and the example's tables. Safe when both services start at
    once: the first to get there creates, the other waits for it, then finds everything there."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            from sessiontrace.audit import postgres

            # Joins this transaction and holds its setup lock until the commit, create_all included.
            postgres.install(conn)
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock first, then look and create
        Base.metadata.create_all(conn)


class ClaimsDatabase:
    """The example's database, audited. Each method is one short transaction, made in the caller's
    context: inside a step, the audit rows carry that step's span."""

    def __init__(self, url: str | URL, *, record_values_in_spans: bool = True) -> None:
        self.url = database_url(url) if isinstance(url, str) else url
        sqlite = self.url.get_backend_name() == "sqlite"
        # Two processes share a SQLite file: wait for the other's write rather than fail at once.
        self.engine = create_engine(self.url, connect_args={"timeout": 30} if sqlite else {})
        create_schema(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        enable_auditing(self.sessions, audit_table=AUDIT_LOG, record_values_in_spans=record_values_in_spans)

    def file(self, claim: triage.Claim) -> None:
        """Insert a validated claim."""
        with self.sessions.begin() as session:
            session.add(
                Claim(
                    id=claim.id,
                    policy=claim.policy,
                    line=claim.line,
                    amount=money(claim.amount),
                    description=claim.description,
                    status="validated",
                )
            )

    def update_claim(self, claim_id: str, **values: Any) -> None:
        """Set the given columns of a claim; values it already has are not written (nor audited)."""
        with self.sessions.begin() as session:
            claim = session.get(Claim, claim_id)
            if claim is None:
                raise LookupError(f"no claim {claim_id}")
            for name, value in values.items():
                if getattr(claim, name) != value:
                    setattr(claim, name, value)

    def record_reserve(self, claim_id: str, policy: str, severity: str, amount: float) -> str:
        """Insert a reserve; returns its id."""
        reserve_id = new_reserve_id()
        with self.sessions.begin() as session:
            session.add(
                Reserve(id=reserve_id, claim_id=claim_id, policy=policy, severity=severity, amount=money(amount))
            )
        return reserve_id

    def close(self) -> None:
        self.engine.dispose()


class IntakeRecords:
    """The intake's writes (``triage.ClaimRecords``), off the event loop: each runs in a worker
    thread with a copy of the caller's context, so its span is still the step's."""

    def __init__(self, database: ClaimsDatabase) -> None:
        self.database = database

    async def filed(self, claim: triage.Claim) -> None:
        await asyncio.to_thread(self.database.file, claim)

    async def updated(self, claim_id: str, **values: Any) -> None:
        await asyncio.to_thread(self.database.update_claim, claim_id, **values)
