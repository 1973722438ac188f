-- Append-only: BEFORE UPDATE / DELETE (row) and BEFORE TRUNCATE (statement) on the audit log.
-- Owners and superusers are refused too; only disabling the trigger (owner) gets past it, and the
-- hash chain shows what happened then.
-- Trigger mode also puts it BEFORE TRUNCATE on each audited table (and its partitions), with
-- argument 0 the table's name in the log: TRUNCATE fires no row trigger, so it would empty the
-- table without one audit row.
CREATE OR REPLACE FUNCTION __REFUSE_FN__() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF TG_NARGS > 0 THEN
        RAISE EXCEPTION 'sessiontrace: TRUNCATE of %.% refused: % is audited, and TRUNCATE removes rows without auditing them', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'DELETE the rows instead: each deleted row is audited';
    END IF;
    RAISE EXCEPTION 'sessiontrace: % on %.% refused: the audit log is append-only', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit rows are never changed or removed; record a correction as a new change';
END
$fn$;
