-- Named SQL about a mirror's own state (see 0004_mirror_errors.sql). Each block starts with
-- `-- name: NAME` and a line saying why.

-- name: record_mirror_error
-- A worker paused the mirror on trouble of its own; `status` shows it. error_since keeps the first
-- time while the error goes on.
UPDATE vecmirror.mirrors_v1
SET error = $2, error_since = coalesce(error_since, now())
WHERE name = $1;

-- name: clear_mirror_error
-- The mirror synced again.
UPDATE vecmirror.mirrors_v1 SET error = NULL, error_since = NULL WHERE name = $1 AND error IS NOT NULL;

-- name: mirror_first_sync
-- True while a mirror has never been synced: its first backfill walk has not begun.
SELECT backfill_state = 'pending' AND backfill_cursor IS NULL FROM vecmirror.mirrors_v1 WHERE name = $1;

-- name: mirror_generation
-- The mirror's generation (see 0005_generations.sql), the table it was registered with and the one
-- its name gives now (another OID: dropped and created again, or restored), and the newest change
-- id handed out, which no version in Redis may exceed unless Postgres went back.
SELECT m.generation, m.table_oid,
       to_regclass(format('%I.%I', m.table_schema, m.table_name))::oid AS current_oid,
       vecmirror.last_change_id_v1() AS last_change_id
FROM vecmirror.mirrors_v1 m WHERE m.name = $1;

-- name: renew_generation
-- A new history: a new generation, unless a peer renewed it since $2 was read (then its stays).
-- $3, when not NULL, records the table's OID. Returns the generation now in place.
UPDATE vecmirror.mirrors_v1
SET generation = CASE WHEN generation = $2
                      THEN substr(replace(gen_random_uuid()::text, '-', ''), 1, 12)
                      ELSE generation END,
    table_oid = coalesce($3, table_oid)
WHERE name = $1
RETURNING generation;

-- name: record_table_oid
-- The table a mirror was registered with, by OID: set by `migrate`, or adopted on the first start
-- after the upgrade to 0005 (the generation stays).
UPDATE vecmirror.mirrors_v1 SET table_oid = $2 WHERE name = $1 AND table_oid IS DISTINCT FROM $2;

-- name: requeue_all_rows
-- The table's columns changed under the mirror without its rows changing (ALTER COLUMN TYPE ...
-- USING, a column dropped and added again): every row is read again by a new backfill walk.
UPDATE vecmirror.mirrors_v1 SET backfill_state = 'pending', backfill_cursor = NULL WHERE name = $1;
