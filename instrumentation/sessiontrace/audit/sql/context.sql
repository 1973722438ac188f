-- Who is changing what, from the per-transaction settings set_context() writes
-- (set_config(name, value, true)). Never fails: an empty or malformed value is NULL, so a write
-- from psql or from a buggy client is still audited (with db_user). A malformed session id is
-- reported once per transaction as a WARNING. Unlike the trigger functions it stays EXECUTE-able by
-- PUBLIC: the stamp and capture functions call it as whoever writes the audited table.
CREATE OR REPLACE FUNCTION __CONTEXT_FN__(
    OUT session_id uuid, OUT user_id text, OUT trace_id text, OUT span_id text
)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    raw text := nullif(current_setting('__SESSION_SETTING__', true), '');
BEGIN
    IF raw ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        session_id := raw::uuid;
    ELSIF raw IS NOT NULL AND coalesce(current_setting('sessiontrace.warned_session', true), '') <> raw THEN
        RAISE WARNING 'sessiontrace: % is not a UUID: audited without a session id', '__SESSION_SETTING__';
        raw := set_config('sessiontrace.warned_session', raw, true);
    END IF;
    user_id := left(nullif(current_setting('__USER_SETTING__', true), ''), 256);
    trace_id := substring(lower(current_setting('__TRACE_SETTING__', true)) FROM '^[0-9a-f]{32}$');
    span_id := substring(lower(current_setting('__SPAN_SETTING__', true)) FROM '^[0-9a-f]{16}$');
END
$fn$;
