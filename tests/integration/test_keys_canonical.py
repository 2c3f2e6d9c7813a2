"""A row has one key text whoever wrote it, a key whose text changed leaves no document behind, and
key columns that are not a key (NULLs, duplicates) are refused at `migrate` and at start."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
import redis

from helpers import keys, shape_problem, sync_once
from vecmirror.commands import migrate_command, verify_command
from vecmirror.config import parse_config
from vecmirror.errors import StartupError
from vecmirror.source.tables import inspect_table

VECTOR_FIELD = {
    "name": "vec",
    "type": "vector",
    "attrs": {"algorithm": "flat", "dims": 2, "distance_metric": "l2"},
}


def mirror_of(table: str, *, key: str | None = None, prefix: str = "item") -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": table,
        "table": table,
        "vector_column": "vec",
        "index": {
            "index": {"name": f"{table}_idx", "prefix": prefix, "storage_type": "hash"},
            "fields": [
                {"name": "note", "type": "text"},
                {
                    "name": "vec",
                    "type": "vector",
                    "attrs": {"algorithm": "flat", "dims": 2, "distance_metric": "l2"},
                },
            ],
        },
    }
    if key is not None:
        raw["key"] = key
    return raw


async def test_a_timestamptz_key_is_one_document_whatever_the_writers_time_zone(
    pg: asyncpg.Connection, database_url: str, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    await pg.execute("CREATE TABLE slots (at timestamptz PRIMARY KEY, note text, vec real[])")
    path, config = write_config([mirror_of("slots", prefix="slot")])
    settings = settings_for(path)
    await migrate_command(settings, config)
    new_york = await asyncpg.connect(database_url, server_settings={"TimeZone": "America/New_York"})
    tokyo = await asyncpg.connect(
        database_url, server_settings={"TimeZone": "Asia/Tokyo", "DateStyle": "SQL, DMY"}
    )
    try:
        await new_york.execute("INSERT INTO slots VALUES ('2024-01-01 12:00:00+00', 'first', '{1,0}')")
        await tokyo.execute("UPDATE slots SET note = 'second' WHERE at = '2024-01-01 12:00:00+00'")
    finally:
        await new_york.close()
        await tokyo.close()
    queued = await pg.fetch("SELECT DISTINCT row_key FROM vecmirror.changes_v1")
    assert [r["row_key"] for r in queued] == [["2024-01-01 12:00:00+00"]]
    await sync_once(settings, config)
    assert keys(redis_client, "slot:*") == {"slot:2024-01-01 12:00:00+00"}
    assert redis_client.hget("slot:2024-01-01 12:00:00+00", "note") == b"second"
    [report] = await verify_command(settings, config, None, repair=False)
    assert report.clean


@pytest.mark.parametrize(
    ("column", "before", "after"),
    [("citext", "Alice", "ALICE"), ("numeric", "1.0", "1.00")],
)
async def test_a_key_whose_text_changed_but_not_its_value_moves_its_document(
    pg: asyncpg.Connection,
    redis_client: redis.Redis,
    write_config: Any,
    settings_for: Any,
    column: str,
    before: str,
    after: str,
) -> None:
    await pg.execute("CREATE EXTENSION IF NOT EXISTS citext")
    await pg.execute(f"CREATE TABLE names (name {column} PRIMARY KEY, note text, vec real[])")
    path, config = write_config([mirror_of("names", prefix="name")])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await pg.execute(f"INSERT INTO names VALUES ('{before}', 'n', '{{1,0}}')")
    await sync_once(settings, config)
    assert keys(redis_client, "name:*") == {f"name:{before}"}

    # equal to the old key for the column's type, so `t.name = 'Alice'::citext` still finds the row
    await pg.execute(f"UPDATE names SET name = '{after}'")
    await sync_once(settings, config)
    assert keys(redis_client, "name:*") == {f"name:{after}"}
    [report] = await verify_command(settings, config, None, repair=False)
    assert report.clean


@pytest.mark.parametrize(
    ("ddl", "problems"),
    [
        ("CREATE TABLE things (code text, note text, vec real[])", ["allows NULL", "is not unique"]),
        (
            "CREATE TABLE things (code text NOT NULL, note text, vec real[]); "
            "CREATE UNIQUE INDEX ON things (code, note)",  # a superset of the key: not enough
            ["is not unique"],
        ),
        (
            "CREATE TABLE things (code text NOT NULL, note text, vec real[]); "
            "CREATE UNIQUE INDEX ON things (code) WHERE note IS NOT NULL",
            ["is not unique"],
        ),
        (
            "CREATE TABLE things (code text NOT NULL, note text, vec real[]); "
            "CREATE UNIQUE INDEX ON things (lower(code))",
            ["is not unique"],
        ),
        (
            "CREATE TABLE things (code text UNIQUE, note text, vec real[])",
            ["allows NULL"],
        ),
    ],
)
async def test_key_columns_that_are_not_a_key_are_refused_at_migrate(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any, ddl: str, problems: list[str]
) -> None:
    await pg.execute(ddl)
    path, config = write_config([mirror_of("things", key="code")])
    with pytest.raises(StartupError) as caught:
        await migrate_command(settings_for(path), config)
    message = str(caught.value)
    assert "mirror 'things'" in message and "things" in message
    assert "column 'code'" in message or "(code) is not unique" in message
    for problem in problems:
        assert problem in message
    assert ("allows NULL" in message) == ("allows NULL" in problems)
    assert await pg.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'vecmirror%'") == 0


async def test_a_unique_key_is_accepted_and_checked_again_at_start(
    pg: asyncpg.Connection, write_config: Any, settings_for: Any, redis_client: redis.Redis
) -> None:
    await pg.execute("CREATE TABLE things (code text NOT NULL, tenant text NOT NULL, note text, vec real[])")
    await pg.execute("CREATE UNIQUE INDEX things_code ON things (code)")
    path, config = write_config([mirror_of("things", key=["tenant", "code"])])  # unique: code alone is
    settings = settings_for(path)
    await migrate_command(settings, config)
    await pg.execute("INSERT INTO things VALUES ('a', 't', 'n', '{1,0}')")
    await sync_once(settings, config)
    assert keys(redis_client, "item:*") == {"item:t:a"}
    assert await shape_problem(pg, config.mirrors[0]) is None

    await pg.execute("DROP INDEX things_code")
    await pg.execute("ALTER TABLE things ALTER COLUMN tenant DROP NOT NULL")
    problem = await shape_problem(pg, config.mirrors[0])
    assert problem is not None and "column 'tenant' of things allows NULL" in problem
    assert "(tenant, code) is not unique in things" in problem
    with pytest.raises(StartupError, match="is not unique in things"):  # what start-up checks
        await inspect_table(pg, config.mirrors[0])


async def test_the_default_key_is_the_primary_key(pg: asyncpg.Connection) -> None:
    await pg.execute("CREATE TABLE things (code text PRIMARY KEY, note text, vec real[])")
    mirror = parse_config({"mirrors": [mirror_of("things")]}).mirrors[0]
    assert await shape_problem(pg, mirror) is None
    await pg.execute("ALTER TABLE things DROP CONSTRAINT things_pkey")
    problem = await shape_problem(pg, mirror)
    assert problem is not None and "has no primary key" in problem
