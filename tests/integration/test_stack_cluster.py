"""`vecmirror stack up --cluster N`: a Redis OSS cluster of N masters from the stack's own server and
modules, and the node restart the sharded-Redis tests use to make a shard forget."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from conftest import Cluster, master_urls
from processes import vecmirror
from vecmirror.errors import StackError
from vecmirror.sink.slots import slot_of, slot_tag
from vecmirror.stack import cluster_up, start_cluster_node, stop_cluster_node

ALL_SLOTS = list(range(16384))


def _up(directory: Path, nodes: int) -> dict[str, str]:
    up = vecmirror({}, "stack", "up", "--cluster", str(nodes), "--dir", str(directory), timeout=120)
    assert up.returncode == 0, up.stderr
    return dict(line.split("=", 1) for line in up.stdout.splitlines())


def _down(directory: Path) -> None:
    down = vecmirror({}, "stack", "down", "--dir", str(directory), timeout=60)
    assert down.returncode == 0, down.stderr


def _node(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=1)


def _call(client: redis.Redis, *args: str | int) -> object:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _slot_owners(url: str) -> dict[int, tuple[str, int]]:
    """Which master serves each slot, as the node at `url` sees it (CLUSTER SLOTS)."""
    owners: dict[int, tuple[str, int]] = {}
    for first, last, (host, port, *_), *_ in _call(_node(url), "CLUSTER", "SLOTS"):  # type: ignore[attr-defined]
        for slot in range(first, last + 1):
            assert slot not in owners, f"slot {slot} listed twice"
            owners[slot] = (host, port)
    return owners


def _first_slot(owners: dict[int, tuple[str, int]], url: str) -> int:
    host, port = url.removeprefix("redis://").rsplit(":", 1)
    return min(slot for slot, owner in owners.items() if owner == (host, int(port)))


def _cluster_info(url: str) -> dict[str, str]:
    text = str(_call(_node(url), "CLUSTER", "INFO"))
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def _refuses_connections(url: str) -> bool:
    try:
        _node(url).ping()
    except redis.ConnectionError:
        return True
    return False


@pytest.fixture
def cluster_dir(stack_dir: Path) -> Iterator[Path]:
    """A stack directory whose servers are stopped after the test, whatever it left running."""
    try:
        yield stack_dir
    finally:
        _down(stack_dir)


def test_cluster_3_covers_every_slot_with_modules_on_each_node_and_down_stops_it(cluster_dir: Path) -> None:
    env = _up(cluster_dir, 3)
    url = env["VECMIRROR_REDIS_URL"]
    nodes = master_urls(url)

    assert url == nodes[0]
    owners = _slot_owners(url)
    assert sorted(owners) == ALL_SLOTS
    assert len(set(owners.values())) == 3
    for node in nodes:
        info = _cluster_info(node)
        assert (info["cluster_state"], info["cluster_known_nodes"], info["cluster_size"]) == ("ok", "3", "3")
        assert _slot_owners(node) == owners  # every node agrees who serves what
        assert {module["name"] for module in _node(node).module_list()} >= {"search", "ReJSON"}

    cluster = RedisCluster.from_url(url, decode_responses=True)
    keys = [f"doc:{number}" for number in range(60)]
    for key in keys:
        cluster.set(key, key)
    on_node = {node: set(_node(node).keys("doc:*")) for node in nodes}
    assert sorted(key for found in on_node.values() for key in found) == sorted(keys)
    assert all(on_node.values())  # sixty keys land on all three masters
    cluster.close()

    _down(cluster_dir)

    assert all(_refuses_connections(node) for node in nodes)
    assert _refuses_connections(url)


def test_cluster_up_again_reuses_the_running_nodes(cluster_dir: Path) -> None:
    env = _up(cluster_dir, 3)
    nodes = master_urls(env["VECMIRROR_REDIS_URL"])
    pids = [_node(node).info("server")["process_id"] for node in nodes]

    assert _up(cluster_dir, 3) == env

    assert [_node(node).info("server")["process_id"] for node in nodes] == pids


def test_cluster_1_owns_every_slot_searches_and_refuses_a_script_across_slots(cluster_dir: Path) -> None:
    env = _up(cluster_dir, 1)
    url = env["VECMIRROR_REDIS_URL"]
    client = _node(url)

    assert set(_slot_owners(url).values()) == {("127.0.0.1", int(url.rsplit(":", 1)[1]))}
    assert sorted(_slot_owners(url)) == ALL_SLOTS
    assert _cluster_info(url)["cluster_state"] == "ok"
    # What makes it stand in for a proxy endpoint: one server, yet scripts must keep to one slot.
    assert slot_of("a") != slot_of("b")
    with pytest.raises(redis.ResponseError, match=r"CROSSSLOT|same slot"):
        client.eval("return redis.call('MGET', KEYS[1], KEYS[2])", 2, "a", "b")
    _call(client, "FT.CREATE", "cl_idx", "ON", "HASH", "PREFIX", "1", "doc:", "SCHEMA", "genre", "TAG")
    for number in range(20):
        client.hset(f"doc:{number}", "genre", "pets")
    assert client.ft("cl_idx").search("@genre:{pets}").total == 20

    _down(cluster_dir)

    assert _refuses_connections(url)


def test_a_node_started_again_owns_its_slots_with_no_keys_and_no_index(
    own_cluster3: tuple[Path, Cluster],
) -> None:
    directory, cluster = own_cluster3
    owners = _slot_owners(cluster.url)
    # Without the coordinator a node takes FT.CREATE only for an index name in one of its own slots.
    names = [f"idx{slot_tag(_first_slot(owners, node))}" for node in cluster.node_urls]
    for node, name in zip(cluster.node_urls, names, strict=True):
        _call(_node(node), "FT.CREATE", name, "ON", "HASH", "PREFIX", "1", "doc:", "SCHEMA", "t", "TEXT")
    client = RedisCluster.from_url(cluster.url, decode_responses=True)
    for number in range(60):
        client.hset(f"doc:{number}", "t", "x")
    client.close()
    kept = [_node(node).dbsize() for node in cluster.node_urls]

    stop_cluster_node(directory, 1)
    assert _refuses_connections(cluster.node_urls[1])
    assert start_cluster_node(directory, 1) == cluster.node_urls[1]

    assert [_node(node).dbsize() for node in cluster.node_urls] == [kept[0], 0, kept[2]]
    assert [_call(_node(node), "FT._LIST") for node in cluster.node_urls] == [[names[0]], [], [names[2]]]
    assert _slot_owners(cluster.node_urls[1]) == owners
    assert all(_cluster_info(node)["cluster_state"] == "ok" for node in cluster.node_urls)


def test_another_size_while_a_cluster_runs_is_refused(own_cluster3: tuple[Path, Cluster]) -> None:
    directory, cluster = own_cluster3

    with pytest.raises(StackError, match="cluster of 3 nodes runs"):
        cluster_up(directory, 1)

    assert _cluster_info(cluster.url)["cluster_known_nodes"] == "3"


def test_cluster_of_no_nodes_is_a_usage_error(tmp_path: Path) -> None:
    up = vecmirror({}, "stack", "up", "--cluster", "0", "--dir", str(tmp_path / "stack"), timeout=60)

    assert up.returncode == 2
    assert "--cluster" in up.stderr
    assert not (tmp_path / "stack").exists()
