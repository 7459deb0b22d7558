-- Named queries of `purger explain` (purger/explain.py), loaded by purger.queries.
-- Read-only. Queries with {placeholders} are identifier templates for psycopg.sql;
-- they never select a record's subjects or payload.

-- name: category_state
SELECT name, rule_version, retired_at, dropped_at
FROM purger.categories WHERE name = %(category)s;

-- name: known_categories
SELECT name FROM purger.categories WHERE dropped_at IS NULL ORDER BY name;

-- name: record_key
-- The key registry has one row per stored record (live or held), whatever its expiry.
SELECT expires_at FROM purger.{keys} WHERE record_id = %(record_id)s;

-- name: record_partition
-- The partition (attached or detached, still existing) whose range holds the expiry.
SELECT partition_name, state
FROM purger.partitions
WHERE category = %(category)s AND range_start <= %(expires_at)s AND range_end > %(expires_at)s
  AND to_regclass(format('purger.%%I', partition_name)) IS NOT NULL;

-- name: record_row
-- One stored record, what decides its expiry, and the active holds that cover it.
SELECT r.tenant, r.occurred_at, r.expires_at, r.ingested_at, r.rule_version,
       ARRAY(SELECT h.id FROM purger.legal_holds h
             WHERE h.released_at IS NULL
               AND purger.hold_covers(h.categories, h.subject_keys, h.tenant,
                                      h.occurred_from, h.occurred_to, %(category)s,
                                      r.tenant, r.occurred_at, r.subject_keys)
             ORDER BY h.id) AS holds
FROM purger.{source} r
WHERE r.expires_at = %(expires_at)s AND r.record_id = %(record_id)s;

-- name: holds_by_id
SELECT id, case_ref, placed_at FROM purger.legal_holds WHERE id = ANY(%(ids)s::bigint[])
ORDER BY id;

-- name: subject_record_ids
-- A subject's records in one table (through the GIN index): ids only.
SELECT r.record_id, r.expires_at
FROM purger.{source} r
WHERE r.subject_keys && %(keys)s::text[]
ORDER BY r.expires_at, r.record_id
LIMIT %(limit)s;

-- name: rule_versions
-- Every rule version of a category, newest first, with the policy version it came with.
SELECT r.rule_version, r.rules, r.digest, r.policy_version, v.label, v.applied_at
FROM purger.category_rules r JOIN purger.policy_versions v ON v.version = r.policy_version
WHERE r.category = %(category)s
ORDER BY r.rule_version DESC;

-- name: last_category_pass
-- The newest purge pass that included the category (the (kind, seq) index, backwards).
SELECT seq, recorded_at, content FROM purger.audit_log
WHERE kind = %(kind)s AND content -> 'categories' -> %(category)s IS NOT NULL
ORDER BY seq DESC LIMIT 1;

-- name: destructions_containing
-- Destruction entries of a category whose expiry range holds %(expires_at)s: a
-- dropped partition's range is [from, to), a batch's deleted rows [from, to].
SELECT seq, kind, recorded_at, content FROM purger.audit_log
WHERE kind = ANY(%(kinds)s::text[]) AND content ->> 'category' = %(category)s
  AND (content ->> 'expiry_from')::timestamptz <= %(expires_at)s
  AND CASE WHEN kind = %(half_open)s
           THEN %(expires_at)s < (content ->> 'expiry_to')::timestamptz
           ELSE %(expires_at)s <= (content ->> 'expiry_to')::timestamptz END
ORDER BY seq;

-- name: latest_destructions
SELECT seq, kind, recorded_at, content FROM purger.audit_log
WHERE kind = ANY(%(kinds)s::text[]) AND content ->> 'category' = %(category)s
ORDER BY seq DESC LIMIT %(limit)s;
