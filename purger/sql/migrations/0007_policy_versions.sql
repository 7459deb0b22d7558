-- 0007: the policy is versioned in the database, and each record is stored once
-- per (category, record_id) whatever its expiry.
--
-- policy_versions: every policy applied (`purger migrate` / `purger policy apply`),
-- with its digest, who applied it and when. category_rules: a category's rules
-- (retention, tenant overrides, bounds) get a new rule_version only when they
-- change, so that a change of one category re-tags that category alone.
-- Records carry the rule_version they were tagged with; rule_version 0 means
-- "tagged before the policy was versioned" and is re-tagged like any older one.
CREATE TABLE purger.policy_versions (
    version    integer PRIMARY KEY CHECK (version > 0),
    label      text NOT NULL,
    digest     text NOT NULL,
    rules      jsonb NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    applied_by text NOT NULL CHECK (btrim(applied_by) <> '')
);

CREATE TABLE purger.category_rules (
    category       text NOT NULL,
    rule_version   integer NOT NULL CHECK (rule_version > 0),
    policy_version integer NOT NULL REFERENCES purger.policy_versions,
    rules          jsonb NOT NULL,
    digest         text NOT NULL,
    PRIMARY KEY (category, rule_version)
);

ALTER TABLE purger.categories
    ADD COLUMN rule_version integer NOT NULL DEFAULT 0,
    ADD COLUMN retired_at timestamptz,
    ADD COLUMN retired_by text,
    ADD COLUMN dropped_at timestamptz;

-- Where the re-tagging of a category to its current rules has got to (resumable).
CREATE TABLE purger.retag_progress (
    category          text PRIMARY KEY,
    rule_version      integer NOT NULL,
    cursor_expires_at timestamptz,
    cursor_record_id  text,
    retagged          bigint NOT NULL DEFAULT 0,
    started_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at       timestamptz
);

GRANT SELECT ON purger.policy_versions, purger.category_rules TO purger_runtime;
GRANT SELECT, INSERT, UPDATE, DELETE ON purger.retag_progress TO purger_runtime;

-- Existing category tables: the rule_version column, and the key registry
-- keys_<category> (one row per stored record, live or held, whose expires_at
-- follows the record), filled from what is stored. A record stored twice under
-- two expiries (possible before this migration) keeps its first copy.
DO $$
DECLARE
    c record;
    p record;
    dupes bigint;
BEGIN
    FOR c IN SELECT name, parent_table FROM purger.categories
             WHERE to_regclass(format('purger.%I', parent_table)) IS NOT NULL
    LOOP
        EXECUTE format('ALTER TABLE purger.%I ADD COLUMN IF NOT EXISTS rule_version integer '
                       'NOT NULL DEFAULT 0', c.parent_table);
        EXECUTE format('ALTER TABLE purger.%I ADD COLUMN IF NOT EXISTS rule_version integer '
                       'NOT NULL DEFAULT 0', 'held_' || c.name);
        EXECUTE format('CREATE TABLE purger.%I (record_id text PRIMARY KEY, '
                       'expires_at timestamptz NOT NULL)', 'keys_' || c.name);
        EXECUTE format('CREATE INDEX %I ON purger.%I (expires_at)',
                       'keys_' || c.name || '_expires_at_idx', 'keys_' || c.name);
        EXECUTE format('ALTER TABLE purger.%I OWNER TO purger_runtime', 'keys_' || c.name);
        EXECUTE format(
            'INSERT INTO purger.%I (record_id, expires_at) '
            'SELECT DISTINCT ON (record_id) record_id, expires_at FROM ('
            '  SELECT record_id, expires_at, ingested_at, 0 AS src FROM purger.%I'
            '  UNION ALL SELECT record_id, expires_at, ingested_at, 1 FROM purger.%I) s '
            'ORDER BY record_id, ingested_at, src',
            'keys_' || c.name, c.parent_table, 'held_' || c.name);
        EXECUTE format(
            'DELETE FROM purger.%I r WHERE NOT EXISTS (SELECT 1 FROM purger.%I k '
            'WHERE k.record_id = r.record_id AND k.expires_at = r.expires_at)',
            'held_' || c.name, 'keys_' || c.name);
        EXECUTE format(
            'DELETE FROM purger.%I r WHERE NOT EXISTS (SELECT 1 FROM purger.%I k '
            'WHERE k.record_id = r.record_id AND k.expires_at = r.expires_at)',
            c.parent_table, 'keys_' || c.name);
        GET DIAGNOSTICS dupes = ROW_COUNT;
        IF dupes > 0 THEN
            -- The registry's row counts are what a purge reports as destroyed.
            FOR p IN SELECT partition_name FROM purger.partitions
                     WHERE category = c.name AND state = 'attached'
            LOOP
                EXECUTE format('UPDATE purger.partitions SET row_count = '
                               '(SELECT count(*) FROM purger.%I) WHERE partition_name = %L',
                               p.partition_name, p.partition_name);
            END LOOP;
        END IF;
    END LOOP;
END
$$;
