"""A recorded Redis layout (0006) without servers: where its keys start, which indexes are its
rebuild generations, and when an index over a prefix reaches a configured mirror's keys."""

from __future__ import annotations

from typing import Any

from vecmirror.config import parse_config
from vecmirror.sink.drop import Layout, MirrorData, _reaches
from vecmirror.source.migrate import redis_layout


def _mirror(name: str, prefix: Any, separator: str = ":") -> dict[str, Any]:
    return {
        "name": name,
        "table": name,
        "vector_column": "v",
        "index": {
            "index": {"name": f"{name}_idx", "prefix": prefix, "key_separator": separator},
            "fields": [{"name": "v", "type": "vector", "attrs": {"algorithm": "flat", "dims": 2}}],
        },
    }


def test_keys_start_with_the_prefix_and_the_separator_as_redisvl_writes_them() -> None:
    assert Layout("i", ("doc",), ":", "hash").key_prefixes() == ("doc:",)
    assert Layout("i", ("doc:",), ":", "hash").key_prefixes() == ("doc:",)  # one keyspace
    assert Layout("i", ("kb", "kb/"), "/", "json").key_prefixes() == ("kb/",)
    assert Layout("i", ("kb",), "", "hash").key_prefixes() == ("kb",)
    assert Layout("i", ("::",), ":", "hash").key_prefixes() == ()  # would reach every key: never


def test_rebuild_generations_are_the_recorded_name_and_a_digest() -> None:
    layout = Layout("KB articles/v1", ("kb",), "/", "hash")
    assert layout.generation("KB articles/v1__0123456789")
    assert not layout.generation("KB articles/v1")
    assert not layout.generation("KB articles/v1__notadigest")
    assert not layout.generation("KB articles/v2__0123456789")


def test_migrate_records_what_the_file_says() -> None:
    (kb, multi) = parse_config({"mirrors": [_mirror("kb", "kb", "/"), _mirror("x", ["xa", "xb"])]}).mirrors
    assert redis_layout(kb) == ("kb_idx", ["kb"], "/", "hash")
    assert redis_layout(multi) == ("x_idx", ["xa", "xb"], ":", "hash")


def test_an_index_reaches_the_keys_of_a_configured_mirror_whose_keys_start_with_its_prefix() -> None:
    configured = parse_config({"mirrors": [_mirror("kbase", "kbase"), _mirror("do", "do")]}).mirrors
    assert _reaches(("kb",), configured)  # FT.CREATE … PREFIX kb holds kbase:1
    assert _reaches(("kbase:1",), configured)
    assert not _reaches(("doc",), configured)  # do:1 does not start with doc
    assert not _reaches(("kc",), configured)


def test_a_recorded_removal_says_where_its_documents_are() -> None:
    layout = Layout("docs_idx", ("doc",), ":", "hash")
    kept = MirrorData("docs", None, True, layout=layout, index_owner="articles", counted=0)
    assert kept.describe() == (
        "0 documents under prefix doc (index docs_idx is kept: mirror 'articles' is queried through it)"
    )
    assert kept.as_dict()["index"] is None and kept.recorded() == {
        "index": "docs_idx",
        "prefixes": ["doc"],
        "key_separator": ":",
        "storage_type": "hash",
        "index_kept_for": "articles",
    }
    gone = MirrorData("docs", None, False, layout=layout, counted=4)
    assert gone.describe() == "4 documents under prefix doc (no index docs_idx in Redis)"
    assert MirrorData("docs", None, False).recorded() is None
