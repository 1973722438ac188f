-- The hash chain: BEFORE INSERT on the audit log, for every row whoever writes it (ORM mode,
-- trigger mode, psql). Computes exactly sessiontrace/audit/chain.py:
--   row_hash = HMAC-SHA256(key, prev_hash || E'\n' || line), hex;
--   line = LINE_FIELDS as text joined by chr(31), NULL -> '', JSON as jsonb::text,
--          change_timestamp as integer epoch microseconds.
-- SECURITY DEFINER (owned by the owner role): it reads the key, which the app role cannot.
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
    -- query below (which reads every partition's index in a partitioned log). Only this
    -- transaction's value is believed; a forged one can only make its own rows fail or break the
    -- chain visibly (verification reports it), never hide a change.
    head := string_to_array(current_setting('__HEAD_SETTING__', true), ':');
    IF cardinality(head) = 3 AND head[1] = xid THEN
        prev_seq := head[2]::bigint;
        prev := head[3];
    ELSE
        SELECT a.seq, a.row_hash INTO prev_seq, prev
          FROM __AUDIT__ a WHERE a.seq IS NOT NULL ORDER BY a.seq DESC LIMIT 1;
        IF NOT FOUND THEN
            prev_seq := 0;
            prev := repeat('0', 64);
        END IF;
    END IF;

    NEW.seq := prev_seq + 1;
    NEW.prev_hash := prev;
    NEW.transaction_id := coalesce(NEW.transaction_id, xid);
    NEW.db_user := coalesce(NEW.db_user, session_user::text);
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
    NEW.row_hash := encode(__PGCRYPTO__.hmac(convert_to(prev || E'\n' || row_line, 'UTF8'), k, 'sha256'), 'hex');

    ignored := set_config('__HEAD_SETTING__', xid || ':' || NEW.seq || ':' || NEW.row_hash, true);
    RETURN NEW;
END
$fn$;
