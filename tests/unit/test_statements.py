"""TableStatements and quoting: SQL that names a user's table and columns."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from vecmirror.source.session import SESSION_SETTINGS
from vecmirror.source.statements import (
    KeyColumn,
    TableStatements,
    capture_function,
    create_triggers,
    drop_capture_function,
    drop_triggers,
    qualified,
    quote_ident,
    quote_literal,
    select_expression,
    select_list,
    trigger_name,
)

# Postgres text cannot hold NUL; everything else may appear in names and literals.
PG_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))


def read_ident(sql: str) -> tuple[str, int]:
    """A Postgres lexer for one quoted identifier: its value and where it ended."""
    assert sql[0] == '"'
    value, position = [], 1
    while True:
        char = sql[position]
        if char == '"':
            if sql[position + 1 : position + 2] == '"':
                value.append('"')
                position += 2
                continue
            return "".join(value), position + 1
        value.append(char)
        position += 1


def read_literal(sql: str, *, standard_strings: bool = True) -> tuple[str, int]:
    """A Postgres lexer for one string literal ('' or E''), with standard_conforming_strings on or off."""
    escapes = sql.startswith("E'") or not standard_strings
    position = 2 if sql.startswith("E'") else 1
    assert sql[position - 1] == "'"
    value = []
    while True:
        char = sql[position]
        if char == "'":
            if sql[position + 1 : position + 2] == "'":
                value.append("'")
                position += 2
                continue
            return "".join(value), position + 1
        if escapes and char == "\\":
            value.append(sql[position + 1])  # only \\ is produced; \n and friends would differ
            position += 2
            continue
        value.append(char)
        position += 1


@given(PG_TEXT)
@example('we"ird')
@example('"; DROP TABLE x; --')
def test_quote_ident_round_trip(name: str) -> None:
    quoted = quote_ident(name)
    assert read_ident(quoted) == (name, len(quoted))


@given(PG_TEXT)
@example("it's")
@example("back\\slash")
@example("'; DROP TABLE x; --")
@example("\\'")
def test_quote_literal_round_trip(text: str) -> None:
    quoted = quote_literal(text)
    for standard_strings in (True, False):
        assert read_literal(quoted, standard_strings=standard_strings) == (text, len(quoted))


def test_quoting_examples() -> None:
    assert quote_ident("id") == '"id"'
    assert quote_ident('a"b') == '"a""b"'
    assert quote_literal("docs") == "'docs'"
    assert quote_literal("it's") == "'it''s'"
    assert quote_literal("a\\b") == "E'a\\\\b'"
    assert qualified("public", 'My "Table"') == '"public"."My ""Table"""'


SINGLE = TableStatements(
    qualified("public", "docs"),
    (KeyColumn("id", "integer", 1),),
    select_list([("title", "text"), ("embedding", "vector")]),
)
COMPOSITE = TableStatements(
    qualified("app", "notes"),
    (KeyColumn("tenant", "character varying(20)", 3), KeyColumn('n"o', "bigint", 2)),
    select_list([("body", "text")]),
)


DOCUMENTS = TableStatements(
    '"public"."docs"',
    (KeyColumn("id", "integer", 1),),
    select_list([("title", "text")]),
    '"public"."doc_view"',
)


def test_select_list() -> None:
    assert select_expression("title", "text") == 't."title" AS "title"'
    assert select_expression("v", "vector") == 't."v"::real[] AS "v"'  # pgvector read as real[]
    assert select_expression("v", "_float4") == 't."v" AS "v"'
    assert SINGLE.select_list == ('t."title" AS "title"', 't."embedding"::real[] AS "embedding"')


def test_key_expression() -> None:
    assert SINGLE.key_expression == 'ARRAY["id"::text]'
    assert COMPOSITE.key_expression == 'ARRAY["tenant"::text, "n""o"::text]'


def test_load_rows_single_key() -> None:
    # every key comes back (deleted rows too), with its version from the same snapshot
    assert SINGLE.load_rows() == (
        'SELECT ARRAY[k.k0] AS _vm_key, coalesce(ARRAY[t."id"::text] = ARRAY[k.k0], false) AS _vm_found, '
        'coalesce(v.version, 0) AS _vm_version, t."title" AS "title", t."embedding"::real[] AS "embedding" '
        'FROM unnest($1::text[]) AS k(k0) LEFT JOIN "public"."docs" t ON t."id" = k.k0::integer '
        "LEFT JOIN vecmirror.versions_v1 v ON v.mirror = $2 AND v.row_key = ARRAY[k.k0]"
    )


def test_load_rows_composite_key() -> None:
    sql = COMPOSITE.load_rows()
    # a row whose own key text is not the queued text (citext case, numeric scale) counts as gone
    found = 'coalesce(ARRAY[t."tenant"::text, t."n""o"::text] = ARRAY[k.k0, k.k1], false) AS _vm_found'
    assert sql.startswith(f"SELECT ARRAY[k.k0, k.k1] AS _vm_key, {found}, ")
    assert 'FROM unnest($1::text[], $2::text[]) AS k(k0, k1) LEFT JOIN "app"."notes" t ' in sql
    assert 'ON t."tenant" = k.k0::character varying(20) AND t."n""o" = k.k1::bigint LEFT JOIN' in sql
    assert sql.endswith("v.mirror = $3 AND v.row_key = ARRAY[k.k0, k.k1]")


def test_backfill_first_page() -> None:
    sql = SINGLE.backfill_page(after_cursor=False)
    assert "WHERE" not in sql
    assert 'WITH page AS (SELECT t."id" AS c0 FROM "public"."docs" t ' in sql
    assert 'ORDER BY t."id" LIMIT $2)' in sql
    assert "INSERT INTO vecmirror.changes_v1 (mirror, row_key) SELECT $1, ARRAY[c0::text] FROM page" in sql
    assert "(SELECT ARRAY[c0::text] FROM page ORDER BY c0 DESC LIMIT 1) AS last_key" in sql
    assert "$3" not in sql


def test_backfill_next_page_composite_key() -> None:
    sql = COMPOSITE.backfill_page(after_cursor=True)
    # the cursor arrives as text and is cast back to each key column's type
    assert 'WHERE (t."tenant", t."n""o") > ($3::text::character varying(20), $4::text::bigint)' in sql
    assert 'ORDER BY t."tenant", t."n""o" LIMIT $2' in sql
    assert "ARRAY[c0::text, c1::text]" in sql
    assert "ORDER BY c0 DESC, c1 DESC LIMIT 1" in sql


def test_count_rows() -> None:
    assert COMPOSITE.count_rows() == 'SELECT count(*) FROM "app"."notes" t'
    assert DOCUMENTS.count_rows() == (
        'SELECT count(*) FROM "public"."docs" r JOIN "public"."doc_view" t ON t."id" = r."id"'
    )


def test_documents_are_read_from_the_view_joined_to_the_table() -> None:
    """A key is found where the table has it and the view returns it; the version is the newer of
    the row's and the one related changes gave the document (related_versions_v1)."""
    loading = DOCUMENTS.load_rows()
    assert 'LEFT JOIN "public"."docs" r ON r."id" = k.k0::integer' in loading
    assert 'LEFT JOIN "public"."doc_view" t ON t."id" = r."id"' in loading
    assert (
        'coalesce(coalesce(ARRAY[r."id"::text] = ARRAY[k.k0], false) AND t."id" IS NOT NULL, false)'
        in loading
    )
    assert "greatest(coalesce(v.version, 0), coalesce(rv.version, 0)) AS _vm_version" in loading
    assert "LEFT JOIN vecmirror.related_versions_v1 rv ON rv.mirror = $2" in loading
    assert "related_versions_v1" not in SINGLE.load_rows()
    page = DOCUMENTS.key_page(after_cursor=True)
    assert 'FROM "public"."docs" r JOIN "public"."doc_view" t ON t."id" = r."id"' in page
    assert page.endswith('WHERE (r."id") > ($3::text::integer) ORDER BY r."id" LIMIT $1')


def test_trigger_names() -> None:
    assert trigger_name("docs", "ins") == "vecmirror_v1_docs_ins"
    longest = trigger_name("m" * 40, "trn")
    assert len(longest.encode()) <= 63  # Postgres truncates longer identifiers


def test_create_triggers() -> None:
    statements = create_triggers("docs", COMPOSITE)
    assert len(statements) == 4
    by_event = dict(zip(("ins", "upd", "del", "trn"), statements, strict=True))
    for event, sql in by_event.items():
        assert sql.startswith(f'CREATE TRIGGER "vecmirror_v1_docs_{event}" AFTER ')
        assert ' ON "app"."notes" ' in sql
        assert sql.endswith('FOR EACH STATEMENT EXECUTE FUNCTION vecmirror."capture_v1_docs"()')
    assert "AFTER INSERT ON" in by_event["ins"] and "NEW TABLE AS vecmirror_new" in by_event["ins"]
    assert "OLD TABLE AS vecmirror_old NEW TABLE AS vecmirror_new" in by_event["upd"]
    assert "AFTER DELETE ON" in by_event["del"] and "OLD TABLE AS vecmirror_old" in by_event["del"]
    assert "AFTER TRUNCATE ON" in by_event["trn"] and "REFERENCING" not in by_event["trn"]


def test_capture_function_quotes_key_columns_and_queues_every_event() -> None:
    sql = capture_function("docs", COMPOSITE)
    assert sql.startswith('\nCREATE OR REPLACE FUNCTION vecmirror."capture_v1_docs"() RETURNS trigger')
    key = 'ARRAY["tenant"::text, "n""o"::text]'
    assert f"SELECT 'docs', {key} FROM vecmirror_new RETURNING row_key, id" in sql
    assert f"SELECT {key} AS k FROM vecmirror_new" in sql and f"UNION SELECT {key} FROM vecmirror_old" in sql
    assert f"SELECT 'docs', {key} FROM vecmirror_old RETURNING row_key, id" in sql
    # each statement's keys get the id of their last change as version, in the same INSERT
    assert sql.count("INSERT INTO vecmirror.versions_v1") == 6  # static, and dynamic for renamed keys
    assert "SET version = GREATEST(vecmirror.versions_v1.version, EXCLUDED.version)" in sql
    assert "VALUES ('docs', NULL)" in sql
    assert "pg_notify('vecmirror_changes_v1', '')" in sql
    assert drop_capture_function("docs") == 'DROP FUNCTION IF EXISTS vecmirror."capture_v1_docs"()'


def test_capture_function_runs_with_the_workers_settings() -> None:
    sql = capture_function("docs", SINGLE)
    for name, value in SESSION_SETTINGS.items():
        assert f"SET {name} = {quote_literal(value)}" in sql
    assert "SET search_path = pg_catalog, pg_temp" in sql


def test_capture_function_checks_key_columns_by_attnum_without_a_subtransaction() -> None:
    sql = capture_function("docs", COMPOSITE)
    # sorted by attnum: n"o is column 2, tenant column 3
    check = (
        "ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = TG_RELID "
        "AND attnum = ANY ('{2,3}'::int2[]) ORDER BY attnum) = ARRAY['n\"o', 'tenant']"
    )
    assert check in sql
    assert "unnest('{3,2}'::int2[]) WITH ORDINALITY" in sql  # key order for the dynamic path
    assert "EXCEPTION" not in sql
    assert "RAISE WARNING" in sql and "RAISE EXCEPTION" not in sql
    # the dynamic statements are the static ones with the key expression left to format()
    assert "EXECUTE format('WITH queued AS (" in sql
    assert "SELECT ''docs'', %1$s FROM vecmirror_new RETURNING row_key, id" in sql


def test_drop_triggers() -> None:
    assert drop_triggers("docs", '"public"."docs"') == [
        f'DROP TRIGGER IF EXISTS "vecmirror_v1_docs_{event}" ON "public"."docs"'
        for event in ("ins", "upd", "del", "trn")
    ]
