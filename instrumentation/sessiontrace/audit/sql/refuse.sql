-- Append-only: BEFORE UPDATE / DELETE (row) and BEFORE TRUNCATE (statement) on the audit log.
-- Owners and superusers are refused too; only disabling the trigger (owner) gets past it, and the
-- hash chain shows what happened then.
CREATE OR REPLACE FUNCTION __REFUSE_FN__() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION 'sessiontrace: % on %.% refused: the audit log is append-only', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit rows are never changed or removed; record a correction as a new change';
END
$fn$;
