"""Named SQL of `wait_synced` (query/synced.py), in the `-- name:` form of source/sql/queries.sql.

Kept in the query package, as text, because only source/sql's `.sql` files are package data. Every
statement reads what the worker leaves behind and writes nothing: a role with USAGE on the schema and
SELECT on changes_v1, related_changes_v1, failed_v1 and mirrors_v1 may wait.
"""

from __future__ import annotations

from vecmirror.source.sql import parse_named_sql

_SQL = """
-- name: session_settings
-- Keys are read under vecmirror's session settings (TimeZone, DateStyle...), as the capture writes
-- them, whatever pool the caller passed; for the transaction only ($1 names, $2 values).
SELECT count(set_config(s.name, s.value, true)) FROM unnest($1::text[], $2::text[]) AS s(name, value);

-- name: key_types
-- The SQL type of each key column, in key order, so that a key given as text is read as the capture
-- function writes it (the column's own text under the session settings); NULL for a column the
-- table lacks now. base_type leaves out the modifier (varchar(3) would cut 'abcd' to a key that
-- exists): the rows equal to a given key are looked up by it. No row: the mirror is not installed.
SELECT k.name, format_type(a.atttypid, a.atttypmod) AS sql_type, format_type(a.atttypid, NULL) AS base_type,
       m.table_schema, m.table_name
FROM vecmirror.mirrors_v1 m
CROSS JOIN LATERAL unnest(m.key_columns) WITH ORDINALITY AS k(name, position)
LEFT JOIN pg_attribute a
       ON a.attrelid = to_regclass(format('%I.%I', m.table_schema, m.table_name))
      AND a.attname = k.name AND NOT a.attisdropped
WHERE m.name = $1
ORDER BY k.position;

-- name: wait_marks
-- The newest change and related change of the mirror visible now: every change committed before the
-- wait began is at or below them (each a backward scan of its primary key, (mirror, id)).
SELECT (SELECT max(id) FROM vecmirror.changes_v1 WHERE mirror = $1) AS changes_mark,
       (SELECT max(id) FROM vecmirror.related_changes_v1 WHERE mirror = $1) AS related_mark;

-- name: wait_gates
-- What must happen before the keys' own changes can be listed, as each queues changes with new ids:
-- the related changes up to $3 fanned out, the TRUNCATE markers up to $2 handled (each re-queues
-- every key Redis holds), and the backfill walk done (it queues rows never captured). Three index
-- probes: the primary keys' first entry, the partial index of 0003, mirrors_v1's primary key.
-- replaced: the table its name gives is not the one the mirror registered (dropped and created
-- again, or restored) and no worker or `migrate` has taken the new one in yet.
SELECT m.backfill_state = 'done' AS walked,
       m.table_oid IS NOT NULL
           AND m.table_oid IS DISTINCT FROM to_regclass(format('%I.%I', m.table_schema, m.table_name))::oid
           AS replaced,
       EXISTS (SELECT 1 FROM vecmirror.related_changes_v1 r WHERE r.mirror = $1 AND r.id <= $3)
           AS related_pending,
       EXISTS (SELECT 1 FROM vecmirror.changes_v1 c
               WHERE c.mirror = $1 AND c.row_key IS NULL AND c.id <= $2) AS truncate_pending,
       m.operator_paused_at IS NOT NULL AS operator_paused, m.operator_pause_reason, m.error
FROM vecmirror.mirrors_v1 m WHERE m.name = $1;

-- name: key_changes
-- The queued changes of the keys ($2: a JSON array of key-text arrays) once the gates are open. A
-- change with not_before is a failed row's retry (record_failures is its only writer): not a change
-- of the user, and the failure itself is what wait_synced reports. The queue's only index leads with
-- the mirror, so this reads every queued change of the mirror once per wait.
SELECT coalesce(array_agg(c.id), '{}') FROM vecmirror.changes_v1 c
WHERE c.mirror = $1 AND c.not_before IS NULL
  AND c.row_key IN (
      SELECT ARRAY(SELECT jsonb_array_elements_text(k)) FROM jsonb_array_elements($2::jsonb) AS k
  );

-- name: wait_progress
-- One poll: which keys still have one of the changes $2 queued (primary-key lookups), which keys
-- failed (failed_v1's primary key; a row that synced since has left it), and why the mirror may not
-- be syncing. Each change leaves the queue in the transaction that wrote it to Redis.
SELECT (SELECT coalesce(jsonb_agg(DISTINCT c.row_key), '[]') FROM vecmirror.changes_v1 c
        WHERE c.mirror = $1 AND c.id = ANY($2::bigint[])) AS pending,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'key', f.row_key, 'field', f.field, 'error', f.error,
                   'attempts', f.attempts, 'retry_at', f.retry_at)), '[]')
        FROM vecmirror.failed_v1 f
        WHERE f.mirror = $1 AND f.row_key IN (
            SELECT ARRAY(SELECT jsonb_array_elements_text(k)) FROM jsonb_array_elements($3::jsonb) AS k
        )) AS failed,
       m.operator_paused_at IS NOT NULL AS operator_paused, m.operator_pause_reason, m.error
FROM vecmirror.mirrors_v1 m WHERE m.name = $1;
"""

QUERIES: dict[str, str] = parse_named_sql(_SQL)
