-- Read-only SQL for /metrics and `vecmirror status`. Each block starts with `-- name: NAME` and a
-- line saying why. Kept apart from queries.sql: nothing here changes the queue.

-- name: queue_state
-- One mirror's queue at a glance. The oldest change's age counts only changes that can be claimed
-- now (a failing row's delayed retry waits by design), from when it became claimable. error and
-- error_since: the trouble a worker paused the mirror on (migration 0004), NULL while it syncs.
-- Changes of related tables (0007) wait in the queue too, until fanned out into the mirror's.
-- operator_paused_at and operator_pause_reason: an operator's pause (`vecmirror pause`, 0008).
SELECT
    (SELECT count(*) FROM vecmirror.changes_v1 WHERE mirror = $1)
    + (SELECT count(*) FROM vecmirror.related_changes_v1 WHERE mirror = $1) AS pending,
    (SELECT extract(epoch FROM clock_timestamp() - least(
        (SELECT min(greatest(created_at, not_before)) FROM vecmirror.changes_v1
         WHERE mirror = $1 AND (not_before IS NULL OR not_before <= now())),
        (SELECT min(created_at) FROM vecmirror.related_changes_v1 WHERE mirror = $1)
     ))::float8) AS oldest_age,
    (SELECT count(*) FROM vecmirror.failed_v1 WHERE mirror = $1 AND retry_at IS NULL) AS dead_letters,
    (SELECT count(*) FROM vecmirror.failed_v1 WHERE mirror = $1) AS failed_rows,
    m.backfill_state, m.error, m.error_since, m.operator_paused_at, m.operator_pause_reason
FROM (SELECT $1::text AS name) AS asked
LEFT JOIN vecmirror.mirrors_v1 m ON m.name = asked.name;
