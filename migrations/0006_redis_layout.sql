-- vecmirror schema, version 6: Postgres records what each mirror writes in Redis.
-- Released: never edit this file; add 0007_*.sql instead.

-- A mirror's Redis layout, recorded by every `migrate` from the mirrors file: the index users query
-- (index.name; an alias of `<index.name>__<digest>` after an online rebuild), the key prefixes the
-- index covers, the separator after the prefix in each document's key, and the storage type
-- (hash or json). Tombstones are `vecmirror:tombstone:<document key>`. A mirror removed from the
-- file is then deleted from Redis by these (`migrate --drop-data`), not found by guessing.
-- Mirrors installed before this version have none until the next `migrate` records them; a mirror
-- removed meanwhile falls back to finding its data in Redis. All four are set together.
ALTER TABLE vecmirror.mirrors_v1
    ADD COLUMN index_name     text,
    ADD COLUMN key_prefixes   text[],
    ADD COLUMN key_separator  text,
    ADD COLUMN storage_type   text CHECK (storage_type IN ('hash', 'json')),
    ADD CONSTRAINT mirrors_v1_redis_layout_whole CHECK (
        (index_name IS NULL) = (key_prefixes IS NULL)
        AND (index_name IS NULL) = (key_separator IS NULL)
        AND (index_name IS NULL) = (storage_type IS NULL)
    );

-- The layout of a mirror `migrate` removed from the file, kept while its Redis data is: `migrate`
-- keeps that data unless --drop-data, and a later `migrate --drop-data` deletes it by this record,
-- then forgets the record. A mirror registered again under the name takes the name back (its row
-- here goes). Mirrors removed before this version, or with no recorded layout, have no row.
CREATE TABLE vecmirror.removed_mirrors_v1 (
    name           text PRIMARY KEY,
    index_name     text        NOT NULL,
    key_prefixes   text[]      NOT NULL,
    key_separator  text        NOT NULL,
    storage_type   text        NOT NULL CHECK (storage_type IN ('hash', 'json')),
    removed_at     timestamptz NOT NULL DEFAULT now()
);
