-- vecmirror schema, version 5: generations, so that versions survive their own history.
-- Released: never edit this file; add 0006_*.sql instead.

-- A version (a change id) only orders the writes of one history of a mirror's table. That history
-- starts again when the mirror is registered anew (first install, added back after its removal,
-- renamed), when the table is dropped and created again, and when the database goes back (a
-- restore). Each such start gets a new random generation; Redis keeps it in the mirror's marker,
-- with every document and every tombstone, and compares versions only within one generation:
-- anything of another generation is overwritten. Each existing mirror starts with a generation of
-- its own (the default is volatile: evaluated per row); table_oid is filled by the next `migrate`
-- or worker start. Documents written before this version carry no generation; the worker's first
-- start after the upgrade adopts them into the mirror's generation (see sink/versioned.py).
ALTER TABLE vecmirror.mirrors_v1
    ADD COLUMN generation text NOT NULL
        DEFAULT substr(replace(gen_random_uuid()::text, '-', ''), 1, 12),
    ADD COLUMN table_oid oid;

-- The newest change id handed out, whatever the table's privileges: a worker compares it with the
-- highest version Redis holds, and Redis ahead means Postgres went back (a restore). The worker's
-- role has no grant on the sequence; this function runs as its owner, and reads only that number.
CREATE FUNCTION vecmirror.last_change_id_v1() RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('vecmirror.changes_v1', 'id')::regclass), 0)
$$;
