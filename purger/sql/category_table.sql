-- Template of a category's tables; {parent}, {held}, {keys} and the index names
-- are filled in with psycopg.sql.Identifier, never by string formatting.
-- The parent is partitioned by range on expires_at: destroying a day of records
-- is a partition drop.
CREATE TABLE IF NOT EXISTS purger.{parent} (
    record_id        text NOT NULL,
    tenant           text NOT NULL,
    occurred_at      timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    ingested_at      timestamptz NOT NULL DEFAULT now(),
    subject_keys     text[] NOT NULL DEFAULT '{{}}',
    subjects         jsonb NOT NULL,
    payload          jsonb NOT NULL,
    source_topic     text,
    source_partition integer,
    source_offset    bigint,
    -- The category's rule version (purger.category_rules) that gave expires_at.
    rule_version     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (expires_at, record_id)
) PARTITION BY RANGE (expires_at);
-- "Every record of +31612345678, across categories" is a GIN look-up per category.
CREATE INDEX IF NOT EXISTS {gin_index} ON purger.{parent} USING gin (subject_keys);
-- Holds scoped to a tenant (and an occurred_at window) find their records by index.
CREATE INDEX IF NOT EXISTS {tenant_index} ON purger.{parent} (tenant, occurred_at);
-- Held storage: the category's records that legal holds keep past their expiry
-- after their partition was dropped (or their rows deleted). Not partitioned: it
-- holds only held records, so a pass can afford to scan it.
CREATE TABLE IF NOT EXISTS purger.{held} (
    LIKE purger.{parent} INCLUDING DEFAULTS,
    PRIMARY KEY (expires_at, record_id)
);
CREATE INDEX IF NOT EXISTS {held_gin_index} ON purger.{held} USING gin (subject_keys);
CREATE INDEX IF NOT EXISTS {held_tenant_index} ON purger.{held} (tenant, occurred_at);
-- The key registry: one row per stored record (live or held) whatever its expiry,
-- so that a redelivery, a replay or a re-send after a policy change is stored
-- once. A partition's primary key cannot do it: it must include expires_at.
CREATE TABLE IF NOT EXISTS purger.{keys} (
    record_id  text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS {keys_index} ON purger.{keys} (expires_at);
