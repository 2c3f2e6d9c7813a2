-- vecmirror schema, version 1. Released: never edit this file; add 0002_*.sql instead.
-- Object and channel names carry _v1 so a later incompatible version can live beside this one.

CREATE SCHEMA IF NOT EXISTS vecmirror;

-- The durable queue. Triggers append here inside the user's own transaction, so a change exists
-- exactly when the user's write committed. row_key holds the key columns as text, in key order;
-- NULL marks a TRUNCATE of the whole table.
CREATE TABLE vecmirror.changes_v1 (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mirror      text        NOT NULL,
    row_key     text[],
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX changes_v1_mirror_id ON vecmirror.changes_v1 (mirror, id);

-- One row per mirror whose triggers are installed; lets `migrate` drop triggers of removed
-- mirrors and lets the worker resume a backfill where it stopped.
CREATE TABLE vecmirror.mirrors_v1 (
    name             text PRIMARY KEY,
    table_schema     text        NOT NULL,
    table_name       text        NOT NULL,
    key_columns      text[]      NOT NULL,
    installed_at     timestamptz NOT NULL DEFAULT now(),
    backfill_state   text        NOT NULL DEFAULT 'pending'
                     CHECK (backfill_state IN ('pending', 'running', 'done')),
    backfill_cursor  text[],
    backfill_total   bigint
);

-- Rows that could not be turned into an indexed document, with the reason. A row leaves this
-- table as soon as it syncs cleanly.
CREATE TABLE vecmirror.failed_v1 (
    mirror     text        NOT NULL,
    row_key    text[]      NOT NULL,
    field      text        NOT NULL,
    error      text        NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mirror, row_key)
);

-- The capture trigger, shared by every mirror. Statement-level with transition tables: one
-- INSERT ... SELECT and at most one NOTIFY per statement, however many rows it touched.
-- TG_ARGV[0] is the mirror name, TG_ARGV[1] the key expression built by `vecmirror migrate`
-- from quoted column names, e.g. ARRAY["id"::text].
CREATE FUNCTION vecmirror.capture_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    recorded bigint := 0;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO vecmirror.changes_v1 (mirror, row_key) VALUES (TG_ARGV[0], NULL);
        recorded := 1;
    ELSIF TG_OP = 'INSERT' THEN
        EXECUTE format('INSERT INTO vecmirror.changes_v1 (mirror, row_key) SELECT $1, %s FROM vecmirror_new', TG_ARGV[1])
            USING TG_ARGV[0];
        GET DIAGNOSTICS recorded = ROW_COUNT;
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format('INSERT INTO vecmirror.changes_v1 (mirror, row_key) SELECT $1, %s FROM vecmirror_old', TG_ARGV[1])
            USING TG_ARGV[0];
        GET DIAGNOSTICS recorded = ROW_COUNT;
    ELSE
        -- An UPDATE may change the key: both the old key (delete) and the new one (upsert) count.
        EXECUTE format(
            'INSERT INTO vecmirror.changes_v1 (mirror, row_key) SELECT $1, k FROM '
            '(SELECT %1$s AS k FROM vecmirror_new UNION SELECT %1$s FROM vecmirror_old) keys',
            TG_ARGV[1])
            USING TG_ARGV[0];
        GET DIAGNOSTICS recorded = ROW_COUNT;
    END IF;
    IF recorded > 0 THEN
        -- The payload is empty on purpose: NOTIFY only wakes workers, the table is the truth.
        PERFORM pg_notify('vecmirror_changes_v1', '');
    END IF;
    RETURN NULL;
END;
$$;
