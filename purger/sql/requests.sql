-- Named queries of the data-subject requests (purger/subject_requests.py,
-- erasure.py, restriction.py, access_report.py), loaded by purger.queries.
-- Queries with {placeholders} are identifier templates for psycopg.sql; a
-- {covered} placeholder is queries.sql's covered_by_active_hold (alias r).

-- name: request_insert
INSERT INTO purger.subject_requests
    (request_type, ref, received_on, due_on, opened_by, subject_keys, hmac_key)
VALUES (%(type)s, %(ref)s, %(received)s, %(due)s, %(by)s, %(keys)s, %(hmac_key)s)
RETURNING id, request_type, ref, received_on, due_on, opened_by, opened_at, subject_keys,
          extended_due_on, extension_reason, extended_by, extended_at, erased_at, closed_at,
          closed_by, close_reason, closed_selectors;

-- name: request_get
SELECT id, request_type, ref, received_on, due_on, opened_by, opened_at, subject_keys,
       extended_due_on, extension_reason, extended_by, extended_at, erased_at, closed_at,
       closed_by, close_reason, closed_selectors
FROM purger.subject_requests WHERE id = %(id)s;

-- name: request_lock
-- Serialises everything done to one request (erasure, extension, closing).
SELECT id, request_type, ref, received_on, due_on, opened_by, opened_at, subject_keys,
       extended_due_on, extension_reason, extended_by, extended_at, erased_at, closed_at,
       closed_by, close_reason, closed_selectors
FROM purger.subject_requests WHERE id = %(id)s FOR UPDATE;

-- name: request_lock_if_free
-- A purge pass never waits for an operator working on the same request.
SELECT id, request_type, ref, received_on, due_on, opened_by, opened_at, subject_keys,
       extended_due_on, extension_reason, extended_by, extended_at, erased_at, closed_at,
       closed_by, close_reason, closed_selectors
FROM purger.subject_requests WHERE id = %(id)s AND closed_at IS NULL FOR UPDATE SKIP LOCKED;

-- name: request_hmac_key
-- Never part of operator output; NULL once the request is closed.
SELECT hmac_key FROM purger.subject_requests WHERE id = %(id)s;

-- name: requests_list
SELECT id, request_type, ref, received_on, due_on, opened_by, opened_at, subject_keys,
       extended_due_on, extension_reason, extended_by, extended_at, erased_at, closed_at,
       closed_by, close_reason, closed_selectors
FROM purger.subject_requests
WHERE NOT %(open_only)s OR closed_at IS NULL
ORDER BY id;

-- name: request_extend
UPDATE purger.subject_requests
SET extended_due_on = %(extended_due)s, extension_reason = %(reason)s, extended_by = %(by)s,
    extended_at = clock_timestamp()
WHERE id = %(id)s AND closed_at IS NULL AND extended_due_on IS NULL;

-- name: request_mark_erased
UPDATE purger.subject_requests SET erased_at = %(at)s
WHERE id = %(id)s AND closed_at IS NULL AND erased_at IS NULL;

-- name: request_close
UPDATE purger.subject_requests
SET closed_at = clock_timestamp(), closed_by = %(by)s, close_reason = %(reason)s,
    subject_keys = NULL, closed_selectors = purger.selector_counts(subject_keys),
    hmac_key = NULL
WHERE id = %(id)s AND closed_at IS NULL
RETURNING id, request_type, ref, received_on, due_on, opened_by, opened_at, subject_keys,
          extended_due_on, extension_reason, extended_by, extended_at, erased_at, closed_at,
          closed_by, close_reason, closed_selectors;

-- name: erasures_pending
-- Open erasure requests already carried out: a pass completes them.
SELECT id FROM purger.subject_requests
WHERE request_type = 'erasure' AND closed_at IS NULL AND erased_at IS NOT NULL
ORDER BY id;

-- name: requests_by_type
-- Open and overdue (the deadline, extended or not, lies before today) per type.
SELECT request_type,
       count(*) FILTER (WHERE closed_at IS NULL),
       count(*) FILTER (WHERE closed_at IS NULL
                          AND coalesce(extended_due_on, due_on) < %(today)s::date)
FROM purger.subject_requests GROUP BY 1;

-- name: restricting_requests
-- The open restriction requests that cover a record carrying any of the keys.
SELECT id FROM purger.subject_requests
WHERE request_type = 'restriction' AND closed_at IS NULL AND subject_keys && %(keys)s::text[]
ORDER BY id;

-- name: restrictions_open
SELECT id, subject_keys FROM purger.subject_requests
WHERE request_type = 'restriction' AND closed_at IS NULL
ORDER BY id;

-- name: subject_restricted_keys
-- The keys of a subject's records (keys) that a restriction covers (restricted keys).
SELECT r.subject_keys FROM purger.{source} r
WHERE r.subject_keys && %(keys)s::text[] AND r.subject_keys && %(restricted)s::text[];

-- name: erase_rows
-- The subject's records that no active hold covers, stored before the erasure
-- whatever their date (a producer's clock may run ahead), or dated before it.
DELETE FROM purger.{source} r
WHERE r.subject_keys && %(keys)s::text[]
  AND (r.ingested_at <= %(until)s OR r.occurred_at <= %(until)s) AND NOT {covered}
RETURNING r.record_id, r.expires_at;

-- name: erase_keys
-- The key registry rows of the records just erased (same transaction).
DELETE FROM purger.{keys} k
USING unnest(%(ids)s::text[], %(expiries)s::timestamptz[]) AS e(record_id, expires_at)
WHERE k.record_id = e.record_id AND k.expires_at = e.expires_at;

-- name: erasable_count
SELECT count(*) FROM purger.{source} r
WHERE r.subject_keys && %(keys)s::text[]
  AND (r.ingested_at <= %(until)s OR r.occurred_at <= %(until)s) AND NOT {covered};

-- name: subject_count
SELECT count(*) FROM purger.{source} r WHERE r.subject_keys && %(keys)s::text[];

-- name: subject_held
-- The subject's records that active holds keep, and those holds.
SELECT count(DISTINCT (r.expires_at, r.record_id)),
       coalesce(array_agg(DISTINCT h.id), ARRAY[]::bigint[])
FROM purger.{source} r
JOIN purger.legal_holds h
  ON h.released_at IS NULL
 AND purger.hold_covers(h.categories, h.subject_keys, h.tenant, h.occurred_from,
                        h.occurred_to, %(category)s, r.tenant, r.occurred_at, r.subject_keys)
WHERE r.subject_keys && %(keys)s::text[];

-- name: table_exists
SELECT to_regclass(format('purger.%%I', %(name)s::text)) IS NOT NULL;
