"""SQL that names a user's table or columns, built once per mirror from quoted identifiers.

Table and column names come from the config; they are always quoted here, never interpolated raw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vecmirror.source.session import SESSION_SETTINGS


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """Like Postgres' quote_literal(): a backslash makes it an E'' string, so the literal means the
    same whatever standard_conforming_strings is."""
    quoted = "'" + text.replace("'", "''").replace("\\", "\\\\") + "'"
    return "E" + quoted if "\\" in text else quoted


@dataclass(frozen=True)
class KeyColumn:
    name: str
    sql_type: str  # format_type() of the column, used to cast key text back to the column's type
    attnum: int  # pg_attribute.attnum: the capture function finds a renamed key column by it


@dataclass(frozen=True)
class TableStatements:
    """Statements for one mirror's table.

    With a documents view, the value columns are read from the view (aliased `t`, so `select_list`
    reads the same either way) joined by key to the table (aliased `r`): a document exists where
    both have the key, which the table's own capture and the related tables' keep current."""

    qualified_table: str
    key_columns: tuple[KeyColumn, ...]
    select_list: tuple[str, ...]  # expressions for the value columns, each aliased to the column name
    documents: str | None = None  # the qualified documents view, when the mirror names one

    @property
    def key_expression(self) -> str:
        """How the trigger turns a row into its text key, e.g. ARRAY["id"::text]."""
        parts = ", ".join(f"{quote_ident(k.name)}::text" for k in self.key_columns)
        return f"ARRAY[{parts}]"

    def _key_text(self, alias: str) -> str:
        return "ARRAY[" + ", ".join(f"{alias}.{quote_ident(k.name)}::text" for k in self.key_columns) + "]"

    def _same_key(self, alias: str, other: str) -> str:
        return " AND ".join(
            f"{alias}.{quote_ident(k.name)} = {other}.{quote_ident(k.name)}" for k in self.key_columns
        )

    def _rows(self) -> str:
        """The table's rows with their document's columns: `r` the table, `t` the values' source."""
        if self.documents is None:
            return f"{self.qualified_table} t"
        return f"{self.qualified_table} r JOIN {self.documents} t ON {self._same_key('t', 'r')}"

    def load_rows(self) -> str:
        """Current rows and versions for a list of keys, read in one snapshot so a version always
        describes the row read with it. $1..$n: the text array of each key column; $n+1: the
        mirror. Every key comes back; `_vm_found` is false where the row is gone, or where its key's
        text is not the queued text any more (that key's document must go)."""
        aliases = [f"k{i}" for i in range(len(self.key_columns))]
        params = ", ".join(f"${i + 1}::text[]" for i in range(len(aliases)))
        source = "r" if self.documents is not None else "t"
        join = " AND ".join(
            f"{source}.{quote_ident(k.name)} = k.{alias}::{k.sql_type}"
            for k, alias in zip(self.key_columns, aliases, strict=True)
        )
        key_array = "ARRAY[" + ", ".join(f"k.{a}" for a in aliases) + "]"
        # The row's own key text must be the queued text: a citext key changed only in case, or a
        # numeric 1.0 that became 1.00, still joins, but its document is under the other text.
        found = f"coalesce({self._key_text(source)} = {key_array}, false)"
        joined = f"LEFT JOIN {self.qualified_table} t ON {join}"
        if self.documents is not None:
            # A key of the table that the view does not have: its document goes.
            first = quote_ident(self.key_columns[0].name)
            found = f"coalesce({found} AND t.{first} IS NOT NULL, false)"
            joined = (
                f"LEFT JOIN {self.qualified_table} r ON {join} "
                f"LEFT JOIN {self.documents} t ON {self._same_key('t', 'r')}"
            )
        columns = ", ".join(
            [f"{key_array} AS _vm_key", f"{found} AS _vm_found", self._version(), *self.select_list]
        )
        return (
            f"SELECT {columns} FROM unnest({params}) AS k({', '.join(aliases)}) {joined} "
            f"{self._versions(f'${len(aliases) + 1}', key_array)}"
        )

    def _version(self) -> str:
        """A document's version: its row's, or, where related tables changed it since (a fan-out,
        source/related.py), the newer of that and the row's."""
        if self.documents is None:
            return "coalesce(v.version, 0) AS _vm_version"
        return "greatest(coalesce(v.version, 0), coalesce(rv.version, 0)) AS _vm_version"

    def _versions(self, mirror: str, key_array: str) -> str:
        joins = f"LEFT JOIN vecmirror.versions_v1 v ON v.mirror = {mirror} AND v.row_key = {key_array}"
        if self.documents is not None:
            joins += (
                " LEFT JOIN vecmirror.related_versions_v1 rv "
                f"ON rv.mirror = {mirror} AND rv.row_key = {key_array}"
            )
        return joins

    def backfill_page(self, *, after_cursor: bool) -> str:
        """Queue the next page of keys in key order; returns how many and the last key queued.

        $1 mirror, $2 page size, $3.. the cursor (the last key of the previous page) as text.
        Keyset pagination over the key columns uses the key's index and resumes exactly.
        """
        keys = [f"t.{quote_ident(k.name)}" for k in self.key_columns]
        aliases = [f"c{i}" for i in range(len(keys))]
        select = ", ".join(f"{k} AS {a}" for k, a in zip(keys, aliases, strict=True))
        where = ""
        if after_cursor:
            bounds = ", ".join(f"${i + 3}::text::{k.sql_type}" for i, k in enumerate(self.key_columns))
            where = f"WHERE ({', '.join(keys)}) > ({bounds})"
        text_key = "ARRAY[" + ", ".join(f"{a}::text" for a in aliases) + "]"
        ascending = ", ".join(aliases)
        descending = ", ".join(f"{a} DESC" for a in aliases)
        return (
            f"WITH page AS (SELECT {select} FROM {self.qualified_table} t {where} "
            f"ORDER BY {', '.join(keys)} LIMIT $2), "
            f"queued AS (INSERT INTO vecmirror.changes_v1 (mirror, row_key) "
            f"SELECT $1, {text_key} FROM page ORDER BY {ascending} RETURNING 1) "
            f"SELECT (SELECT count(*) FROM queued) AS queued, "
            f"(SELECT {text_key} FROM page ORDER BY {descending} LIMIT 1) AS last_key"
        )

    def key_page(self, *, after_cursor: bool) -> str:
        """The next page of documents' rows in key order, read-only (for `vecmirror verify`).

        $1 page size, $2 the mirror, $3.. the last key of the previous page as text. Returns the key
        as text in `_vm_key`, its version in `_vm_version` and the value columns, like load_rows.
        """
        source = "r" if self.documents is not None else "t"
        keys = [f"{source}.{quote_ident(k.name)}" for k in self.key_columns]
        where = ""
        if after_cursor:
            bounds = ", ".join(f"${i + 3}::text::{k.sql_type}" for i, k in enumerate(self.key_columns))
            where = f"WHERE ({', '.join(keys)}) > ({bounds})"
        key_array = self._key_text(source)
        columns = ", ".join([f"{key_array} AS _vm_key", self._version(), *self.select_list])
        versions = self._versions("$2", key_array)
        return f"SELECT {columns} FROM {self._rows()} {versions} {where} ORDER BY {', '.join(keys)} LIMIT $1"

    def count_rows(self) -> str:
        """How many documents the mirror should have."""
        return f"SELECT count(*) FROM {self._rows()}"


TRIGGER_EVENTS = {
    "ins": "AFTER INSERT ON {table} REFERENCING NEW TABLE AS vecmirror_new",
    "upd": "AFTER UPDATE ON {table} REFERENCING OLD TABLE AS vecmirror_old NEW TABLE AS vecmirror_new",
    "del": "AFTER DELETE ON {table} REFERENCING OLD TABLE AS vecmirror_old",
    "trn": "AFTER TRUNCATE ON {table}",
}


def trigger_name(mirror: str, event: str) -> str:
    return f"vecmirror_v1_{mirror}_{event}"


def capture_function_name(mirror: str) -> str:
    return f"vecmirror.{quote_ident(f'capture_v1_{mirror}')}"


KEY_PLACEHOLDER = "\x00key\x00"  # stands for the key expression in the function's EXECUTE format()s


def capture_settings() -> str:
    """The function's SET clauses: the key text it queues is the worker's (SESSION_SETTINGS), not
    whatever TimeZone, DateStyle... the writing session runs with."""
    return " ".join(f"SET {name} = {quote_literal(value)}" for name, value in SESSION_SETTINGS.items())


def _queue(name: str, keys: str) -> str:
    """Queue a statement's keys and set their versions in one INSERT (see 0002's versions_v1)."""
    return f"""WITH queued AS (
            INSERT INTO vecmirror.changes_v1 (mirror, row_key) {keys} RETURNING row_key, id
        )
        INSERT INTO vecmirror.versions_v1 (mirror, row_key, version)
        SELECT {name}, row_key, max(id) FROM queued GROUP BY row_key
        ON CONFLICT (mirror, row_key)
        DO UPDATE SET version = GREATEST(vecmirror.versions_v1.version, EXCLUDED.version)"""


def _queries(name: str, key: str) -> dict[str, str]:
    """What each event queues, with `key` as the key expression."""
    changed = (
        f"SELECT {name}, k FROM (SELECT {key} AS k FROM vecmirror_new "
        f"UNION SELECT {key} FROM vecmirror_old) AS changed"
    )
    return {
        "INSERT": _queue(name, f"SELECT {name}, {key} FROM vecmirror_new"),
        # A changed key queues both the old key (its document goes) and the new one.
        "UPDATE": _queue(name, changed),
        "DELETE": _queue(name, f"SELECT {name}, {key} FROM vecmirror_old"),
    }


def _keys_unchanged(statements: TableStatements) -> str:
    """True while every key column still has the name and attnum the static SQL was made with (a
    dropped column keeps its attnum under another name): one index scan of pg_attribute per
    statement, no subtransaction."""
    by_attnum = sorted(statements.key_columns, key=lambda k: k.attnum)
    attnums = ",".join(str(k.attnum) for k in by_attnum)
    names = ", ".join(quote_literal(k.name) for k in by_attnum)
    return (
        "ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = TG_RELID "
        f"AND attnum = ANY ('{{{attnums}}}'::int2[]) ORDER BY attnum) = ARRAY[{names}]"
    )


def capture_function(mirror: str, statements: TableStatements) -> str:
    """The mirror's trigger function. Its SQL is static, so PL/pgSQL plans each branch once per
    session: a generic function with EXECUTE cost the user's single-row writes about 5x more.

    A user's write must never fail because of it. If a key column was renamed since `migrate` (the
    static SQL names it), the keys are read by the columns' attnums with EXECUTE instead; if one was
    dropped, a TRUNCATE marker makes the worker re-check every key, and a WARNING says to migrate.
    No EXCEPTION block: each would be a subtransaction in the user's transaction.
    SECURITY DEFINER: the roles writing to the table need no grant on the vecmirror schema; the
    fixed search_path keeps such a function safe from objects a caller could plant."""
    name = quote_literal(mirror)
    static = _queries(name, statements.key_expression)
    dynamic = {
        op: sql.replace("%", "%%").replace(KEY_PLACEHOLDER, "%1$s")
        for op, sql in _queries(name, KEY_PLACEHOLDER).items()
    }
    attnums = "'{" + ",".join(str(k.attnum) for k in statements.key_columns) + "}'::int2[]"
    marker = f"INSERT INTO vecmirror.changes_v1 (mirror, row_key) VALUES ({name}, NULL)"
    return f"""
CREATE OR REPLACE FUNCTION {capture_function_name(mirror)}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp {capture_settings()}
AS $vecmirror$
DECLARE
    recorded bigint := 1;
    key_sql text;
    key_lost boolean;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- One marker for the whole table; versions stay, so deletes get tombstones.
        {marker};
    ELSIF {_keys_unchanged(statements)} THEN
        IF TG_OP = 'INSERT' THEN
            {static["INSERT"]};
        ELSIF TG_OP = 'UPDATE' THEN
            {static["UPDATE"]};
        ELSE
            {static["DELETE"]};
        END IF;
        GET DIAGNOSTICS recorded = ROW_COUNT;
    ELSE
        -- A key column was renamed or dropped since `vecmirror migrate` wrote this function.
        SELECT 'ARRAY[' || string_agg(format('%I::text', a.attname), ', ' ORDER BY k.position) || ']',
               bool_or(a.attname IS NULL OR a.attisdropped)
        INTO key_sql, key_lost
        FROM unnest({attnums}) WITH ORDINALITY AS k(attnum, position)
        LEFT JOIN pg_attribute a ON a.attrelid = TG_RELID AND a.attnum = k.attnum;
        IF key_lost THEN
            RAISE WARNING 'vecmirror: a key column of mirror % was dropped from %.%; every key is re-checked',
                {name}, TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING HINT = 'Set the mirror''s key: and run vecmirror migrate.';
            {marker};
        ELSIF TG_OP = 'INSERT' THEN
            EXECUTE format({quote_literal(dynamic["INSERT"])}, key_sql);
            GET DIAGNOSTICS recorded = ROW_COUNT;
        ELSIF TG_OP = 'UPDATE' THEN
            EXECUTE format({quote_literal(dynamic["UPDATE"])}, key_sql);
            GET DIAGNOSTICS recorded = ROW_COUNT;
        ELSE
            EXECUTE format({quote_literal(dynamic["DELETE"])}, key_sql);
            GET DIAGNOSTICS recorded = ROW_COUNT;
        END IF;
    END IF;
    IF recorded > 0 THEN
        -- No payload: NOTIFY only wakes workers, the queue table is the truth.
        PERFORM pg_notify('vecmirror_changes_v1', '');
    END IF;
    RETURN NULL;
END;
$vecmirror$"""


def create_triggers(mirror: str, statements: TableStatements) -> list[str]:
    return statement_triggers(
        lambda event: trigger_name(mirror, event), capture_function_name(mirror), statements.qualified_table
    )


def statement_triggers(name: Callable[[str], str], function: str, qualified_table: str) -> list[str]:
    """The four statement triggers (TRIGGER_EVENTS) calling a capture function."""
    return [
        f"CREATE TRIGGER {quote_ident(name(event))} {timing.format(table=qualified_table)} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        for event, timing in TRIGGER_EVENTS.items()
    ]


def drop_triggers(mirror: str, qualified_table: str) -> list[str]:
    return [
        f"DROP TRIGGER IF EXISTS {quote_ident(trigger_name(mirror, event))} ON {qualified_table}"
        for event in TRIGGER_EVENTS
    ]


def drop_capture_function(mirror: str) -> str:
    return f"DROP FUNCTION IF EXISTS {capture_function_name(mirror)}()"


def qualified(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def select_expression(column: str, base_type: str) -> str:
    """pgvector values are read as real[] so the driver needs no extra codec."""
    quoted = quote_ident(column)
    if base_type == "vector":
        return f"t.{quoted}::real[] AS {quoted}"
    return f"t.{quoted} AS {quoted}"


def select_list(columns: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    return tuple(select_expression(name, base_type) for name, base_type in columns)
