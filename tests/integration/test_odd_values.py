"""Values Python cannot hold (years past 9999 or BC, infinity, 24:00:00, huge intervals) and TAG
array elements holding the separator: each row syncs or fails on its own; no value fails a batch."""

from __future__ import annotations

from typing import Any

import asyncpg
import redis

from helpers import PRODUCTS_MIRROR, PRODUCTS_TABLE, hash_doc, keys, search_ids, sync_once
from vecmirror.commands import migrate_command, verify_command
from vecmirror.source.session import PgValue, connect

VECTOR_FIELD = {
    "name": "vec",
    "type": "vector",
    "attrs": {"algorithm": "flat", "dims": 2, "distance_metric": "l2"},
}

EVENTS_TABLE = """
CREATE TABLE events (
    id integer PRIMARY KEY,
    at timestamptz,
    at_text timestamptz,
    day date,
    day_tag date,
    span interval,
    clock time,
    tags text[],
    vec real[]
)
"""

EVENTS_MIRROR: dict[str, Any] = {
    "name": "events",
    "table": "events",
    "vector_column": "vec",
    "index": {
        "index": {"name": "events_idx", "prefix": "event", "storage_type": "hash"},
        "fields": [
            {"name": "at", "type": "numeric"},
            {"name": "at_text", "type": "text"},
            {"name": "day", "type": "numeric"},
            {"name": "day_tag", "type": "tag"},
            {"name": "span", "type": "numeric"},
            {"name": "clock", "type": "text"},
            {"name": "tags", "type": "tag"},
            {
                "name": "vec",
                "type": "vector",
                "attrs": {"algorithm": "flat", "dims": 2, "distance_metric": "l2"},
            },
        ],
    },
}


async def failures(pg: asyncpg.Connection) -> dict[str, tuple[str, str]]:
    rows = await pg.fetch("SELECT row_key, field, error FROM vecmirror.failed_v1 WHERE mirror = 'events'")
    return {r["row_key"][0]: (r["field"], r["error"]) for r in rows}


async def test_out_of_range_dates_sync_or_fail_alone(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(EVENTS_TABLE)
    await pg.execute(PRODUCTS_TABLE)
    path, config = write_config([EVENTS_MIRROR, PRODUCTS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await pg.execute("INSERT INTO products VALUES ('a', 'A', 1, '{1,0,0,0}')")
    await pg.execute(
        "INSERT INTO events (id, at, at_text, day, day_tag, span, clock, tags, vec) VALUES "
        "(1, '294276-12-31 23:59:59+00', '294276-12-31 23:59:59+00', '10000-01-01', '4713-01-01 BC', "
        " '170000000 years', '24:00:00', '{a,b}', '{1,0}'), "
        "(2, 'infinity', NULL, NULL, NULL, NULL, NULL, NULL, '{1,0}'), "
        "(3, NULL, NULL, '-infinity', NULL, NULL, NULL, NULL, '{1,0}'), "
        "(4, '2024-01-01 00:00:00+00', '-infinity', '2024-01-01', 'infinity', '1 day', '12:00', "
        " '{x}', '{0,1}')"
    )
    await sync_once(settings, config)

    assert keys(redis_client, "product:*") == {"product:a"}  # the other mirror synced
    assert keys(redis_client, "event:*") == {"event:1", "event:4"}
    far = hash_doc(redis_client, "event:1")
    assert float(far["at"]) == 9224318015999.0  # epoch seconds, exact from the microseconds
    assert far["at_text"] == b"294276-12-31 23:59:59+00"  # Postgres' own text, UTC
    assert float(far["day"]) == 253402300800.0
    assert far["day_tag"] == b"4713-01-01 BC"
    assert float(far["span"]) == 170_000_000 * 12 * 30 * 86400  # months of 30 days, as timedelta
    assert far["clock"] == b"24:00:00"
    near = hash_doc(redis_client, "event:4")
    assert float(near["at"]) == 1704067200.0 and near["at_text"] == b"-infinity"
    assert near["day_tag"] == b"infinity"
    assert search_ids(redis_client, "events_idx", "@at:[9224318015999 9224318015999]") == {"event:1"}
    assert search_ids(redis_client, "events_idx", "@at:[-inf +inf]") == {"event:1", "event:4"}

    failed = await failures(pg)
    assert set(failed) == {"2", "3"}
    assert failed["2"][0] == "at" and "'infinity' is infinite" in failed["2"][1]
    assert failed["3"][0] == "day" and "'-infinity' is infinite" in failed["3"][1]
    assert await pg.fetchval("SELECT count(*) FROM vecmirror.changes_v1") == 0

    reports = {r.mirror: r for r in await verify_command(settings, config, None, repair=False)}
    assert reports["events"].missing == [] and reports["events"].stale == {}


async def test_a_tag_array_element_holding_the_separator_fails_its_row(
    pg: asyncpg.Connection, redis_client: redis.Redis, write_config: Any, settings_for: Any
) -> None:
    await pg.execute(EVENTS_TABLE)
    path, config = write_config([EVENTS_MIRROR])
    settings = settings_for(path)
    await migrate_command(settings, config)
    await pg.execute(
        "INSERT INTO events (id, tags, vec) VALUES (1, '{\"red,blue\", green}', '{1,0}'), "
        "(2, '{red, blue}', '{1,0}')"
    )
    await sync_once(settings, config)
    assert keys(redis_client, "event:*") == {"event:2"}
    assert search_ids(redis_client, "events_idx", "@tags:{blue}") == {"event:2"}  # not event:1
    field, error = (await failures(pg))["1"]
    assert field == "tags" and "'red,blue' contains the TAG separator ','" in error


VALUES = [
    "'294276-12-31 23:59:59.999999+00'::timestamptz",
    "'4713-01-01 00:00:00.5+00 BC'::timestamptz",
    "'infinity'::timestamptz",
    "'-infinity'::timestamp",
    "'10000-01-01 12:30:00'::timestamp",
    "'0001-12-31 23:59:59.999999 BC'::timestamp",
    "'10000-01-01'::date",
    "'0001-01-01 BC'::date",
    "'-infinity'::date",
    "'24:00:00'::time",
    "'24:00:00+05:30'::timetz",
    "'-170000000 years 3 mons -2 days 04:00:01.5'::interval",
    "'infinity'::interval",
]


async def test_the_session_decodes_every_value_as_postgres_writes_it(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        assert await conn.fetchval("SHOW TimeZone") == "UTC"  # SESSION_SETTINGS, whatever the server's
        for expression in VALUES:
            row = await conn.fetchrow(f"SELECT {expression} AS value, ({expression})::text AS text")
            assert row is not None
            value = row["value"]
            assert isinstance(value, PgValue), expression
            assert str(value) == row["text"], expression
            assert await conn.fetchval(f"SELECT $1 = {expression}", value), expression  # round trip
        arrays = await conn.fetchrow("SELECT ARRAY['infinity'::date, '2024-01-01'] AS days")
        assert arrays is not None and [str(d) for d in arrays["days"]] == ["infinity", "2024-01-01"]
    finally:
        await conn.close()
