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
