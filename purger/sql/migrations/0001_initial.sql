-- 0001: the purger's own schema: category and partition registry, the audit chain.
CREATE SCHEMA IF NOT EXISTS purger;

-- Parent tables the purger created, one per category. Only tables listed here
-- (and their partitions, checked in pg_inherits) are ever detached or dropped.
CREATE TABLE purger.categories (
    name         text PRIMARY KEY,
    parent_table text NOT NULL UNIQUE,
    topic        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per partition the purger created. row_count is maintained by every
-- insert and delete so that a purge reports exact counts without scanning rows.
CREATE TABLE purger.partitions (
    partition_name text PRIMARY KEY,
    category       text NOT NULL REFERENCES purger.categories (name),
    range_start    timestamptz NOT NULL,
    range_end      timestamptz NOT NULL,
    row_count      bigint NOT NULL DEFAULT 0,
    state          text NOT NULL DEFAULT 'attached'
        CHECK (state IN ('attached', 'detaching', 'detached')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (range_start < range_end),
    UNIQUE (category, range_start)
);
CREATE INDEX partitions_category_range_end_idx ON purger.partitions (category, range_end);

-- Append-only, hash-chained audit trail. seq has no gaps: appends are
-- serialised, so a missing number is a removed entry.
CREATE TABLE purger.audit_log (
    seq         bigint PRIMARY KEY CHECK (seq > 0),
    kind        text NOT NULL,
    recorded_at timestamptz NOT NULL,
    content     jsonb NOT NULL,
    prev_hash   text NOT NULL,
    hash        text NOT NULL
);
CREATE INDEX audit_log_kind_seq_idx ON purger.audit_log (kind, seq);

CREATE FUNCTION purger.audit_log_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'purger.audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON purger.audit_log
    FOR EACH ROW EXECUTE FUNCTION purger.audit_log_refuse_change();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON purger.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION purger.audit_log_refuse_change();
