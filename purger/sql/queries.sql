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
CREATE TABLE purger.{partition} PARTITION OF purger.{parent}
FOR VALUES FROM ({start}) TO ({end});

-- name: register_partition
INSERT INTO purger.partitions (partition_name, category, range_start, range_end)
VALUES (%(name)s, %(category)s, %(start)s, %(end)s)
ON CONFLICT (partition_name) DO NOTHING;

-- name: known_partitions
SELECT partition_name, range_start, range_end
FROM purger.partitions WHERE category = %(category)s AND state = 'attached';

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
-- Idempotent on (expires_at, record_id): a redelivered batch inserts nothing.
-- Counts land in the partition registry in the same transaction.
WITH inserted AS (
    INSERT INTO purger.{parent}
        (record_id, tenant, occurred_at, expires_at, subject_keys, subjects, payload,
         source_topic, source_partition, source_offset)
    SELECT DISTINCT ON (expires_at, record_id)
        record_id, tenant, occurred_at, expires_at, subject_keys, subjects, payload,
        source_topic, source_partition, source_offset
    FROM {staging}
    ORDER BY expires_at, record_id, source_offset
    ON CONFLICT DO NOTHING
    RETURNING expires_at
), per_partition AS (
    SELECT date_bin(%(granularity)s::interval, expires_at, '1970-01-01 00:00:00+00') AS start,
           count(*) AS n
    FROM inserted GROUP BY 1
), counted AS (
    UPDATE purger.partitions p SET row_count = p.row_count + c.n
    FROM per_partition c WHERE p.category = %(category)s AND p.range_start = c.start
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
SELECT partition_name, range_start, range_end, row_count, state
FROM purger.partitions
WHERE category = %(category)s AND range_start < %(t)s
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

-- name: unregister_partition
DELETE FROM purger.partitions WHERE partition_name = %(name)s RETURNING row_count;

-- name: detach_concurrently
ALTER TABLE purger.{parent} DETACH PARTITION purger.{partition} CONCURRENTLY;

-- name: detach_finalize
ALTER TABLE purger.{parent} DETACH PARTITION purger.{partition} FINALIZE;

-- name: drop_partition
DROP TABLE purger.{partition};

-- name: delete_expired_batch
WITH doomed AS (
    SELECT ctid FROM purger.{partition} WHERE expires_at <= %(t)s LIMIT %(limit)s
), deleted AS (
    DELETE FROM purger.{partition} d USING doomed WHERE d.ctid = doomed.ctid
    RETURNING d.expires_at
)
SELECT count(*), min(expires_at), max(expires_at) FROM deleted;

-- name: count_expired
SELECT count(*) FROM purger.{partition} WHERE expires_at <= %(t)s;

-- name: decrement_rows
UPDATE purger.partitions SET row_count = greatest(row_count - %(n)s, 0)
WHERE partition_name = %(name)s;

-- name: count_overdue
SELECT count(*) FROM purger.{parent} WHERE expires_at <= %(t)s;

-- name: try_lock
SELECT pg_try_advisory_lock(hashtextextended(%(key)s, 0));

-- name: unlock
SELECT pg_advisory_unlock(hashtextextended(%(key)s, 0));

-- name: db_now
SELECT clock_timestamp();
