-- The hash chain: BEFORE INSERT on the audit log, for every row whoever writes it (ORM mode,
-- trigger mode, psql). Computes exactly sessiontrace/audit/chain.py:
--   row_hash = HMAC-SHA256(key, prev_hash || E'\n' || line), hex;
--   line = LINE_FIELDS as text joined by chr(31), NULL -> '', JSON as jsonb::text,
--          change_timestamp as integer epoch microseconds.
-- SECURITY DEFINER (owned by the owner role): it reads the key, which the app role cannot. On a
-- table of their own it would HMAC any content for anyone, so only the owner may attach it
-- (install() revokes EXECUTE from PUBLIC) and it refuses to run on any table but the log and its
-- partitions.
-- seq is always >= 1: verification starts after seq 0 (or a retirement), and would never read a
-- row below it.
CREATE OR REPLACE FUNCTION __CHAIN_FN__() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    k bytea;
    xid text := pg_current_xact_id()::text;
    head text[];
    prev_seq bigint;
    prev text;
    row_line text;
    ignored text;
BEGIN
    -- Names fixed at install time: simple expressions, no catalog query (this runs for every row).
    -- A row trigger on the partitioned log fires on the partition the row goes to; one named
    -- otherwise (a DEFAULT partition, another schema) is looked up in the catalog.
    IF TG_TABLE_SCHEMA <> __AUDIT_SCHEMA_NAME__
       OR (TG_TABLE_NAME <> __AUDIT_TABLE_NAME__ AND NOT starts_with(TG_TABLE_NAME, __PARTITION_PREFIX__)) THEN
        IF pg_partition_root(TG_RELID) IS DISTINCT FROM to_regclass(__AUDIT_LITERAL__) THEN
            RAISE EXCEPTION 'sessiontrace: the audit chain function runs only on %.%, not on %.%',
                __AUDIT_SCHEMA_NAME__, __AUDIT_TABLE_NAME__, TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END IF;
    END IF;

    -- Held until commit or rollback: one appender at a time, so the head read below is the head
    -- when this transaction commits, seq stays gap-free and the chain cannot fork.
    -- Calls are assignments, not PERFORM: PL/pgSQL evaluates an assignment as a simple expression,
    -- while PERFORM runs a whole query through SPI (the two PERFORMs here were 40% of this
    -- trigger's cost per row).
    ignored := pg_advisory_xact_lock(__LOCK_KEY__)::text;

    SELECT s.key INTO k FROM __SECRET__ s;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sessiontrace: the audit key row is missing from %', '__SECRET_NAME__'
            USING HINT = 'run sessiontrace.audit.postgres.install() again', ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    -- The head cached by this transaction's previous row, "xid:seq:row_hash". Cheaper than the
    -- query below (which reads every partition's index in a partitioned log). Any role can write
    -- the setting, so only this transaction's value with a seq >= 1 is believed: a forged one can
    -- only give its own rows a seq gap, a repeated seq or a foreign prev_hash (verification reports
    -- them), never a seq below 1. Rows with seq < 1 (forged before this check) are never the head.
    head := string_to_array(current_setting('__HEAD_SETTING__', true), ':');
    IF cardinality(head) = 3 AND head[1] = xid THEN
        prev_seq := head[2]::bigint;
        prev := head[3];
    END IF;
    IF coalesce(prev_seq, 0) < 1 THEN
        SELECT a.seq, a.row_hash INTO prev_seq, prev
          FROM __AUDIT__ a WHERE a.seq >= 1 ORDER BY a.seq DESC LIMIT 1;
        IF NOT FOUND THEN
            prev_seq := 0;
            prev := repeat('0', 64);
        END IF;
    END IF;

    NEW.seq := prev_seq + 1;
    NEW.prev_hash := prev;
    -- Which transaction and which login wrote the row come from the database, never from the
    -- writer: a row an app role adds by hand still names the role that authenticated.
    NEW.transaction_id := xid;
    NEW.db_user := session_user::text;
    row_line := array_to_string(ARRAY[
        NEW.seq::text,
        NEW.table_name::text,
        NEW.record_id,
        NEW.change_type::text,
        NEW.changed_fields::text,
        NEW.previous_values::text,
        NEW.new_values::text,
        NEW.session_id::text,
        NEW.changed_by_user_id::text,
        (extract(epoch FROM NEW.change_timestamp) * 1000000)::bigint::text,
        NEW.trace_id::text,
        NEW.span_id::text,
        NEW.transaction_id::text,
        NEW.db_user::text,
        NEW.source::text
    ], chr(31), '');
    -- 'sha256'::text makes pgcrypto's hmac(bytea, bytea, text) an exact match: no look-alike
    -- overload created in its schema can be preferred.
    NEW.row_hash := encode(__PGCRYPTO__.hmac(convert_to(prev || E'\n' || row_line, 'UTF8'), k, 'sha256'::text), 'hex');

    ignored := set_config('__HEAD_SETTING__', xid || ':' || NEW.seq || ':' || NEW.row_hash, true);
    RETURN NEW;
END
$fn$;
