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

-- name: record_redis_layout
-- What the mirror writes in Redis (see 0006_redis_layout.sql), recorded by every `migrate`; an
-- unchanged layout is not written again, so a re-run changes nothing.
UPDATE vecmirror.mirrors_v1
SET index_name = $2, key_prefixes = $3, key_separator = $4, storage_type = $5
WHERE name = $1
  AND (index_name, key_prefixes, key_separator, storage_type) IS DISTINCT FROM ($2, $3::text[], $4, $5);

-- name: keep_removed_layout
-- A mirror removed from the file: its layout stays recorded while its Redis data may be there, so
-- that `migrate --drop-data`, now or later, deletes exactly that. Nothing when none was recorded.
INSERT INTO vecmirror.removed_mirrors_v1 (name, index_name, key_prefixes, key_separator, storage_type)
SELECT name, index_name, key_prefixes, key_separator, storage_type
FROM vecmirror.mirrors_v1 WHERE name = $1 AND index_name IS NOT NULL
ON CONFLICT (name) DO UPDATE
SET index_name = EXCLUDED.index_name, key_prefixes = EXCLUDED.key_prefixes,
    key_separator = EXCLUDED.key_separator, storage_type = EXCLUDED.storage_type, removed_at = now();

-- name: forget_removed_layouts
-- Names in the file again belong to their configured mirrors, whose own layout is recorded; $1 is
-- every configured name.
DELETE FROM vecmirror.removed_mirrors_v1 WHERE name = ANY($1::text[]);

-- name: forget_removed_layout
-- A removed mirror's Redis data was deleted (`migrate --drop-data`): nothing of it is left to find.
DELETE FROM vecmirror.removed_mirrors_v1 WHERE name = $1;

-- name: redis_layouts
-- Every recorded layout: of the registered mirrors (removed = false; none before their first
-- `migrate` since 0006) and of the mirrors removed whose data may still be in Redis (removed = true).
SELECT name, index_name, key_prefixes, key_separator, storage_type, false AS removed
FROM vecmirror.mirrors_v1 WHERE index_name IS NOT NULL
UNION ALL
SELECT name, index_name, key_prefixes, key_separator, storage_type, true AS removed
FROM vecmirror.removed_mirrors_v1
ORDER BY name;

-- name: pause_mirror
-- An operator paused the mirror (0008): workers leave its queue alone until `resume`. A pause
-- again keeps the first time and takes the new reason. Wakes the workers, so running ones notice
-- at once. No row: the mirror is not installed.
WITH paused AS (
    UPDATE vecmirror.mirrors_v1
    SET operator_paused_at = coalesce(operator_paused_at, now()), operator_pause_reason = $2
    WHERE name = $1
    RETURNING operator_paused_at
)
SELECT operator_paused_at, pg_notify('vecmirror_changes_v1', '') IS NULL AS notified FROM paused;

-- name: resume_mirror
-- An operator resumed the mirror: its queue drains again; the workers are woken to drain it now.
-- Returns whether it was paused; no row: the mirror is not installed.
UPDATE vecmirror.mirrors_v1 m SET operator_paused_at = NULL, operator_pause_reason = NULL
FROM (SELECT operator_paused_at IS NOT NULL AS was_paused FROM vecmirror.mirrors_v1 WHERE name = $1) old
WHERE m.name = $1
RETURNING old.was_paused, pg_notify('vecmirror_changes_v1', '') IS NULL AS notified;

-- name: operator_paused_mirrors
-- The mirrors an operator paused, which a worker leaves alone (checked on every wake-up and drain).
SELECT name FROM vecmirror.mirrors_v1 WHERE operator_paused_at IS NOT NULL;
