"""Passwords in VECMIRROR_DATABASE_URL and VECMIRROR_REDIS_URL never reach the output: not in a log
line (debug level), not in an error, not in a traceback, not in any command's --help."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import click
import pytest

from helpers import PRODUCTS_MIRROR, PRODUCTS_TABLE
from processes import vecmirror
from vecmirror.cli import main

SECRET = "Leak-Canary-7Qz2"
COMMANDS = [
    ("check",),
    ("migrate",),
    ("run", "--once"),
    ("backfill",),
    ("verify",),
    ("failed", "list"),
    ("status",),
    ("query", "products", "--vector", "[1,0,0,0]"),
]


def env_for(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "VECMIRROR_DATABASE_URL": database_url,
        "VECMIRROR_REDIS_URL": redis_url,
        "VECMIRROR_LOG_LEVEL": "debug",  # the most there is to leak from
        "VECMIRROR_LOG_FORMAT": "json",
        "HF_HUB_OFFLINE": "1",
    }


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once the probe is closed


def with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{user}:{password}@{parts.netloc.rpartition('@')[2]}").geturl()


def run_all(
    env: dict[str, str], config: Path, commands: list[tuple[str, ...]] = COMMANDS
) -> dict[str, subprocess.CompletedProcess[str]]:
    """The commands in parallel: each starts a Python process of its own."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = pool.map(lambda args: vecmirror(env, *args, "--config", str(config)), commands)
        return {" ".join(args): run for args, run in zip(commands, runs, strict=True)}


def output(run: subprocess.CompletedProcess[str]) -> str:
    return run.stdout + run.stderr


@pytest.fixture
def config(write_config: Any) -> Path:
    path, _ = write_config([PRODUCTS_MIRROR])
    return Path(path)


def test_servers_that_do_not_answer(config: Path) -> None:
    port = closed_port()
    env = env_for(f"postgresql://vm:{SECRET}@127.0.0.1:{port}/app", f"redis://vm:{SECRET}@127.0.0.1:{port}/0")
    runs = run_all(env, config)
    assert runs.pop("check").returncode == 0  # touches no server
    for command, run in runs.items():
        assert SECRET not in output(run), command
        assert run.returncode != 0 and "refused" in output(run).lower(), (command, output(run))


def test_servers_that_refuse_the_credentials(database_url: str, redis_url: str, config: Path) -> None:
    env = env_for(
        with_credentials(database_url, "vm_nobody", SECRET), with_credentials(redis_url, "vm", SECRET)
    )
    runs = run_all(env, config)
    del runs["check"]
    for command, run in runs.items():
        assert SECRET not in output(run), command
        refusal = "invalid username-password pair" if command.startswith("query") else "does not exist"
        assert run.returncode != 0 and refusal in output(run), (command, output(run))


async def test_postgres_accepts_the_password_then_redis_refuses_its_own(
    pg: asyncpg.Connection, database_url: str, redis_url: str, config: Path
) -> None:
    """The embedded Postgres trusts local connections, so its password is carried and ignored: the
    commands get past Postgres, log at debug level, and fail at Redis."""
    await pg.execute(PRODUCTS_TABLE)
    env = env_for(
        with_credentials(database_url, "postgres", SECRET), with_credentials(redis_url, "vm", SECRET)
    )
    migrated = vecmirror(env, "migrate", "--config", str(config))
    assert migrated.returncode == 0 and SECRET not in output(migrated), output(migrated)
    runs = run_all(env, config, [c for c in COMMANDS if c != ("migrate",)])
    for command in ("check", "failed list"):
        run = runs.pop(command)
        assert run.returncode == 0 and SECRET not in output(run), output(run)
    for command, run in runs.items():
        assert SECRET not in output(run), command
        assert run.returncode != 0 and "invalid username-password pair" in output(run), (command, output(run))


@pytest.mark.parametrize("variable", ["VECMIRROR_DATABASE_URL", "VECMIRROR_REDIS_URL"])
def test_a_password_needing_percent_encoding_is_not_quoted(variable: str, config: Path) -> None:
    # Unencoded, the "/" ends the host part: the drivers' own errors would quote "Canary9".
    env = env_for(f"postgresql://vm:x@127.0.0.1:{closed_port()}/app", f"redis://127.0.0.1:{closed_port()}/0")
    scheme = "postgresql" if variable == "VECMIRROR_DATABASE_URL" else "redis"
    env[variable] = f"{scheme}://vm:Canary9/{SECRET}@127.0.0.1:{closed_port()}/0"
    run = vecmirror(env, *COMMANDS[-1], "--config", str(config)) if scheme == "redis" else None
    run = run or vecmirror(env, "migrate", "--config", str(config))
    assert run.returncode == 2
    assert f"{variable} cannot be parsed: percent-encode" in run.stderr
    assert "Canary9" not in output(run) and SECRET not in output(run)


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_no_help_shows_a_secret(tmp_path: Path) -> None:
    env = env_for(f"postgresql://vm:{SECRET}@db:5432/app", f"rediss://vm:{SECRET}@cache:6380/0")
    env["VECMIRROR_CONFIG"] = str(tmp_path / "mirrors.yaml")
    paths = list(command_paths(main))
    assert ("failed", "list") in paths and ("stack", "up") in paths
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(lambda path: vecmirror(env, *path, "--help"), paths))
    for path, run in zip(paths, runs, strict=True):
        assert run.returncode == 0 and "Usage:" in run.stdout, path
        assert SECRET not in output(run), path
