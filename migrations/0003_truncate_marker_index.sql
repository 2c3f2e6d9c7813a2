-- vecmirror schema, version 3: finding a queued TRUNCATE marker without reading the whole queue.
-- Released: never edit this file; add 0004_*.sql instead.

-- Every batch asks whether its mirror has a TRUNCATE marker queued (row_key NULL). The primary key
-- (mirror, id) answers that only by walking every queued change of the mirror: with a backlog of
-- 100,000 changes, each batch read them all. Markers are rare, so this index stays tiny.
CREATE INDEX changes_v1_truncate_markers ON vecmirror.changes_v1 (mirror, id) WHERE row_key IS NULL;
