"""Sharded Redis without a server: the URL's `?cluster=`, whose fault a cluster's error is, what the
commands print for it, and how a removed mirror's tombstones of either naming are read."""

from __future__ import annotations

import pytest
from redis import exceptions as redis_errors

from vecmirror.boundary import RedisUnavailableError, redis_error
from vecmirror.cli import failure_message
from vecmirror.connections import redis_from_settings, split_cluster_parameter
from vecmirror.errors import ConfigError, ShardedRedisError
from vecmirror.run.faults import as_mirror_error, classify
from vecmirror.settings import Settings
from vecmirror.sink.cluster import is_cluster, primaries
from vecmirror.sink.drop import own_keys, tombstone_patterns, tombstoned_key
from vecmirror.sink.slots import SLOTS, slot_of
from vecmirror.sink.versioned import legacy_lease_keys, legacy_tombstone_key, tombstone_key

CROSS_SLOT = [
    redis_errors.ClusterCrossSlotError("Keys in request don't hash to the same slot"),
    redis_errors.ResponseError("CROSSSLOT Keys in request don't hash to the same slot"),
    redis_errors.RedisClusterException("EVALSHA - all keys must map to the same key slot"),
    redis_errors.CrossSlotTransactionError(
        "All keys involved in a cluster transaction must map to the same slot"
    ),
]


@pytest.mark.parametrize(
    ("url", "plain", "wanted"),
    [
        ("redis://h:7000/0", "redis://h:7000/0", None),
        ("redis://h:7000/0?cluster=true", "redis://h:7000/0", True),
        ("rediss://u:p@h:7000/0?cluster=False&protocol=3", "rediss://u:p@h:7000/0?protocol=3", False),
        ("redis://h:7000?protocol=3&cluster=1", "redis://h:7000?protocol=3", True),
    ],
)
def test_the_cluster_parameter_is_read_and_kept_from_redis_py(
    url: str, plain: str, wanted: bool | None
) -> None:
    assert split_cluster_parameter(url) == (plain, wanted)


def test_a_cluster_parameter_other_than_true_or_false_is_a_setting_error() -> None:
    with pytest.raises(ConfigError, match=r"\?cluster= takes true or false"):
        split_cluster_parameter("redis://h:7000/0?cluster=maybe")


def test_the_plain_factory_drops_the_parameter_and_is_its_own_only_primary() -> None:
    client = redis_from_settings(Settings(redis_url="redis://h:7000/3?cluster=false"))
    assert client.connection_pool.connection_kwargs["db"] == 3
    assert "cluster" not in client.connection_pool.connection_kwargs
    assert not is_cluster(client)
    assert [p.client for p in primaries(client)] == [client]


@pytest.mark.parametrize(
    "error",
    [
        redis_errors.MovedError("3999 127.0.0.1:6381"),
        redis_errors.AskError("3999 127.0.0.1:6381"),
        redis_errors.TryAgainError("Multiple keys request during rehashing of slot"),
        redis_errors.ClusterDownError("The cluster is down"),
        redis_errors.MasterDownError("Link with MASTER is down"),
        redis_errors.ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"),
        redis_errors.SlotNotCoveredError("Command # 1 (GET k) has no node for slot 12"),
        redis_errors.RedisClusterUnreachableError("no node of the cluster answers"),
        redis_errors.RedisClusterException("Redis Cluster cannot be connected"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_cluster_resharding_or_failing_over_is_server_trouble(error: BaseException) -> None:
    assert classify(error) == "server"


@pytest.mark.parametrize("error", CROSS_SLOT, ids=lambda e: type(e).__name__)
def test_keys_over_several_slots_are_the_mirrors_trouble_named_as_such(error: BaseException) -> None:
    assert classify(error) == "mirror"
    problem = as_mirror_error("docs", error).problem
    assert "several hash slots" in problem and "sharded" in problem


@pytest.mark.parametrize("error", CROSS_SLOT, ids=lambda e: type(e).__name__)
def test_a_command_prints_one_line_for_keys_over_several_slots(error: BaseException) -> None:
    translated = redis_error(error, "h:7000")
    assert isinstance(translated, ShardedRedisError)
    message = failure_message(translated)
    assert message is not None and "\n" not in message and "hash slots" in message


def test_a_plain_client_redirected_by_a_cluster_node_is_told_to_say_cluster() -> None:
    translated = redis_error(redis_errors.MovedError("3999 127.0.0.1:6381"), "h:7000")
    assert isinstance(translated, RedisUnavailableError)
    assert "?cluster=true" in str(translated)


def test_a_cluster_out_of_reach_is_redis_unavailable() -> None:
    error = redis_errors.RedisClusterException(
        "Redis Cluster cannot be connected. Please provide at least one node"
    )
    translated = redis_error(error, "h:7000")
    assert isinstance(translated, RedisUnavailableError) and "h:7000" in str(translated)


def test_a_removed_mirrors_own_keys_include_every_slots_guard_and_lease_and_the_old_names() -> None:
    keys = own_keys("docs")
    assert set(legacy_lease_keys("docs")) <= set(keys)
    assert len({slot_of(k) for k in keys}) == SLOTS  # a guard and a lease in every slot


@pytest.mark.parametrize("document", ["doc:1", "doc:{odd}2", "doc:é"])
def test_tombstones_of_both_namings_name_their_document(document: str) -> None:
    for tombstone in (tombstone_key(document), legacy_tombstone_key(document)):
        assert tombstoned_key(tombstone) == document


def test_the_tombstone_patterns_reach_both_namings() -> None:
    slotted, legacy = tombstone_patterns("doc:")
    assert slotted == "vecmirror:tombstone:{*}doc:*"
    assert legacy == "vecmirror:tombstone:doc:*"
