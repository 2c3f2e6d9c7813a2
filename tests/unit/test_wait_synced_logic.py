"""The parts of `wait_synced` that need no server: keys as text, the cast SQL, the polling schedule,
the outcome's line, and what is refused before Postgres is called."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import redis.asyncio as redis

from vecmirror.config import parse_config
from vecmirror.errors import QueryError
from vecmirror.pipeline.embedder import FakeEmbedder
from vecmirror.query import MirrorSearch
from vecmirror.query.synced import (
    POLL_CAP,
    POLL_FIRST,
    SyncWait,
    _checked_timeout,
    _Poll,
    _until,
    canonical_sql,
    key_texts,
)
from vecmirror.query.synced_sql import QUERIES

CONFIG = parse_config(
    {
        "mirrors": [
            {
                "name": "docs",
                "table": "docs",
                "vector_column": "vec",
                "index": {
                    "index": {"name": "docs_idx", "prefix": "doc"},
                    "fields": [{"name": "vec", "type": "vector", "attrs": {"algorithm": "flat", "dims": 2}}],
                },
            }
        ]
    }
)


def test_a_key_is_a_value_or_a_tuple_of_values_in_key_order() -> None:
    assert key_texts("m", ["id"], 7) == ("7",)
    assert key_texts("m", ["id"], ("7",)) == ("7",)
    assert key_texts("m", ["a", "b"], ["x", Decimal("1.50")]) == ("x", "1.50")
    when = datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert key_texts("m", ["at", "day", "ok"], (when, date(2024, 1, 2), True)) == (
        "2024-01-01T12:00:00+00:00",
        "2024-01-02",
        "true",
    )
    ident = uuid.UUID(int=1)
    assert key_texts("m", ["id"], ident) == (str(ident),)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("x", r"mirror 'm': key 'x' has 1 value\(s\); the mirror's key has 2 column\(s\): \(a, b\)"),
        (("x", "y", "z"), "has 3 value"),
        (("x", None), "a key value is a string, number, UUID, date or time, not NoneType"),
        (("x", b"y"), "not bytes"),
    ],
)
def test_a_key_of_another_shape_is_refused(key: object, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        key_texts("m", ["a", "b"], key)


def test_keys_are_cast_to_their_columns_types_and_back_in_order() -> None:
    assert canonical_sql(["integer", "timestamp with time zone"]) == (
        "SELECT ARRAY[k.c0::integer::text, k.c1::timestamp with time zone::text] AS row_key "
        "FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(c0, c1, position) ORDER BY position"
    )


@pytest.mark.parametrize("timeout", [-1, float("nan"), True, "3", None])
def test_a_timeout_is_a_number_of_seconds(timeout: object) -> None:
    with pytest.raises(QueryError, match="timeout must be a number of seconds of at least 0"):
        _checked_timeout(timeout)  # type: ignore[arg-type]
    assert _checked_timeout(0) == 0.0


def test_the_outcome_says_how_many_keys_wait_and_why() -> None:
    assert SyncWait("docs", 2, 0).line(5) == "synced: 2 key(s) of mirror 'docs'"
    assert SyncWait("docs", 3, 1, "the mirror is paused on an error: boom").line(0.5) == (
        "not synced after 0.5 s: 1 of 3 key(s) of mirror 'docs' still wait: "
        "the mirror is paused on an error: boom"
    )
    assert (
        SyncWait("docs", 1, 1).line(2).endswith("no worker synced them in time (is `vecmirror run` running?)")
    )


async def test_polls_grow_to_the_cap_and_check_once_more_at_the_deadline() -> None:
    checks: list[float] = []
    started = time.monotonic()

    async def never() -> _Poll:
        checks.append(time.monotonic() - started)
        return _Poll(False, SyncWait("docs", 1, 1))

    poll = await _until(started + 0.6, never)
    assert not poll.done
    gaps = [b - a for a, b in itertools.pairwise(checks)]
    assert gaps[0] >= POLL_FIRST * 0.9 and max(gaps) <= POLL_CAP + 0.05
    assert 0.6 <= checks[-1] < 0.7  # the last check is at the deadline, not a poll interval later
    assert 5 <= len(checks) <= 12


async def test_a_done_check_returns_at_once() -> None:
    calls = 0

    async def second_time() -> _Poll:
        nonlocal calls
        calls += 1
        return _Poll(calls == 2, SyncWait("docs", 1, 0 if calls == 2 else 1))

    poll = await asyncio.wait_for(_until(time.monotonic() + 30, second_time), 1)
    assert poll.done and poll.wait.synced and calls == 2


async def test_wait_synced_refuses_before_calling_postgres() -> None:
    client = redis.Redis(port=1, socket_connect_timeout=0.2)
    try:
        search = MirrorSearch(CONFIG, client, lambda _: FakeEmbedder(2))
        with pytest.raises(QueryError, match="unknown mirror 'nope'"):
            await search.wait_synced("nope", [1], 1)
        with pytest.raises(QueryError, match="wait_synced reads Postgres: open the search with"):
            await search.wait_synced("docs", [1], 1)
    finally:
        await client.aclose()


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_every_block_starts_with_its_why(name: str) -> None:
    first, _, rest = QUERIES[name].partition("\n")
    assert first.startswith("-- ") and len(first) > 13, f"{name}: first line must say why"
    assert any(line.strip() and not line.lstrip().startswith("--") for line in rest.splitlines())
