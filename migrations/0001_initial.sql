-- vecmirror schema, version 1. Released: never edit this file; add 0002_*.sql instead.
-- Object and channel names carry _v1 so a later incompatible version can live beside this one.

CREATE SCHEMA IF NOT EXISTS vecmirror;

-- The durable queue. Triggers append here inside the user's own transaction, so a change exists
-- exactly when the user's write committed. row_key holds the key columns as text, in key order;
-- NULL marks a TRUNCATE of the whole table.
-- One index only, (mirror, id): every worker query filters by mirror, and each index more would
-- be paid by every row the user writes.
CREATE TABLE vecmirror.changes_v1 (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    mirror      text        NOT NULL,
    row_key     text[],
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mirror, id)
);

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
    backfill_cursor  text[]
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

-- The capture trigger functions are made per mirror by `vecmirror migrate` (capture_v1_<mirror>),
-- because each needs its own key expression and static SQL keeps the user's writes fast.
