-- Named queries of the versioned policy (purger/policy_versions.py, applied_rules.py,
-- retag.py, retirement.py). Loaded once by purger.queries.

-- name: policy_lock
-- Serialises applying, retiring and re-tagging against each other.
SELECT pg_advisory_xact_lock(hashtextextended('purger.policy', 0));

-- name: applied_rules
-- A category's current rules, read by every ingest transaction after its ingest lock.
SELECT c.rule_version, r.rules, r.digest, c.retired_at, c.dropped_at
FROM purger.categories c
LEFT JOIN purger.category_rules r ON r.category = c.name AND r.rule_version = c.rule_version
WHERE c.name = %(category)s;

-- name: applied_categories
SELECT c.name, c.rule_version, r.rules, r.digest, c.retired_at, c.dropped_at,
       r.policy_version
FROM purger.categories c
LEFT JOIN purger.category_rules r ON r.category = c.name AND r.rule_version = c.rule_version
ORDER BY c.name;

-- name: rules_of_version
SELECT r.rules, r.digest, r.policy_version, v.label, v.applied_at
FROM purger.category_rules r JOIN purger.policy_versions v ON v.version = r.policy_version
WHERE r.category = %(category)s AND r.rule_version = %(rule_version)s;

-- name: current_policy
SELECT version, label, digest, applied_at, applied_by
FROM purger.policy_versions ORDER BY version DESC LIMIT 1;

-- name: insert_policy_version
INSERT INTO purger.policy_versions (version, label, digest, rules, applied_by)
SELECT coalesce(max(version), 0) + 1, %(label)s, %(digest)s, %(rules)s, %(applied_by)s
FROM purger.policy_versions
RETURNING version, applied_at;

-- name: insert_category_rules
INSERT INTO purger.category_rules (category, rule_version, policy_version, rules, digest)
SELECT %(category)s, coalesce(max(rule_version), 0) + 1, %(policy_version)s, %(rules)s,
       %(digest)s
FROM purger.category_rules WHERE category = %(category)s
RETURNING rule_version;

-- name: set_rule_version
UPDATE purger.categories SET rule_version = %(rule_version)s WHERE name = %(category)s;

-- name: retire_category
UPDATE purger.categories SET retired_at = clock_timestamp(), retired_by = %(by)s
WHERE name = %(category)s AND retired_at IS NULL
RETURNING retired_at;

-- name: retired_categories
SELECT name, retired_at FROM purger.categories
WHERE retired_at IS NOT NULL AND dropped_at IS NULL ORDER BY name;

-- name: mark_dropped
UPDATE purger.categories SET dropped_at = clock_timestamp() WHERE name = %(category)s;

-- name: drop_category_tables
DROP TABLE purger.{parent}, purger.{held}, purger.{keys};

-- name: category_partition_count
SELECT count(*) FROM purger.partitions WHERE category = %(category)s;

-- name: expiry_diff
-- Per tenant: stored records whose expiry the given rules change, move earlier,
-- and make due now (expired by the new rules, not by the stored expiry). Computed
-- in UTC (the caller sets TimeZone), month part first, like purger/durations.py.
WITH overrides AS (
    SELECT * FROM unnest(%(tenants)s::text[], %(months)s::int[], %(secs)s::float8[])
        AS o(tenant, months, secs)
)
SELECT r.tenant,
       count(*) AS records,
       count(*) FILTER (WHERE n.expiry <> r.expires_at) AS changed,
       count(*) FILTER (WHERE n.expiry < r.expires_at) AS earlier,
       count(*) FILTER (WHERE n.expiry <= %(now)s AND r.expires_at > %(now)s) AS due_now
FROM purger.{parent} r
LEFT JOIN overrides o ON o.tenant = r.tenant
CROSS JOIN LATERAL (
    SELECT r.occurred_at + make_interval(months => coalesce(o.months, %(default_months)s),
                                         secs => coalesce(o.secs, %(default_secs)s)) AS expiry
) n
WHERE r.rule_version < %(below_version)s
GROUP BY r.tenant ORDER BY r.tenant;

-- name: retag_select
-- The next batch to re-tag, in primary-key order after the cursor. A row moved to a
-- later expiry is met again and skipped: it has the current rule version.
SELECT expires_at, record_id, tenant, occurred_at
FROM purger.{table}
WHERE (expires_at, record_id) > (%(after_expires)s, %(after_id)s)
  AND rule_version < %(rule_version)s
ORDER BY expires_at, record_id
LIMIT %(limit)s;

-- name: retag_update
-- Moves each row to the partition of its new expiry (an UPDATE of the partition
-- key) and its key along; the constant bounds let the planner prune partitions.
WITH v AS (
    SELECT * FROM unnest(%(old)s::timestamptz[], %(ids)s::text[], %(new)s::timestamptz[])
        AS v(old, id, new)
), moved AS (
    UPDATE purger.{table} p SET expires_at = v.new, rule_version = %(rule_version)s
    FROM v
    WHERE p.expires_at = v.old AND p.record_id = v.id AND p.rule_version < %(rule_version)s
      AND p.expires_at >= %(lowest)s AND p.expires_at <= %(highest)s
    RETURNING p.record_id, v.old, v.new
), rekeyed AS (
    UPDATE purger.{keys} k SET expires_at = m.new FROM moved m WHERE k.record_id = m.record_id
)
SELECT count(*),
       coalesce(array_agg(old) FILTER (WHERE old <> new), '{{}}'),
       coalesce(array_agg(new) FILTER (WHERE old <> new), '{{}}')
FROM moved;

-- name: adjust_row_counts
-- The partition registry's row counts follow rows moved by a re-tag (sign -1 for
-- the expiries they left, +1 for those they reached); see insert_from_staging.
WITH per_hour AS (
    SELECT date_bin('1 hour', e, '1970-01-01 00:00:00+00') AS hour, count(*) AS n
    FROM unnest(%(expiries)s::timestamptz[]) AS e GROUP BY 1
), per_partition AS (
    SELECT p.partition_name, sum(h.n) AS n
    FROM per_hour h
    CROSS JOIN LATERAL (
        SELECT r.partition_name, r.range_end FROM purger.partitions r
        WHERE r.category = %(category)s AND r.range_start <= h.hour
        ORDER BY r.range_start DESC LIMIT 1
    ) p
    WHERE p.range_end > h.hour
    GROUP BY 1
)
UPDATE purger.partitions p SET row_count = greatest(p.row_count + %(sign)s * c.n, 0)
FROM per_partition c WHERE p.partition_name = c.partition_name;

-- name: retag_progress_get
SELECT rule_version, cursor_expires_at, cursor_record_id, retagged, finished_at
FROM purger.retag_progress WHERE category = %(category)s;

-- name: retag_progress_start
INSERT INTO purger.retag_progress (category, rule_version)
VALUES (%(category)s, %(rule_version)s)
ON CONFLICT (category) DO UPDATE
SET rule_version = excluded.rule_version, cursor_expires_at = NULL, cursor_record_id = NULL,
    retagged = 0, started_at = clock_timestamp(), finished_at = NULL;

-- name: retag_progress_advance
UPDATE purger.retag_progress
SET cursor_expires_at = %(expires_at)s, cursor_record_id = %(record_id)s,
    retagged = retagged + %(n)s
WHERE category = %(category)s AND rule_version = %(rule_version)s;

-- name: retag_progress_finish
UPDATE purger.retag_progress SET finished_at = clock_timestamp()
WHERE category = %(category)s AND rule_version = %(rule_version)s AND finished_at IS NULL
RETURNING retagged;

-- name: stale_count
-- Stored records not yet re-tagged to the category's current rules.
SELECT (SELECT count(*) FROM purger.{parent} WHERE rule_version < %(rule_version)s)
     + (SELECT count(*) FROM purger.{held} WHERE rule_version < %(rule_version)s);

-- name: has_records
SELECT EXISTS (SELECT 1 FROM purger.{parent});
