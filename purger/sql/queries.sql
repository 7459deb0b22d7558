-- Named queries, loaded once by purger.queries. "-- name: x" starts query x.
-- Queries with {placeholders} are identifier templates for psycopg.sql.

-- name: register_category
INSERT INTO purger.categories (name, parent_table, topic)
VALUES (%(name)s, %(parent)s, %(topic)s)
ON CONFLICT (name) DO UPDATE SET topic = excluded.topic
RETURNING parent_table;

-- name: owned_parent
SELECT c.parent_table
FROM purger.categories c
JOIN pg_class r ON r.relname = c.parent_table
JOIN pg_namespace n ON n.oid = r.relnamespace AND n.nspname = 'purger'
WHERE c.name = %(name)s AND r.relkind = 'p';

-- name: lock_partition_ddl
SELECT pg_advisory_xact_lock(hashtextextended('purger.partition-ddl.' || %(category)s, 0));

-- name: relation_exists
SELECT to_regclass(format('purger.%%I', %(name)s::text)) IS NOT NULL;

-- name: create_partition
-- Created as a table of its own, then attached: ATTACH PARTITION takes SHARE UPDATE
-- EXCLUSIVE on the parent, which readers and inserts do not conflict with, where
-- CREATE TABLE ... PARTITION OF takes ACCESS EXCLUSIVE and queues every ingest of the
-- category behind any long reader of the parent. The table is empty, so the
-- attach checks its constraint at once and builds its indexes on nothing.
CREATE TABLE purger.{partition}
    (LIKE purger.{parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);

-- name: attach_partition
ALTER TABLE purger.{parent} ATTACH PARTITION purger.{partition}
FOR VALUES FROM ({start}) TO ({end});

-- name: runtime_owner_needed
-- A category table not yet owned by purger_runtime (0006), the role whose members
-- create partitions, detach, drop and vacuum them. False before 0006.
SELECT to_regrole('purger_runtime') IS NOT NULL
       AND c.relowner <> to_regrole('purger_runtime')
FROM pg_class c WHERE c.oid = to_regclass(format('purger.%%I', %(name)s::text));

-- name: hand_over
ALTER TABLE purger.{table} OWNER TO purger_runtime;

-- name: register_partition
INSERT INTO purger.partitions (partition_name, category, range_start, range_end)
VALUES (%(name)s, %(category)s, %(start)s, %(end)s)
ON CONFLICT (partition_name) DO NOTHING;

-- name: known_partitions
SELECT partition_name, range_start, range_end
FROM purger.partitions WHERE category = %(category)s AND state = 'attached';

-- name: partition_ranges
-- Read under lock_partition_ddl before creating a partition: every registered
-- range of the category, in any state (a detached table may still exist), which
-- a new partition must not overlap.
SELECT range_start, range_end
FROM purger.partitions WHERE category = %(category)s
ORDER BY range_start;

-- name: ingest_lock_shared
-- Held by every ingest transaction; a purge pass takes it exclusively for an
-- instant to fix T, so no batch that read its clock before T commits after.
SELECT pg_advisory_xact_lock_shared(hashtextextended('purger.ingest.' || %(category)s, 0)),
       clock_timestamp();

-- name: ingest_lock_exclusive
SELECT pg_advisory_xact_lock(hashtextextended('purger.ingest.' || %(category)s, 0));

-- name: create_staging
CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE purger.{parent} INCLUDING DEFAULTS)
ON COMMIT DELETE ROWS;

-- name: copy_staging
COPY {staging} (record_id, tenant, occurred_at, expires_at, subject_keys, subjects, payload,
                source_topic, source_partition, source_offset) FROM STDIN;

-- name: insert_from_staging
-- Idempotent on (category, record_id), whatever the expiry: the key registry
-- admits a record once (the first staged copy by offset wins), so a redelivered
-- batch, a replay or a re-send with another occurred_at inserts nothing.
-- Counts land in the partition registry in the same transaction.
WITH fresh AS (
    INSERT INTO purger.{keys} AS k (record_id, expires_at)
    SELECT DISTINCT ON (record_id) record_id, expires_at
    FROM {staging}
    ORDER BY record_id, source_offset
    ON CONFLICT (record_id) DO NOTHING
    RETURNING k.record_id, k.expires_at
), inserted AS (
    INSERT INTO purger.{parent}
        (record_id, tenant, occurred_at, expires_at, subject_keys, subjects, payload,
         source_topic, source_partition, source_offset, rule_version)
    SELECT DISTINCT ON (s.record_id)
        s.record_id, s.tenant, s.occurred_at, s.expires_at, s.subject_keys, s.subjects,
        s.payload, s.source_topic, s.source_partition, s.source_offset, %(rule_version)s
    FROM {staging} s
    JOIN fresh f ON f.record_id = s.record_id AND f.expires_at = s.expires_at
    ORDER BY s.record_id, s.source_offset
    -- {guard}: empty, or ON CONFLICT DO NOTHING after this statement met a row
    -- stored without its key (seeded past the purger), so that it is not doubled.
    -- Unguarded, the insert skips a speculative check per row (Storage._insert).
    {guard}
    RETURNING expires_at
), per_hour AS (
    -- Partition bounds are whole UTC hours whatever the granularity (old and new
    -- ranges mix after a granularity change), so each hour lies in one partition.
    SELECT date_bin('1 hour', expires_at, '1970-01-01 00:00:00+00') AS hour, count(*) AS n
    FROM inserted GROUP BY 1
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
), counted AS (
    UPDATE purger.partitions p SET row_count = p.row_count + c.n
    FROM per_partition c WHERE p.partition_name = c.partition_name
    RETURNING c.n
)
SELECT coalesce(sum(n), 0)::bigint FROM counted;

-- name: category_stats
SELECT count(*) FILTER (WHERE state = 'attached') AS partitions,
       coalesce(sum(row_count), 0)::bigint AS records
FROM purger.partitions WHERE category = %(category)s;

-- name: expiry_range
SELECT min(expires_at), max(expires_at) FROM purger.{parent};

-- name: audit_lock
SELECT pg_advisory_xact_lock(hashtextextended('purger.audit', 0));

-- name: audit_last
SELECT seq, hash FROM purger.audit_log ORDER BY seq DESC LIMIT 1;

-- name: audit_insert
INSERT INTO purger.audit_log (seq, kind, recorded_at, content, prev_hash, hash)
VALUES (%(seq)s, %(kind)s, %(recorded_at)s, %(content)s, %(prev_hash)s, %(hash)s);

-- name: audit_set_head
INSERT INTO purger.audit_head (singleton, seq, hash) VALUES (true, %(seq)s, %(hash)s)
ON CONFLICT (singleton) DO UPDATE SET seq = excluded.seq, hash = excluded.hash;

-- name: audit_head
SELECT seq, hash FROM purger.audit_head;

-- name: audit_entries
SELECT seq, kind, recorded_at, content, prev_hash, hash FROM purger.audit_log
WHERE recorded_at >= %(since)s ORDER BY seq;

-- name: audit_all
SELECT seq, kind, recorded_at, content, prev_hash, hash FROM purger.audit_log ORDER BY seq;

-- name: audit_last_of_kind
SELECT seq, kind, recorded_at, content, prev_hash, hash FROM purger.audit_log
WHERE kind = %(kind)s ORDER BY seq DESC LIMIT 1;

-- name: purge_candidates
-- Partitions that hold anything expired at T: wholly expired ones and the one containing T.
-- "<=": when T is exactly a boundary, the partition starting at T holds the
-- records that expire exactly at T, which are expired too.
SELECT partition_name, range_start, range_end, row_count, state
FROM purger.partitions
WHERE category = %(category)s AND range_start <= %(t)s
ORDER BY range_start;

-- name: attached_partitions
SELECT c.relname, i.inhdetachpending
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_class p ON p.oid = i.inhparent
JOIN pg_namespace n ON n.oid = p.relnamespace
WHERE n.nspname = 'purger' AND p.relname = %(parent)s;

-- name: set_partition_state
UPDATE purger.partitions SET state = %(state)s WHERE partition_name = %(name)s;

-- name: mark_detaching
-- Before their detaches, in one commit: a partition found detached with this state is
-- the purger's own (a pass died between its DETACH and the state 'detached').
UPDATE purger.partitions SET state = 'detaching'
WHERE partition_name = ANY(%(names)s) AND state = 'attached';

-- name: unregister_partition
DELETE FROM purger.partitions WHERE partition_name = %(name)s RETURNING row_count;

-- name: detach_concurrently
ALTER TABLE purger.{parent} DETACH PARTITION purger.{partition} CONCURRENTLY;

-- name: detach_finalize
ALTER TABLE purger.{parent} DETACH PARTITION purger.{partition} FINALIZE;

-- name: drop_partition
DROP TABLE purger.{partition};

-- name: scan_in_physical_order
-- For delete_expired_batch: a scan of a table larger than shared_buffers / 4 may
-- otherwise start where another scan of it is (synchronize_seqscans), and a parallel
-- one returns its rows in any order.
SET LOCAL synchronize_seqscans = off;
SET LOCAL max_parallel_workers_per_gather = 0;

-- name: delete_expired_batch
-- The first %(limit)s expired rows at or after the tuple %(from)s, in the partition's
-- physical order (see scan_in_physical_order), and the last of them: the next batch
-- starts after it. A TID range scan reads from there on, so the batches of a pass read
-- the partition about once, where a LIMIT from its start would read again, each batch,
-- the dead tuples of the batches before it.
-- "ctid = ANY (ARRAY(...))" is a TID scan of the chosen rows; a join on ctid would be a
-- hash join over the whole partition, each batch.
WITH deleted AS (
    DELETE FROM purger.{partition}
    WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM purger.{partition}
        WHERE ctid >= %(from)s::tid AND expires_at <= %(t)s
        LIMIT %(limit)s))
      AND expires_at <= %(t)s  -- checked again on a row updated meanwhile
    RETURNING ctid, expires_at
)
SELECT count(*), min(expires_at), max(expires_at), max(ctid)::text FROM deleted;

-- name: forget_keys_batch
-- Keys of destroyed records (purger/key_trim.py): expired at T, older than every
-- partition still registered (so no stored record can have them), not held.
WITH doomed AS (
    SELECT k.ctid FROM purger.{keys} k
    WHERE k.expires_at <= %(t)s
      AND k.expires_at < coalesce((SELECT min(p.range_start) FROM purger.partitions p
                                   WHERE p.category = %(category)s), 'infinity')
      AND NOT EXISTS (SELECT 1 FROM purger.{held} h
                      WHERE h.expires_at = k.expires_at AND h.record_id = k.record_id)
    LIMIT %(limit)s
)
DELETE FROM purger.{keys} k USING doomed d WHERE k.ctid = d.ctid;

-- name: count_expired
SELECT count(*) FROM purger.{partition} WHERE expires_at <= %(t)s;

-- name: decrement_rows
UPDATE purger.partitions SET row_count = greatest(row_count - %(n)s, 0)
WHERE partition_name = %(name)s;

-- name: try_lock
SELECT pg_try_advisory_lock(hashtextextended(%(key)s, 0));

-- name: unlock
SELECT pg_advisory_unlock(hashtextextended(%(key)s, 0));

-- name: retag_fence_pass
-- Held by a purge pass from before it fixes T to its end: a re-tag batch moving a row
-- into a partition the pass has dropped (and its ensure re-created) or has already
-- purged would keep a record expired at T past the pass.
SELECT pg_advisory_lock(hashtextextended('purger.retag-fence', 0));

-- name: retag_fence_pass_release
SELECT pg_advisory_unlock(hashtextextended('purger.retag-fence', 0));

-- name: retag_fence_batch
-- Held shared by a re-tag batch from its partitions' creation to its move.
SELECT pg_advisory_lock_shared(hashtextextended('purger.retag-fence', 0));

-- name: retag_fence_batch_release
SELECT pg_advisory_unlock_shared(hashtextextended('purger.retag-fence', 0));

-- name: db_now
SELECT clock_timestamp();

-- ---------------------------------------------------------------------------
-- Legal holds (purger/hold_registry.py, held_storage.py, stored_records.py,
-- subject_export.py). Coverage is always purger.hold_covers (0003);
-- {prefilter} is an index-backed superset of the covered rows (subject keys
-- through the GIN index, tenants through the (tenant, occurred_at) index) so
-- that the cost follows the held records, not the size of the partition.

-- name: holds_lock_purge
-- Taken by every transaction that destroys or moves records: it conflicts with
-- placing and releasing holds, so the holds read next stay true until commit.
LOCK TABLE purger.legal_holds IN SHARE MODE;

-- name: holds_lock_place
-- Taken first by placing and releasing: waits for a running destroying
-- transaction, and makes the next one wait (and then see this hold).
LOCK TABLE purger.legal_holds IN ROW EXCLUSIVE MODE;

-- name: hold_insert
INSERT INTO purger.legal_holds
    (case_ref, reason, placed_by, categories, subject_keys, tenant, occurred_from, occurred_to,
     all_records, scope_key)
VALUES (%(case_ref)s, %(reason)s, %(placed_by)s, %(categories)s, %(subject_keys)s, %(tenant)s,
        %(occurred_from)s, %(occurred_to)s, %(all_records)s, %(scope_key)s)
RETURNING id, case_ref, reason, placed_by, placed_at, categories, subject_keys, tenant,
          occurred_from, occurred_to, all_records, released_at, released_by, release_reason,
       released_selectors;

-- name: hold_release
UPDATE purger.legal_holds
SET released_at = clock_timestamp(), released_by = %(released_by)s,
    release_reason = %(release_reason)s,
    subject_keys = NULL, released_selectors = purger.selector_counts(subject_keys),
    scope_key = NULL
WHERE id = %(id)s AND released_at IS NULL
RETURNING id, case_ref, reason, placed_by, placed_at, categories, subject_keys, tenant,
          occurred_from, occurred_to, all_records, released_at, released_by, release_reason,
       released_selectors;

-- name: hold_get
SELECT id, case_ref, reason, placed_by, placed_at, categories, subject_keys, tenant,
       occurred_from, occurred_to, all_records, released_at, released_by, release_reason,
       released_selectors
FROM purger.legal_holds WHERE id = %(id)s;

-- name: hold_scope_key
-- The key of a hold's audited scope HMAC (0005): NULL once released, or when
-- the hold was placed before 0005. Kept out of hold_get: never operator output.
SELECT scope_key FROM purger.legal_holds WHERE id = %(id)s;

-- name: hold_placed_entry
-- The audit entry that recorded the placing of a hold (a scan of the trail).
SELECT content FROM purger.audit_log
WHERE kind = 'hold_placed' AND content->>'hold_id' = %(id)s::text
ORDER BY seq LIMIT 1;

-- name: holds_list
SELECT id, case_ref, reason, placed_by, placed_at, categories, subject_keys, tenant,
       occurred_from, occurred_to, all_records, released_at, released_by, release_reason,
       released_selectors
FROM purger.legal_holds
WHERE NOT %(active_only)s OR released_at IS NULL
ORDER BY id;

-- name: holds_active_count
SELECT count(*) FROM purger.legal_holds WHERE released_at IS NULL;

-- name: category_partition_tables
-- Every partition of the category that still exists, attached or detached.
SELECT p.partition_name
FROM purger.partitions p
WHERE p.category = %(category)s AND to_regclass(format('purger.%%I', p.partition_name)) IS NOT NULL
ORDER BY p.range_start;

-- name: prefilter_all
TRUE

-- name: prefilter_subjects
r.subject_keys && {keys}::text[]

-- name: prefilter_tenant
(r.tenant = {tenant}::text
 AND r.occurred_at >= coalesce({occurred_from}::timestamptz, '-infinity')
 AND r.occurred_at <= coalesce({occurred_to}::timestamptz, 'infinity'))

-- name: covered_by_active_hold
EXISTS (
    SELECT 1 FROM purger.legal_holds h
    WHERE h.released_at IS NULL
      AND purger.hold_covers(h.categories, h.subject_keys, h.tenant, h.occurred_from,
                             h.occurred_to, %(category)s, r.tenant, r.occurred_at,
                             r.subject_keys))

-- name: covered_expired
-- Rows of a partition that are expired at T and covered by an active hold.
r.expires_at <= %(t)s AND ({prefilter}) AND {covered}

-- name: preserve_check
-- Covered rows, and how many of them held storage already has (a redelivery).
SELECT count(*), count(k.record_id)
FROM purger.{source} r
LEFT JOIN purger.{held} k ON k.expires_at = r.expires_at AND k.record_id = r.record_id
WHERE {where};

-- name: preserve_copy
INSERT INTO purger.{held}
    (record_id, tenant, occurred_at, expires_at, ingested_at, subject_keys, subjects, payload,
     source_topic, source_partition, source_offset, rule_version)
SELECT r.record_id, r.tenant, r.occurred_at, r.expires_at, r.ingested_at, r.subject_keys,
       r.subjects, r.payload, r.source_topic, r.source_partition, r.source_offset,
       r.rule_version
FROM purger.{source} r
WHERE {where}
ON CONFLICT DO NOTHING;

-- name: preserve_remove
-- Only rows that held storage has are removed from their partition.
DELETE FROM purger.{source} r
WHERE {where}
  AND EXISTS (SELECT 1 FROM purger.{held} k
              WHERE k.expires_at = r.expires_at AND k.record_id = r.record_id);

-- name: held_purge
-- Held records no active hold covers any more: destroyed like any expired record.
WITH deleted AS (
    DELETE FROM purger.{held} r
    WHERE r.expires_at <= %(t)s AND NOT {covered}
    RETURNING r.expires_at
)
SELECT count(*), min(expires_at), max(expires_at) FROM deleted;

-- name: held_purgeable
SELECT count(*) FROM purger.{held} r WHERE r.expires_at <= %(t)s AND NOT {covered};

-- name: expired_by_coverage
-- Expired rows of a table: (covered by an active hold, not covered).
SELECT count(*) FILTER (WHERE c), count(*) FILTER (WHERE NOT c)
FROM (SELECT {covered} AS c FROM purger.{table} r WHERE r.expires_at <= %(t)s) x;

-- name: held_count
SELECT count(*) FROM purger.{held};

-- name: store_held_from_staging
-- Records that arrive already expired but covered by an active hold go straight
-- to held storage, unless the key registry already has the record (stored live
-- or held, under any expiry: a redelivery). The registry, not the parent, is
-- asked: a look-up in the parent would lock every partition it might search.
WITH covered AS (
    SELECT r.* FROM {staging} r
    WHERE r.expires_at <= %(now)s AND {covered}
), fresh AS (
    INSERT INTO purger.{keys} AS k (record_id, expires_at)
    SELECT DISTINCT ON (record_id) record_id, expires_at
    FROM covered
    ORDER BY record_id, source_offset
    ON CONFLICT (record_id) DO NOTHING
    RETURNING k.record_id, k.expires_at
), inserted AS (
    INSERT INTO purger.{held}
        (record_id, tenant, occurred_at, expires_at, subject_keys, subjects, payload,
         source_topic, source_partition, source_offset, rule_version)
    SELECT DISTINCT ON (c.record_id)
        c.record_id, c.tenant, c.occurred_at, c.expires_at, c.subject_keys, c.subjects,
        c.payload, c.source_topic, c.source_partition, c.source_offset, %(rule_version)s
    FROM covered c
    JOIN fresh f ON f.record_id = c.record_id AND f.expires_at = c.expires_at
    ORDER BY c.record_id, c.source_offset
    RETURNING 1
)
SELECT (SELECT count(*) FROM covered), (SELECT count(*) FROM inserted);

-- name: scope_matches
-- Stored rows of one table in the scope of one hold (given as parameters, so
-- that it can be counted before the hold exists).
SELECT r.expires_at, r.record_id
FROM purger.{source} r
WHERE ({prefilter})
  AND purger.hold_covers(%(h_categories)s::text[], %(h_subject_keys)s::text[],
                         %(h_tenant)s::text, %(h_occurred_from)s::timestamptz,
                         %(h_occurred_to)s::timestamptz, %(category)s, r.tenant,
                         r.occurred_at, r.subject_keys)

-- name: count_union
SELECT count(*) FROM ({parts}) m;

-- name: subject_records
-- One subject's records in one table, with the active holds that cover each.
SELECT r.record_id, r.tenant, r.occurred_at, r.expires_at, r.ingested_at, r.subjects,
       r.payload, r.source_topic, r.source_partition, r.source_offset,
       ARRAY(SELECT h.id FROM purger.legal_holds h
             WHERE h.released_at IS NULL
               AND purger.hold_covers(h.categories, h.subject_keys, h.tenant,
                                      h.occurred_from, h.occurred_to, %(category)s,
                                      r.tenant, r.occurred_at, r.subject_keys)
             ORDER BY h.id) AS holds
FROM purger.{source} r
WHERE r.subject_keys && %(keys)s::text[]
ORDER BY r.expires_at, r.record_id;

-- name: last_successful_pass
-- The kind and the outcomes that count as completed come from purger/audit_entries.py
-- and purger/purge_report.py, where they are named once.
SELECT recorded_at FROM purger.audit_log
 WHERE kind = %(kind)s AND content->>'outcome' = ANY(%(outcomes)s::text[])
 ORDER BY seq DESC LIMIT 1;

-- name: vacuum_table
-- After row deletes (purger/vacuum.py): INDEX_CLEANUP ON, so that the index entries
-- (the GIN index holds subject keys) go too, not only the heap tuples.
VACUUM (INDEX_CLEANUP ON) purger.{table};

-- name: vacuum_analyze_table
VACUUM (ANALYZE, INDEX_CLEANUP ON) purger.{table};
