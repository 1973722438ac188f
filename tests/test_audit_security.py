"""The PostgreSQL audit log against the roles that should not be able to tamper with it, each
attack made as that role would make it (``SET ROLE``): a login role with no privilege on the log,
the app role, the owner of an audited table. Each test starts from a database of its own with the
log installed (owner and app roles), one audited table and four chained rows."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from _audit_db import POSTGRES_SERVER
from sessiontrace.audit import chain
from sessiontrace.audit.postgres import AuditSetupError, _Names, audit_tables, install, unaudit_tables
from sessiontrace.audit.verify import verify

KEY = b"security-test-key"
TRIGGER_FUNCTIONS = ("capture", "chain", "stamp", "refuse")
# The audit log's columns, for a table of the attacker's own that the chain trigger would fill.
LOG_SHAPED = (
    "seq bigint, table_name varchar, record_id text, change_type varchar, changed_fields jsonb,"
    " previous_values jsonb, new_values jsonb, session_id uuid, changed_by_user_id varchar,"
    " change_timestamp timestamptz, trace_id varchar, span_id varchar, transaction_id varchar,"
    " db_user varchar, source varchar, prev_hash varchar, row_hash varchar"
)
# On such a table the chain function would HMAC, with the log's key, whatever is inserted.
CHAIN_ON_ORACLE = "CREATE TRIGGER o BEFORE INSERT ON oracle FOR EACH ROW EXECUTE FUNCTION public.audit_log_chain()"
# Run as the log's owner, this deletes the audit row of seq 4 and re-chains the rest with the key:
# verify() would say "intact" (t6_definer_escalation.py). Anyone else gets "permission denied".
TAKEOVER_BODY = r"""
DECLARE k bytea; prev text := repeat('0', 64); r record; line text;
BEGIN
  SELECT key INTO k FROM public.audit_log_secret;
  ALTER TABLE public.audit_log DISABLE TRIGGER USER;
  DELETE FROM public.audit_log WHERE seq = 4;
  UPDATE public.audit_log SET seq = seq - 1 WHERE seq > 4;
  FOR r IN SELECT * FROM public.audit_log WHERE seq > 0 ORDER BY seq LOOP
    line := array_to_string(ARRAY[r.seq::text, r.table_name, r.record_id, r.change_type, r.changed_fields::text,
      r.previous_values::text, r.new_values::text, r.session_id::text, r.changed_by_user_id,
      (extract(epoch FROM r.change_timestamp) * 1000000)::bigint::text, r.trace_id, r.span_id,
      r.transaction_id, r.db_user, r.source], chr(31), '');
    UPDATE public.audit_log SET prev_hash = prev,
      row_hash = encode(public.hmac(convert_to(prev || E'\n' || line, 'UTF8'), k, 'sha256'), 'hex') WHERE id = r.id
      RETURNING row_hash INTO prev;
  END LOOP;
  ALTER TABLE public.audit_log ENABLE TRIGGER USER;
  RETURN '"x"';
END
"""


@dataclass(frozen=True)
class Roles:
    owner: str
    app: str
    outsider: str  # no privilege beyond PUBLIC's (CONNECT, TEMP)
    table_owner: str  # owns an audited table and a schema of its own, nothing on the log


@dataclass(frozen=True)
class Db:
    engine: Engine
    name: str
    roles: Roles


def _admin() -> Engine:
    return create_engine(f"{POSTGRES_SERVER}/test", isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="module")
def roles() -> Iterator[Roles]:
    suffix = secrets.token_hex(4)
    made = Roles(f"st_sec_owner_{suffix}", f"st_sec_app_{suffix}", f"st_sec_out_{suffix}", f"st_sec_tab_{suffix}")
    yield made
    admin = _admin()
    with admin.connect() as conn:
        for role in (made.owner, made.app, made.outsider, made.table_owner):
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    admin.dispose()


@pytest.fixture
def db(roles: Roles) -> Iterator[Db]:
    """The log installed with the owner and app roles; ``claims`` audited, with four audit rows
    (seq 4 is the update an attacker wants gone); ``tab.items`` owned by the table owner."""
    name = f"st_sec_{secrets.token_hex(5)}"
    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        for role in (roles.outsider, roles.table_owner):
            if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first() is None:
                conn.execute(text(f'CREATE ROLE "{role}" NOLOGIN'))
    engine = create_engine(f"{POSTGRES_SERVER}/{name}")
    try:
        install(engine, key=KEY, owner_role=roles.owner, app_role=roles.app)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE claims (id int PRIMARY KEY, amount int)"))
            conn.execute(text(f'GRANT SELECT, INSERT, UPDATE, DELETE ON claims TO "{roles.app}"'))
            conn.execute(text(f'CREATE SCHEMA tab AUTHORIZATION "{roles.table_owner}"'))
            conn.execute(text(f'GRANT USAGE ON SCHEMA tab TO "{roles.app}"'))
            conn.execute(text(f'SET LOCAL ROLE "{roles.table_owner}"'))
            conn.execute(text("CREATE TABLE tab.items (id int PRIMARY KEY, note text)"))
            conn.execute(text(f'GRANT SELECT, INSERT, UPDATE, DELETE ON tab.items TO "{roles.app}"'))
        audit_tables(engine, ["claims", "tab.items"])
        with engine.begin() as conn:
            for i in range(1, 4):
                conn.execute(text("INSERT INTO claims VALUES (:i, :a)"), {"i": i, "a": i * 100})
            conn.execute(text("UPDATE claims SET amount = 0 WHERE id = 2"))
        yield Db(engine, name, roles)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def bare_database() -> Iterator[Engine]:
    """A database of its own, without the fixture's log, roles and rows."""
    name = f"st_sec_{secrets.token_hex(5)}"
    admin = _admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(f"{POSTGRES_SERVER}/{name}")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def as_role(conn: Connection, role: str) -> None:
    conn.execute(text(f'SET LOCAL ROLE "{role}"'))


def log(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                text("SELECT seq, table_name, record_id, change_type, new_values FROM audit_log ORDER BY seq")
            ).mappings()
        ]


def assert_untouched(db: Db, rows: int = 4) -> None:
    """The fixture's rows are all there and the chain holds."""
    report = verify(db.engine, key=KEY)
    assert report.ok, report.summary()
    assert report.rows_checked == rows
    assert [(r["seq"], r["record_id"], r["change_type"]) for r in log(db.engine)][:4] == [
        (1, '{"id":1}', "insert"),
        (2, '{"id":2}', "insert"),
        (3, '{"id":3}', "insert"),
        (4, '{"id":2}', "update"),
    ]


# --- bugs 1 and 2: who may attach the trigger functions --------------------------------------------


class TestTriggerFunctionsAreTheOwners:
    """A role without privileges used to attach the SECURITY DEFINER functions to a temp table of
    its own (t1_public_execute.py, t6b_definer_escalation_temp_only.py)."""

    @pytest.mark.parametrize("function", TRIGGER_FUNCTIONS)
    def test_an_outsider_cannot_attach_them(self, db: Db, function: str) -> None:
        with db.engine.begin() as conn:
            as_role(conn, db.roles.outsider)
            conn.execute(text(f"CREATE TEMP TABLE mine ({LOG_SHAPED}, id int PRIMARY KEY)"))
            with pytest.raises(DBAPIError, match=rf"permission denied for function public\.audit_log_{function}"):
                conn.execute(
                    text(
                        f"CREATE TRIGGER t BEFORE INSERT ON mine FOR EACH ROW"
                        f" EXECUTE FUNCTION public.audit_log_{function}()"
                    )
                )

    def test_an_outsider_cannot_forge_audit_rows(self, db: Db) -> None:
        with db.engine.begin() as conn:
            as_role(conn, db.roles.outsider)
            conn.execute(text("CREATE TEMP TABLE fake (id int PRIMARY KEY, amount int)"))
            conn.execute(text("SAVEPOINT attach"))
            try:
                conn.execute(
                    text(
                        "CREATE TRIGGER t AFTER INSERT OR UPDATE ON fake FOR EACH ROW EXECUTE FUNCTION"
                        " public.audit_log_capture('{id}','{}','{}','claims','{}','{amount,id}')"
                    )
                )
                conn.execute(text("SELECT set_config('sessiontrace.user_id', 'alice', true)"))
                conn.execute(text("INSERT INTO fake VALUES (1, 100)"))
                conn.execute(text("UPDATE fake SET amount = 999999 WHERE id = 1"))
            except DBAPIError:
                conn.execute(text("ROLLBACK TO SAVEPOINT attach"))
        assert_untouched(db)

    def test_the_chain_is_no_hmac_oracle_for_an_outsider(self, db: Db) -> None:
        setting = _Names("public", "audit_log").head_setting
        with db.engine.begin() as conn:
            as_role(conn, db.roles.outsider)
            conn.execute(text(f"CREATE TEMP TABLE oracle ({LOG_SHAPED})"))
            conn.execute(text("SAVEPOINT attach"))
            try:
                conn.execute(text(CHAIN_ON_ORACLE))
                xid = conn.execute(text("SELECT pg_current_xact_id()::text")).scalar_one()
                conn.execute(text("SELECT set_config(:n, :v, true)"), {"n": setting, "v": f"{xid}:41:{'a' * 64}"})
                conn.execute(
                    text(
                        "INSERT INTO oracle (table_name, record_id, change_type, changed_fields, change_timestamp,"
                        " source) VALUES ('claims', :r, 'update', '[\"amount\"]', now(), 'orm')"
                    ),
                    {"r": '{"id":7}'},
                )
                hashed = conn.execute(text("SELECT row_hash FROM oracle")).scalar_one()
            except DBAPIError:
                conn.execute(text("ROLLBACK TO SAVEPOINT attach"))
                hashed = None
        assert hashed is None

    def test_the_chain_refuses_any_table_but_the_log(self, db: Db) -> None:
        """Even for whoever may still attach it (a superuser here): on another table it would HMAC
        whatever it is given."""
        with db.engine.begin() as conn:
            conn.execute(text(f"CREATE TEMP TABLE oracle ({LOG_SHAPED})"))
            conn.execute(text(CHAIN_ON_ORACLE))
            with pytest.raises(DBAPIError, match=r"runs only on public\.audit_log, not on pg_temp_"):
                conn.execute(text("INSERT INTO oracle (table_name, change_timestamp) VALUES ('claims', now())"))

    def test_the_chain_still_runs_on_every_partition_of_the_log(self) -> None:
        """The name check is a fast path: a DEFAULT partition, or one in another schema, is found in
        the catalog."""
        with bare_database() as engine:
            install(engine, key=KEY, partition_by_month=True)
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT"))
                conn.execute(text("CREATE SCHEMA old"))
                conn.execute(
                    text(
                        "CREATE TABLE old.y2000 PARTITION OF audit_log"
                        " FOR VALUES FROM ('2000-01-01 00:00:00+00') TO ('2001-01-01 00:00:00+00')"
                    )
                )
            with engine.begin() as conn:
                now = datetime.now(timezone.utc)
                for moment in (
                    datetime(2000, 6, 1, tzinfo=timezone.utc),
                    now,
                    datetime(2999, 1, 1, tzinfo=timezone.utc),
                ):
                    conn.execute(
                        text(
                            "INSERT INTO audit_log (table_name, record_id, change_type, changed_fields,"
                            " change_timestamp, source) VALUES ('claims', :r, 'insert', '[]', :t, 'orm')"
                        ),
                        {"r": '{"id":1}', "t": moment},
                    )
            with engine.connect() as conn:
                placed = conn.execute(text("SELECT tableoid::regclass::text FROM audit_log ORDER BY seq")).scalars()
                assert next(placed) == "old.y2000"
                assert next(placed).startswith("audit_log_p")
                assert next(placed) == "audit_log_default"
            report = verify(engine, key=KEY)
            assert report.ok, report.summary()
            assert report.rows_checked == 3

    def test_the_definer_escalation_through_a_temp_type_fails(self, db: Db) -> None:
        """t6b: a temp enum whose cast to json, called by to_jsonb() inside the capture function,
        ran as the log's owner."""
        with db.engine.begin() as conn:
            as_role(conn, db.roles.outsider)
            conn.execute(text("CREATE TYPE pg_temp.e AS ENUM ('x')"))
            conn.execute(
                text(f"CREATE FUNCTION pg_temp.e_json(pg_temp.e) RETURNS json LANGUAGE plpgsql AS $${TAKEOVER_BODY}$$")
            )
            conn.execute(text("CREATE CAST (pg_temp.e AS json) WITH FUNCTION pg_temp.e_json(pg_temp.e)"))
            conn.execute(text("CREATE TEMP TABLE bait (id int PRIMARY KEY, v pg_temp.e)"))
            with pytest.raises(DBAPIError, match=r"permission denied for function public\.audit_log_capture"):
                conn.execute(
                    text(
                        "CREATE TRIGGER t AFTER INSERT ON bait FOR EACH ROW"
                        " EXECUTE FUNCTION public.audit_log_capture('{id}','{}','{}','bait','{}')"
                    )
                )
        assert_untouched(db)

    def test_only_the_context_function_stays_public(self, db: Db) -> None:
        with db.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT p.proname, has_function_privilege(:o, p.oid, 'EXECUTE'),"
                    " has_function_privilege(:a, p.oid, 'EXECUTE'), has_function_privilege(:x, p.oid, 'EXECUTE')"
                    " FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'audit_log_%'"
                ),
                {"o": db.roles.owner, "a": db.roles.app, "x": db.roles.outsider},
            ).all()
        assert {name: (owner, app, outsider) for name, owner, app, outsider in rows} == {
            "audit_log_capture": (True, False, False),
            "audit_log_chain": (True, False, False),
            "audit_log_stamp": (True, False, False),
            "audit_log_refuse": (True, False, False),
            "audit_log_context": (True, True, True),  # called as the writer by stamp and capture
        }

    def test_a_default_privilege_grant_is_revoked_too(self, db: Db) -> None:
        with db.engine.begin() as conn:
            conn.execute(text(f'ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO "{db.roles.outsider}"'))
            conn.execute(text("DROP FUNCTION audit_log_chain() CASCADE"))  # recreated with the default grant
        install(db.engine, key=KEY, owner_role=db.roles.owner, app_role=db.roles.app)
        with db.engine.connect() as conn:
            granted = conn.execute(
                text("SELECT has_function_privilege(:x, 'audit_log_chain()', 'EXECUTE')"), {"x": db.roles.outsider}
            ).scalar_one()
        assert granted is False

    def test_audit_tables_by_a_role_that_may_not_attach_them_is_refused(self, db: Db) -> None:
        with db.engine.begin() as conn:
            as_role(conn, db.roles.table_owner)
            conn.execute(text("CREATE TABLE tab.more (id int PRIMARY KEY)"))
            with pytest.raises(AuditSetupError, match="superuser or a member of the log's owner role"):
                audit_tables(conn, ["tab.more"])

    def test_install_and_audit_tables_still_work_as_the_owner_role(self, db: Db) -> None:
        with db.engine.begin() as conn:
            conn.execute(text(f'GRANT CREATE ON SCHEMA public TO "{db.roles.owner}"'))
            conn.execute(text("CREATE TABLE ledger (id int PRIMARY KEY, amount int)"))
            conn.execute(text(f'ALTER TABLE ledger OWNER TO "{db.roles.owner}"'))
            conn.execute(text(f'GRANT INSERT, UPDATE ON ledger TO "{db.roles.app}"'))
        for _ in range(2):  # re-runnable
            with db.engine.begin() as conn:
                as_role(conn, db.roles.owner)
                install(conn, key=KEY, owner_role=db.roles.owner, app_role=db.roles.app)
                audit_tables(conn, ["ledger"])
        with db.engine.begin() as conn:
            as_role(conn, db.roles.app)
            conn.execute(text("INSERT INTO ledger VALUES (1, 5)"))
        assert log(db.engine)[-1]["table_name"] == "ledger"
        assert_untouched(db, rows=5)


# --- bug 1 (c): the owner of an audited table --------------------------------------------------------


class TestTableOwner:
    """The owner of an audited table (or of a type one of its columns uses) decides what the column's
    cast to json does, and to_jsonb() calls it: it must run as the writer, never as the log's owner."""

    def _cast_column(self, conn: Connection, body: str) -> None:
        conn.execute(text("CREATE TYPE tab.e AS ENUM ('x')"))
        conn.execute(text(f"CREATE FUNCTION tab.e_json(tab.e) RETURNS json LANGUAGE plpgsql AS $${body}$$"))
        conn.execute(text("CREATE CAST (tab.e AS json) WITH FUNCTION tab.e_json(tab.e)"))
        conn.execute(text("ALTER TABLE tab.items ADD COLUMN v tab.e"))

    def test_a_cast_on_a_column_runs_as_the_writer(self, db: Db) -> None:
        with db.engine.begin() as conn:
            as_role(conn, db.roles.table_owner)
            self._cast_column(conn, "BEGIN RETURN to_json(current_user::text); END")
        with db.engine.begin() as conn:
            as_role(conn, db.roles.app)
            conn.execute(text("INSERT INTO tab.items VALUES (1, 'n', 'x')"))
        assert log(db.engine)[-1]["new_values"]["v"] == db.roles.app

    def test_a_column_added_by_the_table_owner_cannot_take_the_log_over(self, db: Db) -> None:
        """t6_definer_escalation.py through the table owner's own audited table."""
        with db.engine.begin() as conn:
            as_role(conn, db.roles.table_owner)
            self._cast_column(conn, TAKEOVER_BODY)
        for writer in (db.roles.table_owner, db.roles.app):
            with db.engine.begin() as conn:
                as_role(conn, writer)
                with pytest.raises(DBAPIError, match="permission denied for table audit_log_secret"):
                    conn.execute(text("INSERT INTO tab.items VALUES (1, 'n', 'x')"))
        assert_untouched(db)

    def test_a_writer_without_insert_on_the_log_cannot_change_an_audited_table(self, db: Db) -> None:
        """The price of running as the writer: the writer needs INSERT on the log, and without it the
        change fails rather than going unaudited."""
        with db.engine.begin() as conn:
            as_role(conn, db.roles.table_owner)
            with pytest.raises(DBAPIError, match="permission denied for table audit_log"):
                conn.execute(text("INSERT INTO tab.items VALUES (1, 'n')"))
        with db.engine.begin() as conn:
            conn.execute(text(f'GRANT INSERT ON audit_log TO "{db.roles.table_owner}"'))
            conn.execute(text(f'GRANT USAGE ON SEQUENCE audit_log_id_seq TO "{db.roles.table_owner}"'))
            as_role(conn, db.roles.table_owner)
            conn.execute(text("INSERT INTO tab.items VALUES (1, 'n')"))
        assert log(db.engine)[-1]["table_name"] == "tab.items"
        assert_untouched(db, rows=5)


# --- bug 5: the head cache -------------------------------------------------------------------------------


class TestForgedRows:
    """The app role may add rows to the log (ORM mode needs INSERT); what it cannot choose is the
    login role and transaction the row names."""

    def test_a_hand_written_row_names_its_real_login_and_transaction(self, db: Db) -> None:
        with db.engine.begin() as conn:
            as_role(conn, db.roles.app)
            xid = conn.execute(text("SELECT pg_current_xact_id()::text")).scalar_one()
            conn.execute(
                text(
                    "INSERT INTO audit_log (table_name, record_id, change_type, changed_fields, new_values,"
                    " change_timestamp, source, transaction_id, db_user)"
                    " VALUES ('claims', :r, 'insert', '[\"amount\"]', '{\"amount\": 5}', now(), 'orm', '1', 'auditor')"
                ),
                {"r": '{"id":9}'},
            )
            login = conn.execute(text("SELECT session_user::text")).scalar_one()
        with db.engine.connect() as conn:
            row = conn.execute(text("SELECT transaction_id, db_user FROM audit_log ORDER BY seq DESC LIMIT 1")).one()
        assert (row.transaction_id, row.db_user) == (xid, login)
        assert_untouched(db, rows=5)


class TestHeadCache:
    """The app role may write the chain's head cache; it used to give its row seq 0 or below, which
    verification never reads (t2_negative_seq.py)."""

    @pytest.mark.parametrize("forged_seq", [-1, 0, -(2**62)])
    def test_a_forged_head_never_gives_a_seq_below_1(self, db: Db, forged_seq: int) -> None:
        setting = _Names("public", "audit_log").head_setting
        with db.engine.begin() as conn:
            as_role(conn, db.roles.app)
            xid = conn.execute(text("SELECT pg_current_xact_id()::text")).scalar_one()
            conn.execute(text("SELECT set_config(:n, :v, true)"), {"n": setting, "v": f"{xid}:{forged_seq}:{'0' * 64}"})
            conn.execute(
                text(
                    "INSERT INTO audit_log (table_name, record_id, change_type, changed_fields, new_values,"
                    " change_timestamp, source, changed_by_user_id)"
                    " VALUES ('claims', :r, 'update', '[\"amount\"]', '{\"amount\": 5}', :t, 'trigger', 'alice')"
                ),
                {"r": '{"id":1}', "t": datetime(2024, 1, 1, tzinfo=timezone.utc)},
            )
        assert min(r["seq"] for r in log(db.engine)) == 1
        assert_untouched(db, rows=5)  # chained after seq 4, not beside the chain

    def test_a_row_below_seq_1_is_never_the_head(self) -> None:
        """Rows forged before the fix stay where they are; the chain goes on from the last seq >= 1
        (here: from the start)."""
        with bare_database() as engine:
            install(engine, key=KEY)
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER sessiontrace_chain"))
                conn.execute(
                    text(
                        "INSERT INTO audit_log (seq, table_name, record_id, change_type, change_timestamp, source,"
                        " changed_fields, prev_hash, row_hash)"
                        " VALUES (0, 'claims', :r, 'insert', now(), 'orm', '[]', :h, :h)"
                    ),
                    {"r": '{"id":1}', "h": "f" * 64},
                )
                conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER sessiontrace_chain"))
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO audit_log (table_name, record_id, change_type, changed_fields,"
                        " change_timestamp, source) VALUES ('claims', :r, 'insert', '[]', now(), 'orm')"
                    ),
                    {"r": '{"id":2}'},
                )
            with engine.connect() as conn:
                first = conn.execute(text("SELECT seq, prev_hash FROM audit_log WHERE seq >= 1")).one()
            assert tuple(first) == (1, chain.GENESIS)


# --- bug 6: writes trigger mode would not see ---------------------------------------------------------


class TestTriggerModeGaps:
    """TRUNCATE fires no row trigger, and a change to an inheritance child's rows through its parent
    fires only the child's triggers (t7_trigger_mode_gaps.py)."""

    def test_truncate_of_an_audited_table_is_refused(self, db: Db) -> None:
        for statement in ("TRUNCATE claims", "TRUNCATE claims, tab.items", "TRUNCATE tab.items CASCADE"):
            with db.engine.begin() as conn, pytest.raises(DBAPIError, match=r"TRUNCATE of .* refused") as caught:
                conn.execute(text(statement))
            assert "DELETE the rows instead" in str(caught.value)
        with db.engine.begin() as conn, pytest.raises(DBAPIError, match=r"public\.claims refused: claims is audited"):
            conn.execute(text("TRUNCATE claims"))
        unaudit_tables(db.engine, ["claims"])
        with db.engine.begin() as conn:
            conn.execute(text("TRUNCATE claims"))
        assert_untouched(db)

    def test_truncate_of_a_partition_of_an_audited_table_is_refused(self, db: Db) -> None:
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE TABLE parts (id int, region text, v int, PRIMARY KEY (id, region))"
                    " PARTITION BY LIST (region)"
                )
            )
            conn.execute(text("CREATE TABLE parts_eu PARTITION OF parts FOR VALUES IN ('eu')"))
            conn.execute(text("CREATE TABLE parts_us PARTITION OF parts FOR VALUES IN ('us') PARTITION BY RANGE (id)"))
            conn.execute(text("CREATE TABLE parts_us1 PARTITION OF parts_us FOR VALUES FROM (0) TO (100)"))
        audit_tables(db.engine, ["parts"])
        with db.engine.begin() as conn:  # declarative partitions: audited through the parent and directly
            conn.execute(text("INSERT INTO parts VALUES (1, 'eu', 1), (2, 'us', 2)"))
            conn.execute(text("UPDATE parts_eu SET v = 5"))
            conn.execute(text("DELETE FROM parts_us1"))
        assert [(r["record_id"], r["change_type"]) for r in log(db.engine)[4:]] == [
            ('{"id":1,"region":"eu"}', "insert"),
            ('{"id":2,"region":"us"}', "insert"),
            ('{"id":1,"region":"eu"}', "update"),
            ('{"id":2,"region":"us"}', "delete"),
        ]
        for table in ("parts", "parts_eu", "parts_us", "parts_us1"):
            with db.engine.begin() as conn, pytest.raises(DBAPIError, match=rf"TRUNCATE of public\.{table} refused"):
                conn.execute(text(f"TRUNCATE {table}"))
        assert_untouched(db, rows=8)

    def test_a_table_with_inheritance_children_is_refused(self, db: Db) -> None:
        with db.engine.begin() as conn:
            conn.execute(text("CREATE TABLE vehicles (id int PRIMARY KEY, plate text)"))
            conn.execute(text("CREATE TABLE trucks (axles int) INHERITS (vehicles)"))
            conn.execute(text("ALTER TABLE trucks ADD PRIMARY KEY (id)"))
        with pytest.raises(AuditSetupError, match=r"vehicles has inheritance children \(trucks\)"):
            audit_tables(db.engine, ["vehicles"])
        audit_tables(db.engine, ["trucks"])  # a child on its own is fine: its rows fire its triggers
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO trucks VALUES (7, 'AB-1', 3)"))
            conn.execute(text("UPDATE vehicles SET plate = 'CD-2' WHERE id = 7"))
        assert [(r["table_name"], r["change_type"]) for r in log(db.engine)[4:]] == [
            ("trucks", "insert"),
            ("trucks", "update"),
        ]
