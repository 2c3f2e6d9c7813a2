"""The plan's report and the drop helpers, without servers: what counts as a change, the lines, and
which keys a removed mirror's prefix reaches."""

from __future__ import annotations

import re

from vecmirror.ops.plan import MirrorPlan, Plan, Reembed, format_plan, rebuild_note
from vecmirror.sink.drop import MirrorData, OrphanIndex, _glob_to_regex, _with_separator


def _index(name: str = "products_idx", documents: int = 2) -> OrphanIndex:
    return OrphanIndex(name, ("product",), documents, "HASH", True, "g1", "product:a")


def test_nothing_changes_only_when_every_mirror_is_unchanged() -> None:
    same = MirrorPlan("docs", "keep", "public.docs", index="docs_idx", index_exists=True, documents=3)
    same.embedding = Reembed(rows=3, unchanged=3)
    assert not Plan([], [same]).changes
    assert format_plan(Plan([], [same])) == [
        "migrations: none pending",
        "= docs: unchanged (3 documents in docs_idx)",
        "nothing would change",
    ]
    assert Plan(["0006_x"], [same]).changes
    missing = MirrorPlan("docs", "keep", "public.docs", index="docs_idx")
    assert missing.changes  # run creates the index and fills it


def test_removed_mirrors_say_kept_or_deleted_and_left_ones_change_only_with_drop_data() -> None:
    removed = MirrorPlan(
        "products", "remove", "public.products", removed=MirrorData("products", _index(), True)
    )
    kept_line = (
        "- products: removed (public.products): Redis keeps 2 documents under prefix product and index "
        "products_idx; `vecmirror migrate --drop-data` deletes them"
    )
    assert kept_line in format_plan(Plan([], [removed]))
    assert "deleted (--drop-data)" in format_plan(Plan([], [removed], drop_data=True))[1]
    left = MirrorPlan("old", "left", "", removed=MirrorData("old", None, True))
    assert not Plan([], [left]).changes and Plan([], [left], drop_data=True).changes
    ambiguous = MirrorData("x", None, True, ("a_idx", "b_idx"))
    assert (
        ambiguous.ambiguous and ambiguous.describe() == "its index is one of a_idx, b_idx (cannot tell which)"
    )


def test_index_differences_are_listed_with_what_run_does_about_them() -> None:
    kept = MirrorPlan("docs", "keep", "public.docs", index="docs_idx", index_exists=True)
    kept.differences = ["field 'genre': SORTABLE is on in the config, off in Redis"]
    lines = format_plan(Plan([], [kept]))
    assert lines[1:4] == [
        "~ docs: index docs_idx differs from the config and must be rebuilt:",
        "    - field 'genre': SORTABLE is on in the config, off in Redis",
        f"    {rebuild_note('docs_idx')}",
    ]
    assert kept.as_dict(drop_data=False)["index"]["rebuild"] is True


def test_a_prefix_reaches_only_keys_with_the_separator_its_documents_show() -> None:
    assert _with_separator("doc", "doc:1") == "doc:"
    assert _with_separator("doc:", "doc:1") == "doc:"
    assert _with_separator("doc", "doc1") == "doc"
    assert _with_separator("doc", "") == "doc"
    assert re.fullmatch(_glob_to_regex("do\\*c:*"), "do*c:1")
    assert not re.fullmatch(_glob_to_regex("doc:*"), "docs:1")
