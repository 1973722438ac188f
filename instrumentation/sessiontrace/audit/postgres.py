"""The audit log on PostgreSQL: the hash chain, append-only enforcement and trigger mode, in the
database itself.

``install()`` sets up (idempotently) the audit table, a one-row secret table holding the HMAC key,
and three kinds of trigger on the audit table:

- the chain (BEFORE INSERT, per row): whoever inserts an audit row (the ORM mode with ``seq``,
  ``prev_hash`` and ``row_hash`` left NULL, the trigger mode below, a human in psql), the database
  computes ``seq``, ``prev_hash`` and ``row_hash`` exactly as ``chain.py`` does, and sets
  ``transaction_id`` and ``db_user`` (``session_user``: the login role) whatever the writer sent;
- UPDATE, DELETE and TRUNCATE are refused by triggers, for every role including the owner.

``audit_tables()`` is the trigger mode: an AFTER INSERT/UPDATE/DELETE trigger per audited table
writes the audit row in the same transaction as the change, so raw SQL and other clients are
audited too, and a BEFORE TRUNCATE trigger refuses TRUNCATE (it fires no row trigger). Who made
the change comes from per-transaction settings (``semconv.PG_SETTING_*``) that ``set_context()``
writes, or ``instrument_engine()`` writes automatically before each statement; a change made
without them (psql, a cron job) is still audited, with ``db_user``.

Audit roles
-----------
The **owner role** (``owner_role``, NOLOGIN) owns the audit table, its partitions, the secret
table and the trigger functions. The chain function is ``SECURITY DEFINER``: it runs as the
owner, which is how it reads the key for clients that cannot. EXECUTE on the trigger functions is
the owner's alone, so only the owner (its members, superusers) can attach them to a table, and the
chain function refuses any table but the log and its partitions: elsewhere it would HMAC anything.
Nobody should log in as the owner; migrations run as a superuser or a member of it.

The capture function runs as whoever writes the audited table (``SECURITY INVOKER``), so every
such role needs INSERT on the log. Run as the owner, ``to_jsonb()`` would have called the cast to
json of a column's type, and whoever owns that type, or may add a column, could have run code as
the owner.

The **app role** (``app_role``) is what the application connects as (or is granted to it). On the
audit log it has INSERT and SELECT only (and USAGE on the ``id`` sequence); it has no access to
the secret table. Triggers refuse UPDATE/DELETE/TRUNCATE even to the owner, but an owner can drop
or disable them: keep the owner role out of the application's hands, and the hash chain (keyed
by a secret only the owner can read) shows any change made around the triggers.

Concurrency
-----------
The chain function takes ``pg_advisory_xact_lock`` before reading the head, so appends are
serialized until the appending transaction ends: ``seq`` is gap-free in commit order and the
chain cannot fork. Within a transaction the head is cached in a transaction-local setting bound
to the transaction id. Any role can write that setting, so only a seq >= 1 is believed (seq is
never below 1): a forged head only produces a seq gap, a repeated seq or a foreign ``prev_hash``
in the forger's own rows, which verification reports (a MAC on the cache would make a forged one
useless).
The head is read under READ COMMITTED semantics; under REPEATABLE READ or SERIALIZABLE a transaction
whose snapshot predates the last append fails on the ``seq`` unique index rather than forking
(retry it), and in a partitioned log the per-partition unique index checks this within a month.

``record_id`` is the primary key as compact JSON with keys in byte order, the same text as
Python's ``json.dumps(pk, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` for
integer and string keys: ``{"id":42}``. ``changed_fields`` is the sorted list of columns whose
value differs (all columns for insert and delete). As in the ORM mode, the stamp columns
(``AUDITED_COLUMNS``: ``session_id``, ``changed_by_user_id``, ``change_timestamp``) are not repeated
in the values or fields (the audit row has its own); excluded columns are absent everywhere, masked
columns are listed but their values are ``encoding.MASKED``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from functools import cache
from importlib import resources
from typing import Any, Final

from opentelemetry import trace
from sqlalchemy import Connection, Engine, MetaData, PrimaryKeyConstraint, Table, UniqueConstraint, event, text
from sqlalchemy.engine.interfaces import DBAPIConnection, DBAPICursor, ExecutionContext
from sqlalchemy.orm import Session as OrmSession

from sessiontrace import semconv
from sessiontrace._log import warn_once
from sessiontrace.audit.encoding import MASKED
from sessiontrace.audit.errors import AuditSetupError
from sessiontrace.audit.mixin import AUDITED_COLUMNS
from sessiontrace.audit.schema import AUDIT_TABLE, audit_log_table
from sessiontrace.context import Session, current_session

__all__ = [
    "AuditSetupError",
    "audit_tables",
    "context_values",
    "ensure_partitions",
    "install",
    "instrument_engine",
    "set_context",
    "unaudit_tables",
    "uninstall",
    "uninstrument_engine",
]

STAMP_COLUMNS: Final = AUDITED_COLUMNS
"""Columns an audited table may have; the trigger mode fills them (see ``stamp.sql``)."""

SETTINGS: Final = (
    semconv.PG_SETTING_SESSION_ID,
    semconv.PG_SETTING_USER_ID,
    semconv.PG_SETTING_TRACE_ID,
    semconv.PG_SETTING_SPAN_ID,
)

_AUDIT_TRIGGER = "sessiontrace_audit"
_STAMP_TRIGGER = "sessiontrace_stamp"
_CHAIN_TRIGGER = "sessiontrace_chain"
_REFUSE_TRIGGER = "sessiontrace_refuse_change"
_REFUSE_TRUNCATE_TRIGGER = "sessiontrace_refuse_truncate"
_AUDIT_TRUNCATE_TRIGGER = "sessiontrace_audit_truncate"
# Trigger functions only the owner (and superusers) may attach to a table: the chain HMACs whatever
# row it is given. The context function stays PUBLIC: stamp and capture call it as the writer.
_OWNER_ONLY_FUNCTIONS: Final = ("chain", "capture", "stamp", "refuse")
# Serializes concurrent install()/ensure_partitions() runs (two app instances starting at once).
_SETUP_LOCK = 0x5E55_1017_A0D1_7000
_CONTEXT_OPTION = "sessiontrace_audit_context"
_INFO_KEY = "sessiontrace.audit_context"
_TOKEN = re.compile(r"__[A-Z_]+__")


# --- names ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Names:
    """Every object name of one audit log, quoted where SQL needs it."""

    schema: str  # resolved, unquoted
    table: str  # unquoted

    @property
    def audit(self) -> str:
        return f"{_quote(self.schema)}.{_quote(self.table)}"

    @property
    def secret_name(self) -> str:
        return f"{self.table}_secret"

    @property
    def secret(self) -> str:
        return f"{_quote(self.schema)}.{_quote(self.secret_name)}"

    @property
    def partition_prefix(self) -> str:
        """Monthly partitions are ``<table>_pYYYYMM`` (the chain function checks this name first)."""
        return f"{self.table}_p"

    def function(self, role: str) -> str:
        return f"{_quote(self.schema)}.{_quote(f'{self.table}_{role}')}"

    @property
    def _digest(self) -> bytes:
        return hashlib.sha256(f"sessiontrace.audit:{self.schema}.{self.table}".encode()).digest()

    @property
    def lock_key(self) -> int:
        """The advisory lock of this log's chain (a constant baked into the chain function)."""
        return int.from_bytes(self._digest[:8], "big", signed=True)

    @property
    def head_setting(self) -> str:
        """Transaction-local setting caching the chain head (private to the chain function)."""
        return f"sessiontrace.audit_head_{self._digest[8:14].hex()}"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _array_literal(values: Collection[str]) -> str:
    """A ``text[]`` literal of ``values`` in code point order, as an SQL string (trigger arguments
    are strings)."""
    items = ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in sorted(values))
    return _literal("{" + items + "}")


def _names(conn: Connection, audit_table: str, schema: str | None) -> _Names:
    if schema is None:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        if schema is None:
            raise AuditSetupError("no schema given and the search_path names none that exists")
    return _Names(schema=schema, table=audit_table)


@cache
def _sql(name: str) -> str:
    return (resources.files("sessiontrace.audit") / "sql" / name).read_text(encoding="utf-8")


def _render(name: str, names: _Names, pgcrypto: str) -> str:
    replacements = {
        "__CHAIN_FN__": names.function("chain"),
        "__REFUSE_FN__": names.function("refuse"),
        "__CONTEXT_FN__": names.function("context"),
        "__CAPTURE_FN__": names.function("capture"),
        "__STAMP_FN__": names.function("stamp"),
        "__AUDIT__": names.audit,
        "__AUDIT_LITERAL__": _literal(names.audit),
        "__AUDIT_SCHEMA_NAME__": _literal(names.schema),
        "__AUDIT_TABLE_NAME__": _literal(names.table),
        "__PARTITION_PREFIX__": _literal(names.partition_prefix),
        "__SECRET__": names.secret,
        "__SECRET_NAME__": names.secret_name.replace("'", "''"),
        "__LOCK_KEY__": str(names.lock_key),
        "__HEAD_SETTING__": names.head_setting,
        "__PGCRYPTO__": _quote(pgcrypto),
        "__SESSION_SETTING__": semconv.PG_SETTING_SESSION_ID,
        "__USER_SETTING__": semconv.PG_SETTING_USER_ID,
        "__TRACE_SETTING__": semconv.PG_SETTING_TRACE_ID,
        "__SPAN_SETTING__": semconv.PG_SETTING_SPAN_ID,
        "__MASKED__": _literal(MASKED),
    }
    return _TOKEN.sub(lambda m: replacements[m.group(0)], _sql(name))


@contextmanager
def _transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """An Engine gets its own committed transaction; a Connection's work joins the caller's."""
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            _check_postgresql(conn)
            yield conn
    else:
        _check_postgresql(bind)
        yield bind


def _check_postgresql(conn: Connection) -> None:
    if conn.dialect.name != "postgresql":
        raise AuditSetupError(f"the PostgreSQL audit setup needs PostgreSQL, not {conn.dialect.name}")


# --- install ---------------------------------------------------------------------------------------


def install(
    bind: Engine | Connection,
    *,
    key: bytes | None = None,
    owner_role: str | None = None,
    app_role: str | None = None,
    audit_table: str = AUDIT_TABLE,
    schema: str | None = None,
    partition_by_month: bool = False,
) -> None:
    """Create (or bring up to date) the audit log, its key, chain and append-only triggers.

    Safe to run at every deploy. ``key`` is the HMAC key of the chain; ``None`` keeps the installed
    key (or installs the empty key). Changing the key of a log that has rows is refused: the rows
    already written could no longer be verified. Roles that do not exist are created NOLOGIN.
    With an Engine the setup commits; with a Connection it joins the caller's transaction.
    """
    with _transaction(bind) as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SETUP_LOCK})
        names = _names(conn, audit_table, schema)
        if schema is not None:
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}"))
        for role in (owner_role, app_role):
            if role is not None:
                _ensure_role(conn, role)
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS pgcrypto"))
        pgcrypto = conn.execute(
            text(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
                " WHERE e.extname = 'pgcrypto'"
            )
        ).scalar_one()

        _create_audit_table(conn, names, partition_by_month)
        _store_key(conn, names, key)
        for sql_file in ("chain.sql", "refuse.sql", "context.sql", "capture.sql", "stamp.sql"):
            conn.execute(text(_render(sql_file, names, pgcrypto)))
        _create_audit_triggers(conn, names)
        if partition_by_month:
            _ensure_partitions(conn, names, months_ahead=3)
        _set_ownership_and_grants(conn, names, owner_role, app_role, schema)


def _ensure_role(conn: Connection, role: str) -> None:
    exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
    if exists is None:
        conn.execute(text(f"CREATE ROLE {_quote(role)} NOLOGIN"))


def _relkind(conn: Connection, qualified: str) -> str | None:
    kind: str | None = conn.execute(
        text("SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass(:n)"), {"n": qualified}
    ).scalar()
    return kind


def _audit_table_definition(names: _Names, partitioned: bool) -> Table:
    table = audit_log_table(MetaData(), names.table, names.schema)
    if partitioned:
        # A partitioned table's unique constraints must include the partition key, so the primary
        # key becomes (id, change_timestamp) and seq's uniqueness moves to one unique index per
        # partition (ensure_partitions); the chain's advisory lock hands out each seq once.
        for constraint in list(table.constraints):
            if isinstance(constraint, UniqueConstraint) and [c.name for c in constraint.columns] == ["seq"]:
                table.constraints.remove(constraint)
        table.c.seq.unique = False
        table.c.change_timestamp.primary_key = True
        table.append_constraint(PrimaryKeyConstraint("id", "change_timestamp"))
        table.dialect_options["postgresql"]["partition_by"] = "RANGE (change_timestamp)"
    return table


def _create_audit_table(conn: Connection, names: _Names, partitioned: bool) -> None:
    kind = _relkind(conn, names.audit)
    if kind is None:
        _audit_table_definition(names, partitioned).create(conn)
    elif (kind == "p") != partitioned:
        state = "partitioned" if kind == "p" else "not partitioned"
        raise AuditSetupError(
            f"{names.schema}.{names.table} exists and is {state}; "
            "converting an existing audit log is a manual migration"
        )
    conn.execute(
        text(
            f"CREATE TABLE IF NOT EXISTS {names.secret} ("
            " id boolean PRIMARY KEY DEFAULT true CHECK (id), key bytea NOT NULL)"
        )
    )


def _store_key(conn: Connection, names: _Names, key: bytes | None) -> None:
    stored = conn.execute(text(f"SELECT key FROM {names.secret}")).scalar()
    if stored is None:
        conn.execute(text(f"INSERT INTO {names.secret} (key) VALUES (:k)"), {"k": key or b""})
    elif key is not None and bytes(stored) != key:
        has_rows = conn.execute(text(f"SELECT EXISTS (SELECT 1 FROM {names.audit})")).scalar_one()
        if has_rows:
            raise AuditSetupError(
                f"{names.schema}.{names.table} already has rows chained with a different key; "
                "changing it would make them unverifiable"
            )
        conn.execute(text(f"UPDATE {names.secret} SET key = :k"), {"k": key})


def _create_audit_triggers(conn: Connection, names: _Names) -> None:
    triggers = (
        (_CHAIN_TRIGGER, "BEFORE INSERT", "FOR EACH ROW", "chain"),
        (_REFUSE_TRIGGER, "BEFORE UPDATE OR DELETE", "FOR EACH ROW", "refuse"),
        (_REFUSE_TRUNCATE_TRIGGER, "BEFORE TRUNCATE", "FOR EACH STATEMENT", "refuse"),
    )
    for name, timing, level, function in triggers:
        conn.execute(text(f"DROP TRIGGER IF EXISTS {_quote(name)} ON {names.audit}"))
        conn.execute(
            text(
                f"CREATE TRIGGER {_quote(name)} {timing} ON {names.audit} {level}"
                f" EXECUTE FUNCTION {names.function(function)}()"
            )
        )


def _set_ownership_and_grants(
    conn: Connection, names: _Names, owner_role: str | None, app_role: str | None, schema: str | None
) -> None:
    tables = [names.audit, names.secret, *(_quote(names.schema) + "." + _quote(p) for p in _partitions(conn, names))]
    functions = [f"{names.function(f)}()" for f in ("chain", "refuse", "context", "capture", "stamp")]
    if owner_role is not None:
        owner = _quote(owner_role)
        if schema is not None:
            conn.execute(text(f"GRANT USAGE ON SCHEMA {_quote(schema)} TO {owner}"))
        for table in tables:
            conn.execute(text(f"ALTER TABLE {table} OWNER TO {owner}"))
        for function in functions:
            conn.execute(text(f"ALTER FUNCTION {function} OWNER TO {owner}"))
    for table in tables:
        conn.execute(text(f"REVOKE ALL ON {table} FROM PUBLIC"))
    _restrict_trigger_functions(conn, names)
    if app_role is not None:
        app = _quote(app_role)
        if schema is not None:
            conn.execute(text(f"GRANT USAGE ON SCHEMA {_quote(schema)} TO {app}"))
        conn.execute(text(f"REVOKE ALL ON {names.audit} FROM {app}"))
        conn.execute(text(f"REVOKE ALL ON {names.secret} FROM {app}"))
        conn.execute(text(f"GRANT INSERT, SELECT ON {names.audit} TO {app}"))
        sequence = conn.execute(
            text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": f"{names.audit}"}
        ).scalar_one_or_none()
        if sequence is not None:
            conn.execute(text(f"GRANT USAGE ON SEQUENCE {sequence} TO {app}"))


def _restrict_trigger_functions(conn: Connection, names: _Names) -> None:
    """EXECUTE on the trigger functions for their owner alone: CREATE TRIGGER needs it, firing
    does not. A new function is EXECUTE-able by PUBLIC, and default privileges may grant more."""
    for function in _OWNER_ONLY_FUNCTIONS:
        signature = f"{names.function(function)}()"
        conn.execute(text(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC"))
        grantees = conn.execute(
            text(
                "SELECT DISTINCT pg_get_userbyid(a.grantee) FROM pg_proc p, aclexplode(p.proacl) a"
                " WHERE p.oid = CAST(:f AS regprocedure) AND a.grantee NOT IN (0, p.proowner)"
            ),
            {"f": signature},
        ).scalars()
        for grantee in list(grantees):
            conn.execute(text(f"REVOKE ALL ON FUNCTION {signature} FROM {_quote(grantee)}"))


def uninstall(bind: Engine | Connection, *, audit_table: str = AUDIT_TABLE, schema: str | None = None) -> None:
    """Drop the audit log, its key and its functions, and with them every audited table's triggers.

    This destroys the log: it exists for tests and for a migration's ``downgrade()``.
    """
    with _transaction(bind) as conn:
        names = _names(conn, audit_table, schema)
        conn.execute(text(f"DROP TABLE IF EXISTS {names.audit} CASCADE"))
        conn.execute(text(f"DROP TABLE IF EXISTS {names.secret}"))
        for function in ("capture", "stamp", "context", "chain", "refuse"):
            conn.execute(text(f"DROP FUNCTION IF EXISTS {names.function(function)}() CASCADE"))


# --- partitions ------------------------------------------------------------------------------------


def ensure_partitions(
    bind: Engine | Connection, months_ahead: int = 3, *, audit_table: str = AUDIT_TABLE, schema: str | None = None
) -> list[str]:
    """Create the monthly partitions (UTC months) from the current one to ``months_ahead`` ahead.

    Returns the names of the partitions created. A row whose ``change_timestamp`` has no partition
    is refused, and so is the change it audits: run this from a monthly job (``install`` runs it).
    """
    if months_ahead < 0:
        raise ValueError("months_ahead must be >= 0")
    with _transaction(bind) as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SETUP_LOCK})
        names = _names(conn, audit_table, schema)
        if _relkind(conn, names.audit) != "p":
            raise AuditSetupError(f"{names.schema}.{names.table} is not a partitioned audit log")
        return _ensure_partitions(conn, names, months_ahead)


def _month_partition(names: _Names, month: date) -> str:
    return f"{names.partition_prefix}{month.year:04d}{month.month:02d}"


def _ensure_partitions(conn: Connection, names: _Names, months_ahead: int) -> list[str]:
    this_month: date = conn.execute(text("SELECT date_trunc('month', now() AT TIME ZONE 'UTC')::date")).scalar_one()
    owner = conn.execute(
        text("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass(:t)"), {"t": names.audit}
    ).scalar_one()
    created = []
    for offset in range(months_ahead + 1):
        start = _add_months(this_month, offset)
        name = _month_partition(names, start)
        partition = f"{_quote(names.schema)}.{_quote(name)}"
        if _relkind(conn, partition) is not None:
            continue
        end = _add_months(start, 1)
        conn.execute(
            text(
                f"CREATE TABLE {partition} PARTITION OF {names.audit}"
                f" FOR VALUES FROM ('{start.isoformat()} 00:00:00+00') TO ('{end.isoformat()} 00:00:00+00')"
            )
        )
        conn.execute(text(f"CREATE UNIQUE INDEX {_quote(name + '_seq_key')} ON {partition} (seq)"))
        # Statement triggers are not inherited: TRUNCATE of one partition needs its own refusal.
        conn.execute(
            text(
                f"CREATE TRIGGER {_quote(_REFUSE_TRUNCATE_TRIGGER)} BEFORE TRUNCATE ON {partition}"
                f" FOR EACH STATEMENT EXECUTE FUNCTION {names.function('refuse')}()"
            )
        )
        conn.execute(text(f"REVOKE ALL ON {partition} FROM PUBLIC"))
        conn.execute(text(f"ALTER TABLE {partition} OWNER TO {_quote(owner)}"))
        created.append(name)
    return created


def _partitions(conn: Connection, names: _Names) -> list[str]:
    return list(
        conn.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = to_regclass(:t)"
            ),
            {"t": names.audit},
        ).scalars()
    )


def _add_months(month: date, count: int) -> date:
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


# --- trigger mode ----------------------------------------------------------------------------------


def audit_tables(
    bind: Engine | Connection,
    tables: Sequence[str],
    *,
    exclude: Mapping[str, Collection[str]] | None = None,
    mask: Mapping[str, Collection[str]] | None = None,
    audit_table: str = AUDIT_TABLE,
    schema: str | None = None,
) -> None:
    """Audit every change to ``tables`` (``name`` or ``schema.name``) with database triggers.

    ``exclude[table]`` columns are left out of the audit row entirely (an UPDATE touching only them
    is not audited); ``mask[table]`` columns are recorded as changed with the value ``"[MASKED]"``.
    Primary key columns are read from the catalog now: a table without one is refused, and so is an
    unknown column name in ``exclude`` or ``mask`` (a typo must not leak what it meant to hide), and
    a table with inheritance children (their rows changed through it would not be audited;
    declarative partitions are audited with their table). TRUNCATE of an audited table (or of one
    of its partitions) is refused: it would remove rows without an audit row. Re-running replaces
    the triggers (after a schema change, a new partition, or to change ``exclude``/``mask``).
    Run it as a superuser or a member of the log's owner role: only they may attach its triggers.
    """
    exclude = exclude or {}
    mask = mask or {}
    unknown = (set(exclude) | set(mask)) - set(tables)
    if unknown:
        raise AuditSetupError(f"exclude/mask name tables that are not audited: {', '.join(sorted(unknown))}")
    with _transaction(bind) as conn:
        names = _names(conn, audit_table, schema)
        if _relkind(conn, names.audit) is None:
            raise AuditSetupError(f"{names.schema}.{names.table} does not exist: run install() first")
        _check_may_attach(conn, names)
        for table in tables:
            _audit_table(conn, names, table, set(exclude.get(table, ())), set(mask.get(table, ())))


def _check_may_attach(conn: Connection, names: _Names) -> None:
    allowed = conn.execute(
        text("SELECT has_function_privilege(to_regprocedure(:f), 'EXECUTE')"), {"f": f"{names.function('capture')}()"}
    ).scalar()
    if allowed is None:
        raise AuditSetupError(f"{names.schema}.{names.table} has no trigger functions: run install() first")
    if not allowed:
        user = conn.execute(text("SELECT current_user")).scalar_one()
        raise AuditSetupError(
            f"{user} may not attach the audit triggers of {names.schema}.{names.table}:"
            " run audit_tables() as a superuser or a member of the log's owner role"
        )


def _audit_table(conn: Connection, names: _Names, table: str, excluded: set[str], masked: set[str]) -> None:
    qualified = _qualify(table)
    oid = conn.execute(text("SELECT to_regclass(:t)::oid"), {"t": qualified}).scalar()
    if oid is None:
        raise AuditSetupError(f"table {table} does not exist")
    if oid == conn.execute(text("SELECT to_regclass(:t)::oid"), {"t": names.audit}).scalar():
        raise AuditSetupError(f"{table} is the audit log itself")
    columns = set(
        conn.execute(
            text("SELECT attname FROM pg_attribute WHERE attrelid = :o AND attnum > 0 AND NOT attisdropped"), {"o": oid}
        ).scalars()
    )
    primary_key = list(
        conn.execute(
            text(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
                " ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
                " WHERE i.indrelid = :o AND i.indisprimary"
            ),
            {"o": oid},
        ).scalars()
    )
    if not primary_key:
        raise AuditSetupError(
            f"table {table} has no primary key: audit rows identify records by it (add one, then audit the table)"
        )
    # A change made through the parent to a child's rows fires the child's triggers only.
    # (Partitions get the row triggers with their table, so they are fine.)
    children = conn.execute(
        text(
            "SELECT c.oid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = :o AND NOT c.relispartition ORDER BY 1"
        ),
        {"o": oid},
    ).scalars()
    inheriting = list(children)
    if inheriting:
        raise AuditSetupError(
            f"table {table} has inheritance children ({', '.join(inheriting)}): their rows changed through"
            f" {table} would not be audited (use declarative partitioning, whose partitions are audited"
            " with their table)"
        )
    for label, wanted in (("exclude", excluded), ("mask", masked)):
        if wanted - columns:
            raise AuditSetupError(f"{label} for {table} names unknown columns: {', '.join(sorted(wanted - columns))}")
    stamps = [c for c in STAMP_COLUMNS if c in columns]

    conn.execute(text(f"DROP TRIGGER IF EXISTS {_quote(_AUDIT_TRIGGER)} ON {qualified}"))
    conn.execute(text(f"DROP TRIGGER IF EXISTS {_quote(_STAMP_TRIGGER)} ON {qualified}"))
    arguments = ", ".join(
        (
            _array_literal(primary_key),
            _array_literal(excluded),
            _array_literal(masked),
            _literal(table),
            _array_literal(stamps),
            # the recorded columns, sorted as the capture function's "C" collation sorts (code
            # points, whose order UTF-8 keeps)
            _array_literal(columns - excluded - set(stamps)),
        )
    )
    conn.execute(
        text(
            f"CREATE TRIGGER {_quote(_AUDIT_TRIGGER)} AFTER INSERT OR UPDATE OR DELETE ON {qualified}"
            f" FOR EACH ROW EXECUTE FUNCTION {names.function('capture')}({arguments})"
        )
    )
    if stamps:
        conn.execute(
            text(
                f"CREATE TRIGGER {_quote(_STAMP_TRIGGER)} BEFORE INSERT OR UPDATE ON {qualified}"
                f" FOR EACH ROW EXECUTE FUNCTION {names.function('stamp')}({_array_literal(stamps)})"
            )
        )
    # TRUNCATE fires no row trigger. Statement triggers are not inherited: each partition gets one.
    for relation in _partition_tree(conn, oid):
        conn.execute(text(f"DROP TRIGGER IF EXISTS {_quote(_AUDIT_TRUNCATE_TRIGGER)} ON {relation}"))
        conn.execute(
            text(
                f"CREATE TRIGGER {_quote(_AUDIT_TRUNCATE_TRIGGER)} BEFORE TRUNCATE ON {relation}"
                f" FOR EACH STATEMENT EXECUTE FUNCTION {names.function('refuse')}({_literal(table)})"
            )
        )


def _partition_tree(conn: Connection, oid: int) -> list[str]:
    """The table and, when partitioned, all its partitions, qualified and quoted."""
    return list(
        conn.execute(
            text(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.oid = :o OR c.oid IN (SELECT relid FROM pg_partition_tree(:o))"
            ),
            {"o": oid},
        ).scalars()
    )


def unaudit_tables(bind: Engine | Connection, tables: Sequence[str]) -> None:
    """Remove the trigger-mode triggers from ``tables`` (their audit rows stay)."""
    with _transaction(bind) as conn:
        for table in tables:
            qualified = _qualify(table)
            oid = conn.execute(text("SELECT to_regclass(:t)::oid"), {"t": qualified}).scalar()
            if oid is None:
                continue
            conn.execute(text(f"DROP TRIGGER IF EXISTS {_quote(_AUDIT_TRIGGER)} ON {qualified}"))
            conn.execute(text(f"DROP TRIGGER IF EXISTS {_quote(_STAMP_TRIGGER)} ON {qualified}"))
            for relation in _partition_tree(conn, oid):
                conn.execute(text(f"DROP TRIGGER IF EXISTS {_quote(_AUDIT_TRUNCATE_TRIGGER)} ON {relation}"))


def _qualify(table: str) -> str:
    parts = table.split(".")
    if len(parts) > 2 or not all(parts):
        raise AuditSetupError(f"{table!r} is not a table name (name or schema.name)")
    return ".".join(_quote(p) for p in parts)


# --- who is changing what --------------------------------------------------------------------------


def context_values(session: Session | None = None) -> dict[str, str]:
    """The ``PG_SETTING_*`` values for ``session`` (default: the current one) and the current span.

    Missing values are empty strings, which the triggers read as NULL: setting them clears what an
    earlier statement of the same transaction set.
    """
    if session is None:
        session = current_session()
    span = trace.get_current_span().get_span_context()
    return {
        semconv.PG_SETTING_SESSION_ID: session.id if session else "",
        semconv.PG_SETTING_USER_ID: (session.user_id or "") if session else "",
        semconv.PG_SETTING_TRACE_ID: format(span.trace_id, "032x") if span.is_valid else "",
        semconv.PG_SETTING_SPAN_ID: format(span.span_id, "016x") if span.is_valid else "",
    }


def _set_config_sql(paramstyle: str) -> str:
    """``SELECT set_config(name, value, true), ...`` for every setting, in the driver's paramstyle."""
    marks = [_placeholder(paramstyle, i) for i in range(2 * len(SETTINGS))]
    calls = ", ".join(f"set_config({marks[2 * i]}, {marks[2 * i + 1]}, true)" for i in range(len(SETTINGS)))
    return f"SELECT {calls}"


def _set_config_params(values: Mapping[str, str]) -> list[str]:
    return [item for name in SETTINGS for item in (name, values[name])]


def set_context(connection: Connection | OrmSession | DBAPIConnection, session: Session | None = None) -> None:
    """Tell the triggers who is changing what, for the rest of the current transaction.

    ``connection`` is an SQLAlchemy ``Connection`` or ORM ``Session`` (a transaction is begun if
    none is) or a DB-API connection such as psycopg's (call it inside the transaction: settings made
    in autocommit mode end with their statement). ``session`` defaults to the current session; the
    trace and span are the current span's.
    """
    values = context_values(session)
    params = _set_config_params(values)
    if isinstance(connection, OrmSession):
        connection = connection.connection()
    if isinstance(connection, Connection):
        binds = {f"p{i}": v for i, v in enumerate(params)}
        sql = "SELECT " + ", ".join(f"set_config(:p{2 * i}, :p{2 * i + 1}, true)" for i in range(len(SETTINGS)))
        connection.execute(text(sql), binds, execution_options={_CONTEXT_OPTION: True})
        connection.info[_INFO_KEY] = (connection.get_transaction(), tuple(params))
        return
    cursor = connection.cursor()
    try:
        cursor.execute(_set_config_sql("format"), params)
    finally:
        cursor.close()


def instrument_engine(engine: Engine) -> None:
    """Set the context automatically before each statement whose session or span differs from
    what this transaction already told the database (so usually once per transaction).

    Covers everything executed through ``engine``: ORM flushes, Core statements and raw SQL
    (``exec_driver_sql``). Statements in autocommit mode are not attributed (a setting would end
    with its own statement). ``uninstrument_engine()`` undoes it.
    """
    if engine.dialect.name != "postgresql":
        raise AuditSetupError(f"trigger-mode context needs PostgreSQL, not {engine.dialect.name}")
    if not event.contains(engine, "before_cursor_execute", _before_cursor_execute):
        event.listen(engine, "before_cursor_execute", _before_cursor_execute)
        event.listen(engine, "rollback_savepoint", _forget_context)


def uninstrument_engine(engine: Engine) -> None:
    """Undo ``instrument_engine()``."""
    if event.contains(engine, "before_cursor_execute", _before_cursor_execute):
        event.remove(engine, "before_cursor_execute", _before_cursor_execute)
        event.remove(engine, "rollback_savepoint", _forget_context)


def _before_cursor_execute(
    conn: Connection,
    cursor: DBAPICursor,
    statement: str,
    parameters: Any,
    context: ExecutionContext | None,
    executemany: bool,
) -> None:
    if context is not None and context.execution_options.get(_CONTEXT_OPTION):
        return
    try:
        transaction = conn.get_transaction()
        dbapi_connection = conn.connection.dbapi_connection
        if transaction is None or dbapi_connection is None or getattr(dbapi_connection, "autocommit", False):
            return
        params = tuple(_set_config_params(context_values()))
        cached = conn.info.get(_INFO_KEY)
        # The transaction object identifies this transaction: settings of an earlier one are gone.
        if cached is not None and cached[0] is transaction and cached[1] == params:
            return
        own = dbapi_connection.cursor()
        try:
            own.execute(_set_config_sql(conn.dialect.paramstyle), params)
        finally:
            own.close()
        conn.info[_INFO_KEY] = (transaction, params)
    except Exception as exc:  # a hook must never break the application's statement
        warn_once("audit-context", "sessiontrace: could not set the audit context: %r", exc)


def _forget_context(conn: Connection, name: str | None, context: Any) -> None:
    # ROLLBACK TO SAVEPOINT also rolls back set_config() made after the savepoint.
    conn.info.pop(_INFO_KEY, None)


def _placeholder(paramstyle: str, index: int) -> str:
    if paramstyle in ("format", "pyformat"):
        return "%s"
    if paramstyle == "numeric_dollar":
        return f"${index + 1}"
    if paramstyle == "numeric":
        return f":{index + 1}"
    return "?"
