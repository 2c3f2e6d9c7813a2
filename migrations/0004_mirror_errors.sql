-- vecmirror schema, version 4: a mirror that cannot sync says so where `status` reads it.
-- Released: never edit this file; add 0005_*.sql instead.

-- Set by a worker when the mirror pauses on trouble of its own (its table lost a column, a type
-- changed, a privilege is missing, its Redis prefix holds foreign keys...), cleared by the first
-- batch that syncs again. Other mirrors keep syncing meanwhile.
ALTER TABLE vecmirror.mirrors_v1
    ADD COLUMN error        text,
    ADD COLUMN error_since  timestamptz;
