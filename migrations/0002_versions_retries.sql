-- vecmirror schema, version 2: per-key versions, delayed changes, bounded retries of failing rows.
-- Released: never edit this file; add 0003_*.sql instead.

-- The version of each key's current row: the id of the last change a user's statement queued for
-- it. Writes to one key are serialised by the user's row (or unique-index) lock and the capture
-- trigger runs after the statement holds it, so a later commit always draws a larger id: versions
-- of a key grow in commit order. (changes_v1's identity sequence has CACHE 1; a cached sequence
-- would break this.) Redis keeps the version with each document and refuses older writes.
-- Rows that existed before capture began have no entry: their version is 0.
CREATE TABLE vecmirror.versions_v1 (
    mirror   text   NOT NULL,
    row_key  text[] NOT NULL,
    version  bigint NOT NULL,
    PRIMARY KEY (mirror, row_key)
);

-- A change that must not be claimed before this time: the next attempt of a failing row.
ALTER TABLE vecmirror.changes_v1 ADD COLUMN not_before timestamptz;

-- How often a row failed in a row, and when it is tried again; retry_at NULL means dead-lettered
-- (no automatic attempt left; `vecmirror failed retry` queues it again). Rows recorded by version 1
-- were dead-lettered at their first failure, which these defaults say.
ALTER TABLE vecmirror.failed_v1
    ADD COLUMN attempts integer NOT NULL DEFAULT 1,
    ADD COLUMN retry_at timestamptz;
