-- vecmirror schema, version 7: documents read from a view, kept exact when the tables behind it
-- change (a mirror's `documents:` and `related:`). Released: never edit; add 0008_*.sql instead.

-- What a related table's capture queues: per mirror relating to it, the values that name the
-- documents to read again (the `on` columns of the related row, or its key for a `keys` query),
-- before and after the change. row_values NULL marks a TRUNCATE. The trigger writes one row per
-- changed related row, however many documents it affects: the worker fans it out into
-- changes_v1 (source/related.py), so the user's write stays as cheap as without vecmirror.
CREATE TABLE vecmirror.related_changes_v1 (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    mirror      text        NOT NULL,
    relation    text        NOT NULL,  -- the relation's digest (config RelatedConfig.relation_id)
    row_values  text[],
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mirror, id)
);

-- Versions the fan-out gives the documents it queues. A document's version is the greater of its
-- versions_v1 version and this one (source/statements.py). Kept apart from versions_v1 so that the
-- fan-out never waits on a row lock a user's transaction holds there (nor the other way round).
CREATE TABLE vecmirror.related_versions_v1 (
    mirror   text   NOT NULL,
    row_key  text[] NOT NULL,
    version  bigint NOT NULL,
    PRIMARY KEY (mirror, row_key)
);

-- One capture per related table, shared by every mirror relating to it (consumers: each
-- '<mirror>/<relation>' its function queues for); `migrate` drops those no mirror needs any more.
CREATE TABLE vecmirror.related_captures_v1 (
    capture       text PRIMARY KEY,
    table_schema  text   NOT NULL,
    table_name    text   NOT NULL,
    consumers     text[] NOT NULL
);

-- Where the mirror's documents were read from at the last `migrate`: another view (or none) means
-- every document is read again.
ALTER TABLE vecmirror.mirrors_v1 ADD COLUMN documents text;

-- Whoever may work the queue may work the related one: an upgrade needs no new GRANT for the
-- worker's role. Each privilege a role holds on changes_v1 is given on related_changes_v1 and
-- related_versions_v1, and
-- SELECT on changes_v1 gives SELECT on related_captures_v1 (the worker checks its captures there).
DO $$
DECLARE
    held record;
    grantee text;
BEGIN
    FOR held IN
        SELECT DISTINCT a.privilege_type, a.grantee
        FROM pg_class c, aclexplode(c.relacl) AS a
        WHERE c.oid = 'vecmirror.changes_v1'::regclass AND a.grantee <> c.relowner
    LOOP
        grantee := CASE WHEN held.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(held.grantee)) END;
        EXECUTE format('GRANT %s ON vecmirror.related_changes_v1, vecmirror.related_versions_v1 TO %s',
                       held.privilege_type, grantee);
        IF held.privilege_type = 'SELECT' THEN
            EXECUTE format('GRANT SELECT ON vecmirror.related_captures_v1 TO %s', grantee);
        END IF;
    END LOOP;
END
$$;
