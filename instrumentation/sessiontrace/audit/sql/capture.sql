-- Trigger mode: AFTER INSERT / UPDATE / DELETE FOR EACH ROW on an audited table writes one audit
-- row in the same transaction (source 'trigger'). Arguments, fixed by audit_tables() from the
-- catalog at install time:
--   0: primary key columns (text[])      1: excluded columns (text[])    2: masked columns (text[])
--   3: the table's name in the log      4: stamp columns the table has (text[]: session_id,
--      changed_by_user_id, change_timestamp)
--   5: the recorded columns (all but the excluded and stamp columns), in byte order (text[];
--      absent from triggers installed by older versions)
-- SECURITY INVOKER: it runs as whoever writes the table, who therefore needs INSERT on the log
-- (the chain trigger, not this function, holds the key). As SECURITY DEFINER it ran as the log's
-- owner, and to_jsonb() calls the cast to json of a column's type: whoever owns that type (or may
-- add a column to the table) could have run code as the owner. A write by a role without INSERT
-- on the log fails, so no change goes unaudited. EXECUTE is the owner's alone (install()), so
-- only the owner, its members and superusers can attach it, through audit_tables().
CREATE OR REPLACE FUNCTION __CAPTURE_FN__() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    stamps text[] := TG_ARGV[4]::text[];
    before_row jsonb;
    after_row jsonb;
    keyed jsonb;
    pk text[];
    rid text;
    changed jsonb;
    masked text[];
    recorded text[];
    col text;
    sid text;
    uid text;
    moment timestamptz := statement_timestamp();
BEGIN
    IF TG_OP = 'UPDATE' AND NEW *= OLD THEN
        RETURN NULL;  -- an UPDATE that changes nothing is not a change
    END IF;
    IF TG_OP <> 'INSERT' THEN before_row := to_jsonb(OLD); END IF;
    IF TG_OP <> 'DELETE' THEN after_row := to_jsonb(NEW); END IF;

    -- record_id: the primary key as compact JSON, keys in byte order (see postgres.py).
    keyed := coalesce(after_row, before_row);
    pk := TG_ARGV[0]::text[];
    IF cardinality(pk) = 1 THEN  -- the common case, without a query
        rid := '{' || to_jsonb(pk[1])::text || ':' || coalesce(keyed -> pk[1], 'null'::jsonb)::text || '}';
    ELSE
        SELECT '{' || string_agg(to_jsonb(c)::text || ':' || coalesce(keyed -> c, 'null'::jsonb)::text, ',' ORDER BY c COLLATE "C") || '}'
          INTO rid FROM unnest(pk) AS c;
    END IF;

    -- Excluded columns are left out; so are the stamp columns, as in the ORM mode: the audit row
    -- has its own session, user and timestamp.
    before_row := before_row - TG_ARGV[1]::text[] - stamps;
    after_row := after_row - TG_ARGV[1]::text[] - stamps;

    -- changed_fields: sorted names. When the row has exactly the columns recorded at install
    -- time, they are walked with simple expressions: a query per row (jsonb_each) cost as much as
    -- the rest of this function. A column added or dropped since falls back to that query.
    IF TG_NARGS > 5 THEN
        recorded := TG_ARGV[5]::text[];
        keyed := coalesce(after_row, before_row);
        IF NOT (keyed ?& recorded AND keyed - recorded = '{}'::jsonb) THEN
            recorded := NULL;
        END IF;
    END IF;
    IF recorded IS NOT NULL AND TG_OP = 'UPDATE' THEN
        changed := '[]'::jsonb;
        FOREACH col IN ARRAY recorded LOOP
            IF after_row -> col IS DISTINCT FROM before_row -> col THEN
                changed := changed || to_jsonb(col);
            END IF;
        END LOOP;
    ELSIF recorded IS NOT NULL THEN
        changed := to_jsonb(recorded);
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT coalesce(jsonb_agg(e.key ORDER BY e.key COLLATE "C"), '[]'::jsonb) INTO changed
          FROM jsonb_each(after_row) AS e
         WHERE e.value IS DISTINCT FROM before_row -> e.key;
    ELSE
        SELECT coalesce(jsonb_agg(e ORDER BY e COLLATE "C"), '[]'::jsonb) INTO changed
          FROM jsonb_object_keys(coalesce(after_row, before_row)) AS e;
    END IF;
    IF TG_OP = 'UPDATE' AND changed = '[]'::jsonb THEN
        RETURN NULL;  -- only excluded or stamp columns changed
    END IF;

    masked := TG_ARGV[2]::text[];
    IF cardinality(masked) > 0 THEN
        before_row := before_row || coalesce((SELECT jsonb_object_agg(m, to_jsonb(__MASKED__::text)) FROM unnest(masked) AS m WHERE before_row ? m), '{}'::jsonb);
        after_row := after_row || coalesce((SELECT jsonb_object_agg(m, to_jsonb(__MASKED__::text)) FROM unnest(masked) AS m WHERE after_row ? m), '{}'::jsonb);
    END IF;

    -- The settings, as __CONTEXT_FN__() reads them (inlined: this runs for every row).
    sid := substring(lower(current_setting('__SESSION_SETTING__', true)) FROM '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$');
    IF sid IS NULL AND coalesce(current_setting('__SESSION_SETTING__', true), '') <> '' THEN
        PERFORM __CONTEXT_FN__();  -- reports the malformed id once per transaction
    END IF;
    uid := left(nullif(current_setting('__USER_SETTING__', true), ''), 256);
    -- The stamp columns hold what the application said explicitly (or the settings, via the
    -- stamp trigger): use them when the settings are silent.
    IF TG_OP <> 'DELETE' THEN
        IF sid IS NULL AND 'session_id' = ANY (stamps) THEN
            sid := substring(lower(NEW.session_id::text) FROM '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$');
        END IF;
        IF uid IS NULL AND 'changed_by_user_id' = ANY (stamps) THEN
            uid := left(NEW.changed_by_user_id::text, 256);
        END IF;
    END IF;

    INSERT INTO __AUDIT__ (
        table_name, record_id, change_type, changed_fields, previous_values, new_values,
        session_id, changed_by_user_id, change_timestamp, trace_id, span_id, source
    ) VALUES (
        TG_ARGV[3], rid, lower(TG_OP), changed, before_row, after_row,
        sid::uuid, uid, moment,
        substring(lower(current_setting('__TRACE_SETTING__', true)) FROM '^[0-9a-f]{32}$'),
        substring(lower(current_setting('__SPAN_SETTING__', true)) FROM '^[0-9a-f]{16}$'),
        'trigger'
    );
    RETURN NULL;
END
$fn$;
