-- Named SQL of the vecmirror worker. Each block starts with `-- name: NAME` and a line saying why.
-- Table-specific statements (row loads, triggers, backfill pages) are built in source/statements.py
-- from quoted identifiers instead, because a table name cannot be a bind parameter.

-- name: create_migrations_table
-- The ledger of applied migration files; created before anything else so it can be locked.
CREATE SCHEMA IF NOT EXISTS vecmirror;
CREATE TABLE IF NOT EXISTS vecmirror.migrations (
    version     integer PRIMARY KEY,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: lock_migrations
-- Replicas may all run `migrate` at start: one applies, the others wait and then find nothing to do.
SELECT pg_advisory_xact_lock(hashtext('vecmirror.migrate'));

-- name: applied_migrations
-- Versions already applied, so each file runs exactly once.
SELECT version, name FROM vecmirror.migrations ORDER BY version;

-- name: record_migration
-- Written in the same transaction as the migration itself.
INSERT INTO vecmirror.migrations (version, name) VALUES ($1, $2);

-- name: table_columns
-- Column names and SQL types of a user table, to validate the config and cast key text back; a key
-- column's attnum lets the capture function find it after a rename, attnotnull that it has a value.
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
       t.typname AS base_type, a.attnum, a.attnotnull AS not_null
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = to_regclass(format('%I.%I', $1::text, $2::text))
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: table_shape
-- Capture triggers see the statements on this one table: not those on its partitions or inheritance
-- children, nor an ATTACH or DETACH. Such tables, and views, are refused (see tables.py).
SELECT c.relkind::text AS kind, c.relispartition AS is_partition,
       EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.oid) AS has_parents,
       EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = c.oid) AS has_children
FROM pg_class c WHERE c.oid = to_regclass(format('%I.%I', $1::text, $2::text));

-- name: unique_key_index
-- The key must identify one row: a valid unique index (the primary key included) whose columns are
-- all key columns, with no WHERE clause and no expressions. Returns one such index, or no row.
SELECT i.indexrelid::regclass::text AS index_name
FROM pg_index i
WHERE i.indrelid = to_regclass(format('%I.%I', $1::text, $2::text))
  AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
  AND ARRAY(
        SELECT a.attname::text
        FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE k.position <= i.indnkeyatts
      ) <@ $3::text[]
LIMIT 1;

-- name: primary_key_columns
-- The default row key of a mirror is its table's primary key, in key order.
SELECT a.attname AS name
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = to_regclass(format('%I.%I', $1::text, $2::text)) AND i.indisprimary
ORDER BY k.position;

-- name: installed_mirrors
-- What the last `migrate` installed, to find triggers of mirrors removed from the config.
SELECT name, table_schema, table_name, key_columns, backfill_state
FROM vecmirror.mirrors_v1 ORDER BY name;

-- name: capture_triggers
-- Every trigger running a mirror's capture function, on whatever table it now is (a renamed table
-- keeps its triggers): `migrate` drops them by the function, not by the table it registered, and
-- skips re-creating them when they are exactly right (DROP TRIGGER locks the table).
SELECT n.nspname AS table_schema, c.relname AS table_name, t.tgname AS trigger_name
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.tgfoid = to_regprocedure($1::text) AND NOT t.tgisinternal;

-- name: register_mirror
-- A new mirror, or one whose table or key changed, starts with a pending backfill.
INSERT INTO vecmirror.mirrors_v1 (name, table_schema, table_name, key_columns)
VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO UPDATE
SET table_schema = EXCLUDED.table_schema, table_name = EXCLUDED.table_name,
    key_columns = EXCLUDED.key_columns, installed_at = now(),
    backfill_state = 'pending', backfill_cursor = NULL;

-- name: forget_mirror
-- A mirror removed from the config leaves nothing behind in the vecmirror schema.
DELETE FROM vecmirror.mirrors_v1 WHERE name = $1;

-- name: forget_mirror_changes
-- Pending changes of a removed mirror would never be claimed again.
DELETE FROM vecmirror.changes_v1 WHERE mirror = $1;

-- name: forget_mirror_related_changes
-- A removed mirror's related changes would never be fanned out.
DELETE FROM vecmirror.related_changes_v1 WHERE mirror = $1;

-- name: forget_mirror_related_versions
-- Versions fan-outs gave a removed mirror's documents mean nothing to a later mirror of the name.
DELETE FROM vecmirror.related_versions_v1 WHERE mirror = $1;

-- name: forget_mirror_versions
-- Versions of a removed mirror's keys would only mislead a later mirror of the same name.
DELETE FROM vecmirror.versions_v1 WHERE mirror = $1;

-- name: forget_mirror_failures
-- Failures of a removed mirror no longer mean anything.
DELETE FROM vecmirror.failed_v1 WHERE mirror = $1;

-- name: lock_mirror_shared
-- Every batch holds this; processing a TRUNCATE takes it exclusively, so no batch that read rows
-- before the TRUNCATE can write after the TRUNCATE's keys were enqueued. It also says whether a
-- TRUNCATE marker is queued (the partial index of 0003 answers at once): the batch then steps aside
-- so the marker is handled first, alone.
SELECT EXISTS (
    SELECT 1 FROM vecmirror.changes_v1 WHERE mirror = $1 AND row_key IS NULL
) AS truncate_queued
FROM (SELECT pg_advisory_xact_lock_shared(hashtext('vecmirror.mirror'), hashtext($1))) AS shared_lock;

-- name: lock_mirror_exclusive
-- Waits for every in-flight batch of the mirror, on any worker, to commit or roll back.
SELECT pg_advisory_xact_lock(hashtext('vecmirror.mirror'), hashtext($1));

-- name: claim_changes
-- Oldest changes first; SKIP LOCKED lets workers pass each other, and the per-key advisory lock
-- (held until commit) keeps one key out of two workers' hands even when it has several changes.
-- The candidates are materialised first so locks are only tried on at most $2 rows.
-- A change with a future not_before is a failing row's next attempt: not yet.
-- `failing`: the key has a failed_v1 row to clear if it syncs now. Only the batch holding the key's
-- lock records or clears its failures, so this stays true until the batch commits.
WITH candidates AS MATERIALIZED (
    SELECT id, row_key FROM vecmirror.changes_v1
    WHERE mirror = $1 AND row_key IS NOT NULL AND (not_before IS NULL OR not_before <= now())
    ORDER BY id LIMIT $2
    FOR UPDATE SKIP LOCKED
)
SELECT c.id, c.row_key, EXISTS (
    SELECT 1 FROM vecmirror.failed_v1 f WHERE f.mirror = $1 AND f.row_key = c.row_key
) AS failing
FROM candidates c
WHERE pg_try_advisory_xact_lock(hashtext($1), hashtext(array_to_string(c.row_key, chr(31))));

-- name: end_stuck_claims
-- A worker frozen (SIGSTOP, a paused VM) while Postgres sends it a large result leaves its backend
-- blocked writing to the socket: not idle, so idle_in_transaction_session_timeout never ends it,
-- and its claim's locks would be held for ever. After the claim timeout its peers end it.
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE application_name = 'vecmirror' AND datname = current_database() AND usename = current_user
  AND pid <> pg_backend_pid() AND state = 'active' AND wait_event = 'ClientWrite'
  AND state_change < now() - make_interval(secs => $1);

-- name: claim_truncate
-- A TRUNCATE marker is handled alone, before the key changes queued with it.
SELECT id FROM vecmirror.changes_v1
WHERE mirror = $1 AND row_key IS NULL
ORDER BY id LIMIT 1
FOR UPDATE SKIP LOCKED;

-- name: delete_changes
-- Acknowledge: runs only after Redis accepted the batch, in the claim's transaction. Returns the
-- freshness of the changes in $3 (user writes the batch made searchable): seconds since each was
-- queued (its writing transaction's now()), read just after Redis acknowledged the write; both ends
-- on Postgres' clock, so no skew.
WITH gone AS (
    DELETE FROM vecmirror.changes_v1 WHERE mirror = $1 AND id = ANY($2::bigint[])
    RETURNING id, created_at
)
SELECT extract(epoch FROM clock_timestamp() - created_at)::float8 AS age
FROM gone WHERE id = ANY($3::bigint[]);

-- name: enqueue_keys
-- Re-queues keys (after a TRUNCATE, for a backfill page) as ordinary changes.
INSERT INTO vecmirror.changes_v1 (mirror, row_key)
SELECT $1, ARRAY(SELECT jsonb_array_elements_text(k))
FROM jsonb_array_elements($2::jsonb) AS k;

-- name: enqueue_failed_keys
-- A TRUNCATE also re-checks the failing rows: they have no document to find in Redis, and once
-- re-read as gone they leave failed_v1.
INSERT INTO vecmirror.changes_v1 (mirror, row_key)
SELECT mirror, row_key FROM vecmirror.failed_v1 WHERE mirror = $1;

-- name: queue_resync
-- Redis lost a mirror: a TRUNCATE marker re-checks every key Redis still has, and a new backfill
-- walk queues every row.
WITH truncate_marker AS (INSERT INTO vecmirror.changes_v1 (mirror, row_key) VALUES ($1, NULL))
UPDATE vecmirror.mirrors_v1 SET backfill_state = 'pending', backfill_cursor = NULL WHERE name = $1;

-- name: failed_rows
-- Rows of a mirror that have no document because they fail (retrying or dead-lettered).
SELECT count(*) FROM vecmirror.failed_v1 WHERE mirror = $1;

-- name: pending_changes
-- Queue depth per mirror, for `run --once` and the tests: its changes and its related tables'.
SELECT (SELECT count(*) FROM vecmirror.changes_v1 WHERE mirror = $1)
     + (SELECT count(*) FROM vecmirror.related_changes_v1 WHERE mirror = $1);

-- name: record_failures
-- Counts the attempt of each failing row and keeps the newest reason. While attempts remain
-- ($3 at most), the row is queued again after a backoff: $4 seconds, doubling, at most an hour.
-- Then retry_at stays NULL: the row is dead-lettered.
WITH failed AS (
    INSERT INTO vecmirror.failed_v1 AS f (mirror, row_key, field, error, attempts, retry_at)
    SELECT $1, ARRAY(SELECT jsonb_array_elements_text(r->'key')), r->>'field', r->>'error', 1,
           CASE WHEN $3 > 1 THEN now() + make_interval(secs => $4) END
    FROM jsonb_array_elements($2::jsonb) AS r
    ON CONFLICT (mirror, row_key) DO UPDATE
    SET field = EXCLUDED.field, error = EXCLUDED.error, failed_at = now(),
        attempts = f.attempts + 1,
        retry_at = CASE WHEN f.attempts + 1 < $3
                        THEN now() + make_interval(secs => least($4 * 2 ^ f.attempts, 3600)) END
    RETURNING f.row_key, f.retry_at
)
INSERT INTO vecmirror.changes_v1 (mirror, row_key, not_before)
SELECT $1, row_key, retry_at FROM failed WHERE retry_at IS NOT NULL;

-- name: forget_deleted_versions
-- A deleted row's version lives on in its Redis tombstone; dropping it here keeps versions_v1 the
-- size of the table. Only if not newer than the one deleted: a re-insert keeps its newer version.
-- (A document's version can be its related version, see 0007, so versions_v1's may be older.)
DELETE FROM vecmirror.versions_v1 v
USING jsonb_array_elements($2::jsonb) AS d
WHERE v.mirror = $1
  AND v.row_key = ARRAY(SELECT jsonb_array_elements_text(d->'key'))
  AND v.version <= (d->>'version')::bigint;

-- name: forget_deleted_related_versions
-- As forget_deleted_versions, for the versions fan-outs gave (0007).
DELETE FROM vecmirror.related_versions_v1 v
USING jsonb_array_elements($2::jsonb) AS d
WHERE v.mirror = $1
  AND v.row_key = ARRAY(SELECT jsonb_array_elements_text(d->'key'))
  AND v.version <= (d->>'version')::bigint;

-- name: next_retry_at
-- When the earliest delayed change becomes claimable, so `run --once` can wait for it.
SELECT min(not_before) FROM vecmirror.changes_v1 WHERE mirror = $1 AND not_before > now();

-- name: clear_failures
-- A row that synced cleanly is no longer failed.
DELETE FROM vecmirror.failed_v1
WHERE mirror = $1 AND row_key IN (
    SELECT ARRAY(SELECT jsonb_array_elements_text(k)) FROM jsonb_array_elements($2::jsonb) AS k
);

-- name: list_failures
-- `vecmirror failed list`: rows that could not be indexed, and why; retry_at NULL = dead-lettered.
SELECT mirror, row_key, field, error, failed_at, attempts, retry_at FROM vecmirror.failed_v1
WHERE ($1::text IS NULL OR mirror = $1)
  AND ($2::jsonb IS NULL OR to_jsonb(row_key) IN (SELECT value FROM jsonb_array_elements($2::jsonb)))
ORDER BY mirror, failed_at;

-- name: retry_failures
-- `vecmirror failed retry`: queue the rows again; a clean sync then removes them from failed_v1.
WITH queued AS (
    INSERT INTO vecmirror.changes_v1 (mirror, row_key)
    SELECT mirror, row_key FROM vecmirror.failed_v1
    WHERE ($1::text IS NULL OR mirror = $1)
      AND ($2::jsonb IS NULL OR to_jsonb(row_key) IN (SELECT value FROM jsonb_array_elements($2::jsonb)))
    RETURNING 1
)
SELECT count(*) FROM queued;

-- name: lock_failures
-- `vecmirror failed discard` first waits for any batch holding one of the keys (the per-key lock
-- claim_changes takes), so an attempt in flight has recorded its outcome before it is discarded;
-- meanwhile no worker can claim them. Key order: two discards never wait for each other in a circle.
SELECT count(pg_advisory_xact_lock(hashtext(mirror), hashtext(array_to_string(row_key, chr(31)))))
FROM (
    SELECT mirror, row_key FROM vecmirror.failed_v1
    WHERE ($1::text IS NULL OR mirror = $1)
      AND ($2::jsonb IS NULL OR to_jsonb(row_key) IN (SELECT value FROM jsonb_array_elements($2::jsonb)))
    ORDER BY mirror, row_key
) AS failing;

-- name: discard_failures
-- `vecmirror failed discard`: forget failed rows (their documents stay out of Redis), and the
-- delayed retries record_failures queued for them (not_before set: nothing else sets it), which
-- would fail again and bring them back. Other queued changes of the keys (a user's write after the
-- failure, a backfill page, `failed retry`) stay: they sync the row as it is now.
WITH gone AS (
    DELETE FROM vecmirror.failed_v1
    WHERE ($1::text IS NULL OR mirror = $1)
      AND ($2::jsonb IS NULL OR to_jsonb(row_key) IN (SELECT value FROM jsonb_array_elements($2::jsonb)))
    RETURNING mirror, row_key
), retries AS (
    DELETE FROM vecmirror.changes_v1 c USING gone
    WHERE c.mirror = gone.mirror AND c.row_key = gone.row_key AND c.not_before IS NOT NULL
)
SELECT count(*) FROM gone;

-- name: wake_workers
-- Re-queued changes wake the workers like the triggers' changes do.
SELECT pg_notify('vecmirror_changes_v1', '');

-- name: backfill_state
-- Where a mirror's backfill stands; the cursor is the last key enqueued.
SELECT backfill_state, backfill_cursor FROM vecmirror.mirrors_v1 WHERE name = $1
FOR UPDATE;

-- name: save_backfill
-- Saved in the transaction that enqueued the page, so a crash resumes exactly after it.
UPDATE vecmirror.mirrors_v1
SET backfill_state = $2, backfill_cursor = $3
WHERE name = $1;

-- name: start_backfill
-- `vecmirror backfill`: a finished walk starts over; an interrupted one resumes from its cursor.
UPDATE vecmirror.mirrors_v1
SET backfill_state = 'pending', backfill_cursor = NULL
WHERE name = $1 AND backfill_state = 'done'
RETURNING name;

-- name: claim_related_changes
-- A mirror's changes of related tables, oldest first, fanned out into changes_v1 and deleted in
-- one transaction (source/related.py); SKIP LOCKED lets two workers fan out different ones.
SELECT id, relation, row_values, created_at FROM vecmirror.related_changes_v1
WHERE mirror = $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED;

-- name: delete_related_changes
-- The related changes a fan-out settled, deleted in its transaction.
DELETE FROM vecmirror.related_changes_v1 WHERE mirror = $1 AND id = ANY($2::bigint[]);

-- name: view_definition
-- A documents view's definition: when it changes (CREATE OR REPLACE VIEW), no trigger fires, yet
-- every document may read otherwise, so each is read again. NULL for a table.
SELECT CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END
FROM pg_class c WHERE c.oid = to_regclass(format('%I.%I', $1::text, $2::text));

-- name: array_element_types
-- The element type of each array parameter of a related table's `keys` query, in order: the
-- captured key texts are cast to them (source/related.py).
SELECT format_type(t.typelem, NULL) AS element_type
FROM unnest($1::oid[]) WITH ORDINALITY AS p(oid, position)
JOIN pg_type t ON t.oid = p.oid
ORDER BY p.position;

-- name: related_captures
-- The related tables' captures the last `migrate` installed, with the mirrors they serve.
SELECT capture, table_schema, table_name, consumers FROM vecmirror.related_captures_v1 ORDER BY capture;

-- name: register_related_capture
-- A related table's capture and the mirrors (and relations) its function queues for.
INSERT INTO vecmirror.related_captures_v1 (capture, table_schema, table_name, consumers)
VALUES ($1, $2, $3, $4)
ON CONFLICT (capture) DO UPDATE
SET table_schema = EXCLUDED.table_schema, table_name = EXCLUDED.table_name, consumers = EXCLUDED.consumers;

-- name: forget_related_capture
-- A capture no mirror relates to any more: its triggers and function were dropped.
DELETE FROM vecmirror.related_captures_v1 WHERE capture = $1;

-- name: documents_source
-- Where the mirror's documents were read from when last recorded (see record_documents_source).
SELECT documents FROM vecmirror.mirrors_v1 WHERE name = $1;

-- name: record_documents_source
-- Where the mirror's documents are read from (0007: the view and a digest of its definition);
-- true when that changed, so every document is read again by a new backfill walk.
WITH before AS (SELECT documents FROM vecmirror.mirrors_v1 WHERE name = $1 FOR UPDATE)
UPDATE vecmirror.mirrors_v1 m
SET documents = $2,
    backfill_state = CASE WHEN b.documents IS DISTINCT FROM $2 THEN 'pending' ELSE m.backfill_state END,
    backfill_cursor = CASE WHEN b.documents IS DISTINCT FROM $2 THEN NULL ELSE m.backfill_cursor END
FROM before b
WHERE m.name = $1
RETURNING b.documents IS DISTINCT FROM $2 AS changed;

-- name: converts_implicitly
-- Whether a value of type $1 is taken where type $2 is expected without an explicit cast (the same
-- type, or an implicit or assignment cast): a `keys` query's parameter and its related key column.
SELECT $1::text::regtype = $2::text::regtype
    OR EXISTS (SELECT 1 FROM pg_cast
               WHERE castsource = $1::text::regtype AND casttarget = $2::text::regtype
                 AND castcontext IN ('i', 'a'));
