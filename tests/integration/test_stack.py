"""The embedded stack against real servers: each test's servers run from a tmp dir and are always stopped."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis
from redis.commands.search.field import VectorField
from redis.commands.search.index_definition import IndexDefinition, IndexType

from helpers import stack_directory
from vecmirror.errors import StackError
from vecmirror.stack import StackUrls, env_lines, stack_down, stack_up


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Path, StackUrls]]:
    # One cold start shared by the read-only tests; stack_up sits inside try so a half-started stack stops.
    with stack_directory() as directory:
        try:
            yield directory, stack_up(directory)
        finally:
            stack_down(directory)


async def _pg_values(url: str, *statements: str) -> list[object]:
    connection = await asyncpg.connect(url)
    try:
        return [await connection.fetchval(statement) for statement in statements]
    finally:
        await connection.close()


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)


def test_redis_has_query_engine_and_json(stack: tuple[Path, StackUrls]) -> None:
    client = _redis(stack[1].redis_url)
    assert {module["name"] for module in client.module_list()} >= {"search", "ReJSON"}

    vector = VectorField(
        "$.v", "FLAT", {"TYPE": "FLOAT32", "DIM": 3, "DISTANCE_METRIC": "COSINE"}, as_name="v"
    )
    definition = IndexDefinition(prefix=["stk:"], index_type=IndexType.JSON)  # type: ignore[no-untyped-call]
    assert client.ft("stack_idx").create_index([vector], definition=definition)
    client.json().set("stk:1", "$", {"v": [1.0, 0.0, 0.0]})

    assert client.ft("stack_idx").search("*").total == 1


async def test_postgres_answers_and_has_pgvector(stack: tuple[Path, StackUrls]) -> None:
    values = await _pg_values(
        stack[1].database_url,
        "select 1",
        "create extension if not exists vector",
        "select '[1,2,3]'::vector <-> '[1,2,4]'::vector",
    )

    assert values[0] == 1
    assert values[2] == pytest.approx(1.0)


async def test_second_up_reuses_the_running_servers(stack: tuple[Path, StackUrls]) -> None:
    directory, urls = stack
    redis_pid = _redis(urls.redis_url).info("server")["process_id"]
    pg_started = await _pg_values(urls.database_url, "select pg_postmaster_start_time()")

    assert stack_up(directory) == urls

    assert _redis(urls.redis_url).info("server")["process_id"] == redis_pid
    assert await _pg_values(urls.database_url, "select pg_postmaster_start_time()") == pg_started


def test_env_lines_survive_shell_eval(stack: tuple[Path, StackUrls]) -> None:
    urls = stack[1]
    lines = env_lines(urls).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("VECMIRROR_DATABASE_URL=")
    assert lines[1].startswith("VECMIRROR_REDIS_URL=")

    # The same shape as `eval "$(vecmirror stack up)"`.
    script = 'eval "$(cat)"; echo "$VECMIRROR_DATABASE_URL"; echo "$VECMIRROR_REDIS_URL"'
    done = subprocess.run(
        ["bash", "-c", script], input=env_lines(urls), capture_output=True, text=True, check=True
    )

    assert done.stdout.splitlines() == [urls.database_url, urls.redis_url]
    assert done.stderr == ""


async def test_down_stops_both_and_up_again_keeps_the_urls(
    stack_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    directory = stack_dir
    try:
        urls = stack_up(directory)
        assert capfd.readouterr().out == ""  # the CLI's stdout is eval'ed by a shell

        stack_down(directory)

        with pytest.raises(redis.ConnectionError):
            _redis(urls.redis_url).ping()
        with pytest.raises(OSError):
            await _pg_values(urls.database_url, "select 1")
        stack_down(directory)  # nothing runs any more: harmless

        assert stack_up(directory) == urls
        assert _redis(urls.redis_url).ping()
        assert await _pg_values(urls.database_url, "select 1") == [1]
    finally:
        stack_down(directory)


def test_down_without_a_stack_is_harmless(tmp_path: Path) -> None:
    stack_down(tmp_path / "never-started")


def test_up_in_an_unusable_directory_raises_stack_error(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")

    with pytest.raises(StackError, match="stack directory"):
        stack_up(not_a_directory)
