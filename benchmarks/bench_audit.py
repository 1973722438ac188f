"""Benchmark database-change auditing on PostgreSQL against un-audited writes and the peers.

    python benchmarks/bench_audit.py [--rows 2000] [--rounds 7] [--writers 8] [--transactions 150]
                                     [--server postgresql://postgres@127.0.0.1:5432] [--no-continuum]

The workload (the one the design's figures use): one ORM session inserts ``--rows`` rows in one
flush and commit, then changes one column on every row and commits again (``expire_on_commit``
off, so no variant reloads). It runs, each in its own scratch database and its own process (so
one variant's session listeners never slow another down), for:

- ``unaudited``: the plain table, no auditing;
- ``orm``: sessiontrace ORM mode (``enable_auditing``) with the PostgreSQL chain keyed (``install``);
- ``trigger``: sessiontrace trigger mode (``audit_tables``) on the plain table, ``instrument_engine``
  setting the session context;
- ``jsonb``: the peer baseline, a minimal generic trigger writing ``to_jsonb(OLD)`` / ``to_jsonb(NEW)``
  into a plain table (no chain, no context, no record id, no changed fields);
- ``jsonb-stmt``: the same minimal capture as statement-level triggers over transition tables,
  one set-based INSERT per statement instead of one per row (the other way a trigger can go);
- ``continuum``: SQLAlchemy-Continuum (the ``bench`` extra), versioning the same model.

Rounds are interleaved (the order rotates every round) and the median of ``--rounds`` is reported
with its ratio to the un-audited median, beside our targets (ORM mode <= 1.5x, trigger mode
<= 1.3x). Then ``--writers`` threads, each on its own connection, run ``--transactions`` short
transactions of 5 audited inserts each, in trigger mode and in ORM mode: changes/s (beside the
~3k ops/s supa_audit advises not to exceed) and a check that the chain did not fork (seq gap-free,
each ``prev_hash`` the previous ``row_hash``, each ``row_hash`` recomputed with the key). Every
audit log written is checked the same way at the end. Exit status 1 when a check or target fails.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import psycopg
from sqlalchemy import MetaData, Numeric, String, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import sessiontrace
from sessiontrace.audit import Audited, audit_log_table, chain, enable_auditing
from sessiontrace.audit import postgres as audit_postgres

KEY = b"bench-audit-key-0123456789abcdef"
VARIANTS = ("unaudited", "orm", "trigger", "jsonb", "jsonb-stmt", "continuum")
TARGETS = {"orm": 1.5, "trigger": 1.3}
SUPA_AUDIT_OPS_PER_S = 3_000
ROWS_PER_TRANSACTION = 5
JSON_COLUMNS = ("changed_fields", "previous_values", "new_values")

# The peers' log: the old and new row as JSONB, nothing else.
GENERIC_AUDIT_TABLE = """
CREATE TABLE generic_audit (
    id bigserial PRIMARY KEY,
    table_name text NOT NULL,
    op text NOT NULL,
    old_row jsonb,
    new_row jsonb,
    changed_at timestamptz NOT NULL DEFAULT now(),
    db_user text NOT NULL DEFAULT current_user
);
"""

GENERIC_JSONB_TRIGGER = """
CREATE FUNCTION generic_audit() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO generic_audit (table_name, op, old_row, new_row)
    VALUES (TG_TABLE_NAME, TG_OP,
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    RETURN NULL;
END
$fn$;
CREATE TRIGGER generic_audit AFTER INSERT OR UPDATE OR DELETE ON claim
    FOR EACH ROW EXECUTE FUNCTION generic_audit();
"""

# A trigger with transition tables fires for one event only, hence three; each branch of the
# function touches only the tables its event has (PL/pgSQL plans a statement when it first runs).
GENERIC_JSONB_STATEMENT_TRIGGER = """
CREATE FUNCTION generic_audit_statement() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO generic_audit (table_name, op, new_row)
        SELECT TG_TABLE_NAME, TG_OP, to_jsonb(n) FROM new_rows n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO generic_audit (table_name, op, old_row, new_row)
        SELECT TG_TABLE_NAME, TG_OP, to_jsonb(o), to_jsonb(n) FROM old_rows o JOIN new_rows n USING (id);
    ELSE
        INSERT INTO generic_audit (table_name, op, old_row)
        SELECT TG_TABLE_NAME, TG_OP, to_jsonb(o) FROM old_rows o;
    END IF;
    RETURN NULL;
END
$fn$;
CREATE TRIGGER generic_audit_insert AFTER INSERT ON claim REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION generic_audit_statement();
CREATE TRIGGER generic_audit_update AFTER UPDATE ON claim REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION generic_audit_statement();
CREATE TRIGGER generic_audit_delete AFTER DELETE ON claim REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION generic_audit_statement();
"""


# --- models (each worker process defines only the one it needs) -----------------------------------


def plain_model(versioned: bool = False) -> type[Any]:
    class Base(DeclarativeBase):
        pass

    namespace: dict[str, Any] = {
        "__tablename__": "claim",
        "__annotations__": {
            "id": Mapped[int],
            "title": Mapped[str],
            "amount": Mapped[Decimal],
            "status": Mapped[str],
            "note": Mapped[str | None],
        },
        "id": mapped_column(primary_key=True, autoincrement=False),
        "title": mapped_column(String(100)),
        "amount": mapped_column(Numeric(12, 2)),
        "status": mapped_column(String(20)),
        "note": mapped_column(String(200), nullable=True),
    }
    if versioned:
        namespace["__versioned__"] = {}
    return type("Claim", (Base,), namespace)


def audited_model() -> type[Any]:
    class Base(DeclarativeBase):
        pass

    class Claim(Audited, Base):
        __tablename__ = "claim"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        title: Mapped[str] = mapped_column(String(100))
        amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
        status: Mapped[str] = mapped_column(String(20))
        note: Mapped[str | None] = mapped_column(String(200), nullable=True)

    return Claim


# --- one variant, in its own process -----------------------------------------------------------------


class Worker:
    """Sets one variant up in its own database and runs the workload on request."""

    def __init__(self, variant: str, url: str, rows: int) -> None:
        self.variant = variant
        self.rows = rows
        self.engine = create_engine(url)
        self.model: type[Any]
        if variant == "continuum":
            self._setup_continuum()
        elif variant == "orm":
            self.model = audited_model()
            audit_postgres.install(self.engine, key=KEY)
            self.model.metadata.create_all(self.engine)
        else:
            self.model = plain_model()
            self.model.metadata.create_all(self.engine)
            if variant == "trigger":
                audit_postgres.install(self.engine, key=KEY)
                audit_postgres.audit_tables(self.engine, ["claim"])
                audit_postgres.instrument_engine(self.engine)
            elif variant in ("jsonb", "jsonb-stmt"):
                peer = GENERIC_JSONB_TRIGGER if variant == "jsonb" else GENERIC_JSONB_STATEMENT_TRIGGER
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(GENERIC_AUDIT_TABLE)
                    conn.exec_driver_sql(peer)
        self.maker = sessionmaker(self.engine, expire_on_commit=False)
        if variant == "orm":
            enable_auditing(self.maker, audit_table=audit_log_table(MetaData()), key=KEY)
        self.next_id = 1

    def _setup_continuum(self) -> None:
        from sqlalchemy.orm import configure_mappers
        from sqlalchemy_continuum import make_versioned  # type: ignore[import-untyped]

        make_versioned(user_cls=None)
        self.model = plain_model(versioned=True)
        configure_mappers()
        self.model.metadata.create_all(self.engine)

    def run(self) -> float:
        """One round of the workload; milliseconds."""
        first = self.next_id
        self.next_id += self.rows
        model = self.model
        with sessiontrace.session(user_id="bench-user"):
            began = time.perf_counter()
            with self.maker() as orm:
                claims = [
                    model(id=i, title=f"claim {i}", amount=Decimal(i) / 4, status="open", note="filed by phone")
                    for i in range(first, first + self.rows)
                ]
                orm.add_all(claims)
                orm.commit()
                for claim in claims:
                    claim.status = "closed"
                orm.commit()
            return (time.perf_counter() - began) * 1000

    def concurrent(self, writers: int, transactions: int) -> dict[str, Any]:
        """``writers`` threads, each on its own connection: short transactions of 5 inserts."""
        errors: list[BaseException] = []
        start = threading.Barrier(writers)
        base = self.next_id
        self.next_id += writers * transactions * ROWS_PER_TRANSACTION
        model = self.model

        def write(writer: int) -> None:
            first = base + writer * transactions * ROWS_PER_TRANSACTION
            try:
                with sessiontrace.session(user_id=f"writer-{writer}"), self.maker() as orm:
                    orm.connection()  # connect before the start line
                    orm.rollback()
                    start.wait()
                    for t in range(transactions):
                        ids = range(first + t * ROWS_PER_TRANSACTION, first + (t + 1) * ROWS_PER_TRANSACTION)
                        orm.add_all(model(id=i, title=f"c {i}", amount=Decimal(1), status="open") for i in ids)
                        orm.commit()
            except BaseException as exc:
                errors.append(exc)

        before = self.audit_count()
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        changes = writers * transactions * ROWS_PER_TRANSACTION
        written = self.audit_count() - before
        return {
            "changes_per_s": changes / elapsed,
            "changes": changes,
            "audit_rows": written,
            "errors": [repr(e) for e in errors],
            "chain": self.check_chain(),
        }

    def audit_count(self) -> int:
        with self.engine.connect() as conn:
            count: int = conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one()
            return count

    def check_chain(self) -> str:
        """'ok (n rows)' or the first problem: a seq gap, a fork (prev_hash is not the previous
        row_hash) or a row_hash that does not recompute with the key."""
        if self.variant not in ("orm", "trigger"):
            return "n/a"
        columns = ", ".join(f"{c}::text AS {c}" if c in JSON_COLUMNS else c for c in chain.LINE_FIELDS)
        previous = chain.GENESIS
        count = 0
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=5000).execute(
                text(f"SELECT {columns}, prev_hash, row_hash FROM audit_log ORDER BY seq")
            )
            for expected, row in enumerate(result.mappings(), start=1):
                if row["seq"] != expected:
                    return f"GAP: seq {row['seq']} where {expected} was expected"
                if row["prev_hash"] != previous:
                    return f"FORK at seq {expected}"
                if row["row_hash"] != chain.link(previous, chain.line(dict(row)), KEY):
                    return f"HASH MISMATCH at seq {expected}"
                previous = row["row_hash"]
                count = expected
        return f"ok ({count} rows)"


def serve(variant: str, url: str, rows: int) -> None:
    """The worker's loop: one JSON answer line per command line on stdin."""
    try:
        worker = Worker(variant, url, rows)
        answer: Any = {"ready": True}
    except Exception as exc:  # reported to the parent, which prints n/a with the reason
        answer = {"ready": False, "reason": f"{type(exc).__name__}: {exc}"[:300]}
    print(json.dumps(answer), flush=True)
    if not answer["ready"]:
        return
    for command in sys.stdin:
        name, *args = command.split()
        if name == "run":
            answer = {"ms": worker.run()}
        elif name == "concurrent":
            answer = worker.concurrent(int(args[0]), int(args[1]))
        elif name == "check":
            answer = {"chain": worker.check_chain()}
        else:
            break
        print(json.dumps(answer), flush=True)
    worker.engine.dispose()


# --- the parent ----------------------------------------------------------------------------------------


class Remote:
    def __init__(self, variant: str, url: str, rows: int) -> None:
        self.variant = variant
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", variant, "--url", url, "--rows", str(rows)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = self._read()
        self.ready: bool = hello["ready"]
        self.reason: str = hello.get("reason", "")

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.variant} worker died")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


@contextmanager
def scratch_databases(server: str, count: int) -> Iterator[list[str]]:
    names = [f"st_bench_{secrets.token_hex(4)}" for _ in range(count)]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield [f"{server.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}" for name in names]
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def continuum_available() -> str | None:
    """None when SQLAlchemy-Continuum imports, else why not."""
    try:
        import sqlalchemy_continuum  # noqa: F401
    except Exception as exc:
        return f"not installed ({type(exc).__name__}); pip install -e '.[bench]'"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--transactions", type=int, default=150, help="per writer, 5 inserts each")
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--no-continuum", action="store_true")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        serve(args.worker, args.url, args.rows)
        return 0

    skipped: dict[str, str] = {}
    if args.no_continuum:
        skipped["continuum"] = "skipped (--no-continuum)"
    elif (reason := continuum_available()) is not None:
        skipped["continuum"] = reason
    variants = [v for v in VARIANTS if v not in skipped]
    failures: list[str] = []
    with scratch_databases(args.server, len(variants)) as urls:
        remotes: dict[str, Remote] = {}
        try:
            for variant, url in zip(variants, urls, strict=True):
                remote = Remote(variant, url, args.rows)
                if remote.ready:
                    remotes[variant] = remote
                else:
                    skipped[variant] = remote.reason
                    remote.close()
            if "unaudited" not in remotes:
                print(f"un-audited baseline failed: {skipped.get('unaudited')}")
                return 1
            for remote in remotes.values():  # warm-up: connections, mapper configuration, plans
                remote.ask("run")
            timings: dict[str, list[float]] = {v: [] for v in remotes}
            order = list(remotes)
            for round_index in range(args.rounds):
                shift = round_index % len(order)
                for variant in order[shift:] + order[:shift]:
                    timings[variant].append(remotes[variant].ask("run")["ms"])
            report_rounds(args, timings, skipped, failures)
            report_concurrency(args, remotes, failures)
            for variant in ("orm", "trigger"):
                if variant in remotes:
                    verdict = remotes[variant].ask("check")["chain"]
                    print(f"chain of the {variant} log after everything: {verdict}")
                    if not verdict.startswith("ok"):
                        failures.append(f"{variant} chain: {verdict}")
        finally:
            for remote in remotes.values():
                remote.close()
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    return 0


def report_rounds(
    args: argparse.Namespace, timings: dict[str, list[float]], skipped: dict[str, str], failures: list[str]
) -> None:
    base = statistics.median(timings["unaudited"])
    print(
        f"\ninsert {args.rows:,} rows (one flush, one commit), then update one column of each (one commit);"
        f" median of {args.rounds} interleaved rounds\n"
    )
    print(f"{'variant':<34} {'median ms':>10} {'min ms':>9} {'vs un-audited':>14}  target")
    labels = {
        "unaudited": "un-audited",
        "orm": "sessiontrace ORM mode (chain)",
        "trigger": "sessiontrace trigger mode (chain)",
        "jsonb": "generic JSONB trigger (peer)",
        "jsonb-stmt": "the same, statement-level (peer)",
        "continuum": "SQLAlchemy-Continuum",
    }
    for variant in VARIANTS:
        label = labels[variant]
        if variant not in timings:
            print(f"{label:<34} {'n/a':>10}   {skipped.get(variant, '')}")
            continue
        median = statistics.median(timings[variant])
        ratio = median / base
        verdict = ""
        if variant in TARGETS:
            passed = ratio <= TARGETS[variant]
            verdict = f"<= {TARGETS[variant]}x {'PASS' if passed else 'FAIL'}"
            if not passed:
                failures.append(f"{variant} {ratio:.2f}x > {TARGETS[variant]}x")
        print(f"{label:<34} {median:>10.1f} {min(timings[variant]):>9.1f} {ratio:>13.2f}x  {verdict}")


def report_concurrency(args: argparse.Namespace, remotes: dict[str, Remote], failures: list[str]) -> None:
    print(
        f"\n{args.writers} concurrent writers, {args.transactions} transactions each of"
        f" {ROWS_PER_TRANSACTION} audited inserts (supa_audit advises staying under ~{SUPA_AUDIT_OPS_PER_S:,} ops/s)\n"
    )
    for variant in ("trigger", "orm"):
        if variant not in remotes:
            continue
        result = remotes[variant].ask(f"concurrent {args.writers} {args.transactions}")
        rate = result["changes_per_s"]
        side = "above" if rate > SUPA_AUDIT_OPS_PER_S else "below"
        print(
            f"{variant:<8} {rate:>9,.0f} changes/s ({rate / SUPA_AUDIT_OPS_PER_S:.1f}x supa_audit's ~3k, {side});"
            f" audit rows {result['audit_rows']}/{result['changes']}; chain {result['chain']}"
        )
        if result["errors"]:
            failures.append(f"{variant} writers raised {result['errors'][:3]}")
        if result["audit_rows"] != result["changes"]:
            failures.append(f"{variant}: {result['audit_rows']} audit rows for {result['changes']} changes")
        if not str(result["chain"]).startswith("ok"):
            failures.append(f"{variant} concurrent chain: {result['chain']}")


if __name__ == "__main__":
    sys.exit(main())
