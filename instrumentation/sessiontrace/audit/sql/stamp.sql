-- Trigger mode: BEFORE INSERT / UPDATE FOR EACH ROW on an audited table that has the session
-- columns (session_id, changed_by_user_id, change_timestamp). Argument 0: which of them it has
-- (text[]). A value the statement sets explicitly wins; otherwise the column gets the current
-- settings (NULL when there are none: an UPDATE from psql is not the previous session's change).
-- An UPDATE that changes nothing is left alone.
CREATE OR REPLACE FUNCTION __STAMP_FN__() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    stamps text[] := TG_ARGV[0]::text[];
    sid uuid;
    uid text;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW *= OLD THEN
        RETURN NEW;
    END IF;
    -- The settings, as __CONTEXT_FN__() reads them (inlined: a call per row cost more than the
    -- rest of this function).
    sid := substring(lower(current_setting('__SESSION_SETTING__', true)) FROM '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')::uuid;
    IF sid IS NULL AND coalesce(current_setting('__SESSION_SETTING__', true), '') <> '' THEN
        sid := (__CONTEXT_FN__()).session_id;  -- NULL, and the malformed id reported once per transaction
    END IF;
    uid := left(nullif(current_setting('__USER_SETTING__', true), ''), 256);
    IF 'session_id' = ANY (stamps)
       AND ((TG_OP = 'INSERT' AND NEW.session_id IS NULL)
            OR (TG_OP = 'UPDATE' AND NEW.session_id IS NOT DISTINCT FROM OLD.session_id)) THEN
        NEW.session_id := sid;
    END IF;
    IF 'changed_by_user_id' = ANY (stamps)
       AND ((TG_OP = 'INSERT' AND NEW.changed_by_user_id IS NULL)
            OR (TG_OP = 'UPDATE' AND NEW.changed_by_user_id IS NOT DISTINCT FROM OLD.changed_by_user_id)) THEN
        NEW.changed_by_user_id := uid;
    END IF;
    IF 'change_timestamp' = ANY (stamps)
       AND ((TG_OP = 'INSERT' AND NEW.change_timestamp IS NULL)
            OR (TG_OP = 'UPDATE' AND NEW.change_timestamp IS NOT DISTINCT FROM OLD.change_timestamp)) THEN
        NEW.change_timestamp := statement_timestamp();
    END IF;
    RETURN NEW;
END
$fn$;
