"""parse_config / load_config: the mirrors file contract and its error messages."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from vecmirror.config import Config, field_type, index_prefix, load_config, parse_config, template_columns
from vecmirror.errors import ConfigError

EXAMPLE = """
mirrors:
  - name: docs
    table: public.docs
    key: id
    embed: {field: embedding, template: "{content}", model: sentence-transformers/all-MiniLM-L6-v2}
    index:
      index: {name: vector_idx, prefix: doc, storage_type: hash}
      fields:
        - {name: content, type: text}
        - {name: genre, type: tag}
        - {name: embedding, type: vector, attrs: {algorithm: hnsw, dims: 384, distance_metric: l2, datatype: float32}}
"""  # noqa: E501 (the README's example, verbatim)

VECTOR = {"name": "v", "type": "vector", "attrs": {"algorithm": "flat", "dims": 4, "distance_metric": "l2"}}


def example() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(EXAMPLE)
    return raw


def docs(raw: dict[str, Any]) -> dict[str, Any]:
    mirror: dict[str, Any] = raw["mirrors"][0]
    return mirror


def json_mirror(fields: list[dict[str, Any]], name: str = "notes", prefix: str = "note") -> dict[str, Any]:
    return {
        "name": name,
        "table": name,
        "vector_column": "v",
        "index": {
            "index": {"name": f"{name}_idx", "prefix": prefix, "storage_type": "json"},
            "fields": [*fields, copy.deepcopy(VECTOR)],
        },
    }


def problems(raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert caught.value.problems, "a ConfigError must list its problems"
    return caught.value.problems


def only_problem(raw: Any) -> str:
    found = problems(raw)
    assert len(found) == 1, found
    return found[0]


# --- the contract: what must parse -------------------------------------------------------------------


def test_the_readme_example_parses() -> None:
    config = parse_config(example())
    assert isinstance(config, Config)
    mirror = config.mirror("docs")
    assert mirror.key == ("id",)
    assert (mirror.schema_name, mirror.table_name) == ("public", "docs")
    assert mirror.storage == "hash"
    assert mirror.embed is not None and mirror.embed.template == "{content}"
    assert mirror.vector_field is not None and mirror.vector_field.name == "embedding"
    assert [f.name for f in mirror.value_fields] == ["content", "genre"]
    assert mirror.columns_needed() == ["content", "genre"]
    assert index_prefix(mirror) == "doc"


def test_unknown_mirror_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown mirror 'nope'"):
        parse_config(example()).mirror("nope")


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip", "L2", "COSINE", "IP"])
def test_hnsw_with_every_parameter_parses(metric: str) -> None:
    attrs = {
        "algorithm": "hnsw",
        "dims": 4,
        "distance_metric": metric,
        "datatype": "float32",
        "m": 8,
        "ef_construction": 100,
        "ef_runtime": 20,
        "epsilon": 0.05,
        "initial_cap": 1000,
    }
    raw = example()
    docs(raw)["embed"] = None
    docs(raw)["vector_column"] = "vec"
    docs(raw)["index"]["fields"] = [
        {"name": "genre", "type": "tag", "attrs": {"separator": "|"}},
        {"name": "vec", "type": "vector", "attrs": attrs},
    ]
    mirror = parse_config(raw).mirrors[0]
    vector: Any = mirror.index.fields["vec"]
    assert (vector.attrs.m, vector.attrs.ef_construction, vector.attrs.ef_runtime) == (8, 100, 20)
    assert (vector.attrs.epsilon, vector.attrs.initial_cap) == (0.05, 1000)
    assert str(vector.attrs.distance_metric.value) == metric.upper()
    genre: Any = mirror.index.fields["genre"]
    assert genre.attrs.separator == "|"


def test_flat_with_block_size_and_initial_cap_parses() -> None:
    raw = {"mirrors": [json_mirror([{"name": "title", "type": "text"}])]}
    raw["mirrors"][0]["index"]["fields"][-1] = {
        "name": "v",
        "type": "vector",
        "attrs": {
            "algorithm": "flat",
            "dims": 4,
            "distance_metric": "ip",
            "block_size": 64,
            "initial_cap": 10,
        },
    }
    vector: Any = parse_config(raw).mirrors[0].index.fields["v"]
    assert (vector.attrs.block_size, vector.attrs.initial_cap) == (64, 10)


def test_key_as_a_string_or_a_list() -> None:
    raw = example()
    assert parse_config(raw).mirrors[0].key == ("id",)
    docs(raw)["key"] = ["tenant", "id"]
    assert parse_config(raw).mirrors[0].key == ("tenant", "id")
    del docs(raw)["key"]
    assert parse_config(raw).mirrors[0].key is None  # the primary key, found at start


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "$.labels", "as_name": "labels", "type": "tag"},
        {"name": "labels", "path": "$.labels", "type": "tag"},
        {"name": "labels", "type": "tag"},
        {"name": "labels", "as_name": "labels", "type": "TAG"},
    ],
)
def test_json_field_spellings_give_name_and_path(spec: dict[str, Any]) -> None:
    mirror = parse_config({"mirrors": [json_mirror([spec])]}).mirrors[0]
    labels = mirror.index.fields["labels"]
    assert (labels.name, labels.path, field_type(labels)) == ("labels", "$.labels", "tag")
    assert mirror.columns_needed() == ["labels", "v"]


def test_as_name_keeps_a_nested_path() -> None:
    spec = {"name": "$.meta.labels", "as_name": "labels", "type": "tag", "attrs": {"separator": "|"}}
    labels = parse_config({"mirrors": [json_mirror([spec])]}).mirrors[0].index.fields["labels"]
    assert (labels.name, labels.path) == ("labels", "$.meta.labels")


@pytest.mark.parametrize("path", ["$.a", "$.a.b", "$.a_1.B2", "$.tags[*]", "$.a.b[*]"])
def test_supported_json_paths(path: str) -> None:
    parse_config({"mirrors": [json_mirror([{"name": "x", "path": path, "type": "tag"}])]})


def test_template_columns() -> None:
    assert template_columns("{title}: {content} {{literal}} {title}") == ["title", "content"]
    assert template_columns("no placeholders") == []


# --- every error names the mirror and the key ------------------------------------------------------------


@pytest.mark.parametrize("raw", [{}, {"mirrors": []}, {"mirrors": "docs"}, [], None, "mirrors"])
def test_missing_mirrors_list(raw: Any) -> None:
    assert "'mirrors:' list" in problems(raw)[0]


def test_unknown_top_level_key() -> None:
    raw = example()
    raw["extra"] = 1
    assert only_problem(raw) == "config: unknown top-level key 'extra'"


def test_unknown_top_level_key_is_reported_with_a_missing_mirrors_list() -> None:
    found = problems({"mirror": []})
    assert len(found) == 2 and "unknown top-level key 'mirror'" in found[1]


@pytest.mark.parametrize("name", ["Docs", "1docs", "docs-x", "", "d" * 41])
def test_bad_mirror_name(name: str) -> None:
    raw = example()
    docs(raw)["name"] = name
    assert only_problem(raw).startswith(f"mirror {name!r}: name: ")


def test_unknown_key_in_a_mirror() -> None:
    raw = example()
    docs(raw)["embedding"] = {"field": "embedding"}
    assert only_problem(raw) == "mirror 'docs': embedding: Extra inputs are not permitted"


def test_unknown_key_in_embed() -> None:
    raw = example()
    docs(raw)["embed"]["modle"] = "x"
    assert only_problem(raw) == "mirror 'docs': embed.modle: Extra inputs are not permitted"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: m["index"]["fields"][0].update(type="bogus"), "index.fields.content: Unknown field type"),
        (lambda m: m["index"]["fields"][2]["attrs"].pop("dims"), "index.fields.embedding: Must provide dims"),
        (
            lambda m: m["index"]["fields"][2]["attrs"].update(dims="many"),
            "index.fields.embedding.attrs.dims: Input should be a valid integer",
        ),
        (
            lambda m: m["index"]["fields"][2]["attrs"].update(dims=-5),
            "index.fields.embedding.attrs.dims: must be a positive integer, got -5",
        ),
        (
            lambda m: m["index"]["fields"][2]["attrs"].update(dims=0),
            "index.fields.embedding.attrs.dims: must be a positive integer, got 0",
        ),
        (
            lambda m: m["index"]["fields"][2]["attrs"].update(m=0),
            "index.fields.embedding.attrs.m: must be a positive integer, got 0",
        ),
        (
            lambda m: m["index"]["fields"][2]["attrs"].update(distance_metric="dot"),
            "index.fields.embedding.attrs.distance_metric: Input should be",
        ),
        (
            lambda m: m["index"]["fields"][2]["attrs"].update(ef_constructon=10),
            "index.fields.embedding.attrs.ef_constructon: unknown key",
        ),
        (
            lambda m: m["index"]["fields"][2]["attrs"].update(algorithm="svs-vamana"),
            "index.fields.embedding.attrs.algorithm: 'svs-vamana' is not supported",
        ),
        (
            lambda m: m["index"]["fields"][2]["attrs"].update(index_missing=True),
            "index.fields.embedding.attrs.index_missing: not supported on vector fields",
        ),
        (lambda m: m["index"]["fields"][1].update(sortable=True), "index.fields.genre.sortable: unknown key"),
        (lambda m: m["index"]["fields"][1].pop("name"), "index.fields[1].name: required"),
        (lambda m: m["index"]["fields"][1].pop("type"), "index.fields.genre.type: required"),
        (
            lambda m: m["index"]["fields"].append({"name": "genre", "type": "text"}),
            "index.fields.genre: defined",
        ),
        (lambda m: m["index"]["fields"].append("title"), "index.fields[3]: expected a mapping"),
        (lambda m: m["index"].update(fields=[]), "index.fields: expected a non-empty list"),
        (lambda m: m["index"]["index"].pop("name"), "index.index.name: Field required"),
        (
            lambda m: m["index"]["index"].update({"storage-type": "json"}),
            "index.index.storage-type: unknown key",
        ),
        (
            lambda m: m["index"]["index"].update(storage_type="xml"),
            "index.index.storage_type: Input should be",
        ),
        (lambda m: m["index"].update(schema=1), "index.schema: unknown key"),
        (lambda m: m.update(index="vector_idx"), "index: expected a mapping"),
        (lambda m: m.pop("index"), "index: Field required"),
        (lambda m: m.update(table="a.b.c"), "table: expected 'schema.table' or 'table'"),
        (lambda m: m.update(key=[]), "key: must name at least one column"),
        (lambda m: m.update(key=["id", "id"]), "key: a column is listed more than once"),
    ],
)
def test_invalid_index_and_keys(change: Any, expected: str) -> None:
    raw = example()
    change(docs(raw))
    assert only_problem(raw).startswith(f"mirror 'docs': {expected}")


def test_embed_field_must_be_the_vector_field() -> None:
    raw = example()
    docs(raw)["embed"]["field"] = "content"
    assert only_problem(raw) == (
        "mirror 'docs': embed.field: 'content' is not a vector field (vector fields: ['embedding'])"
    )


def test_embed_and_vector_column_together() -> None:
    raw = example()
    docs(raw)["vector_column"] = "vec"
    assert only_problem(raw) == "mirror 'docs': embed and vector_column: set one of them, not both"


def test_vector_field_without_a_source() -> None:
    raw = example()
    del docs(raw)["embed"]
    assert (
        only_problem(raw)
        == "mirror 'docs': embed or vector_column: the vector field 'embedding' needs a source"
    )


def test_source_without_a_vector_field() -> None:
    raw = example()
    docs(raw)["index"]["fields"].pop()
    assert only_problem(raw).startswith("mirror 'docs': index.fields: embed/vector_column given but")


def test_two_vector_fields() -> None:
    raw = example()
    docs(raw)["index"]["fields"].append(copy.deepcopy(VECTOR))
    assert only_problem(raw) == (
        "mirror 'docs': index.fields: at most one vector field is supported, found ['embedding', 'v']"
    )


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{a.b}", "template placeholder {a.b} must be a plain column name"),
        ("{0}", "template placeholder {0} must be a plain column name"),
        ("{}", "template placeholder {} must be a plain column name"),
        ("{a[0]}", "template placeholder {a[0]} must be a plain column name"),
        ("{a!r}", "template placeholder {a!r} must be a plain column name"),
        ("{a:>10}", "template placeholder {a:>10} must be a plain column name"),
        ("{a:{b}}", "template placeholder {a:{b}} must be a plain column name"),
        ("{title", "cannot parse template '{title'"),
        ("title}", "cannot parse template 'title}'"),
        ("}{", "cannot parse template"),
    ],
)
def test_template_placeholders(template: str, expected: str) -> None:
    raw = example()
    docs(raw)["embed"]["template"] = template
    problem = only_problem(raw)
    assert problem.startswith("mirror 'docs': embed.template: ")
    assert expected in problem


def test_reserved_field_names() -> None:
    raw = example()
    docs(raw)["index"]["fields"].append({"name": "_vm_key", "type": "text"})
    assert only_problem(raw) == "mirror 'docs': index.fields._vm_key: names starting '_vm_' are reserved"


def test_reserved_json_paths() -> None:
    problem = only_problem({"mirrors": [json_mirror([{"name": "k", "path": "$._vm_hash", "type": "text"}])]})
    assert problem.startswith("mirror 'notes': index.fields.k.path: '$._vm_hash' is reserved")


@pytest.mark.parametrize("path", ["$..x", "$.a[0]", "$.a[*].b", "$", "$.a-b", "a.b", "$['a']", "$.a[?(@.x)]"])
def test_unsupported_json_paths(path: str) -> None:
    problem = only_problem({"mirrors": [json_mirror([{"name": "x", "path": path, "type": "tag"}])]})
    assert problem.startswith(f"mirror 'notes': index.fields.x.path: {path!r} is not supported")


def test_a_vector_path_cannot_be_an_array() -> None:
    raw = {"mirrors": [json_mirror([])]}
    raw["mirrors"][0]["index"]["fields"][-1] = {**VECTOR, "path": "$.v[*]"}
    assert only_problem(raw) == "mirror 'notes': index.fields.v.path: a vector path cannot end in [*]"


@pytest.mark.parametrize(("first", "second"), [("$.a", "$.a"), ("$.a", "$.a.b"), ("$.a.b[*]", "$.a")])
def test_json_paths_must_not_overlap(first: str, second: str) -> None:
    fields = [{"name": "x", "path": first, "type": "tag"}, {"name": "y", "path": second, "type": "text"}]
    problem = only_problem({"mirrors": [json_mirror(fields)]})
    assert problem.startswith("mirror 'notes': index.fields.y.path: ") and "of field 'x'" in problem


def test_a_json_path_as_a_name_needs_as_name() -> None:
    problem = only_problem({"mirrors": [json_mirror([{"name": "$.labels", "type": "tag"}])]})
    assert problem.startswith("mirror 'notes': index.fields.$.labels.name: '$.labels' is a JSON path")


def test_duplicate_mirror_names() -> None:
    raw = example()
    twin = copy.deepcopy(docs(raw))
    twin["index"]["index"].update(name="other_idx", prefix="other")
    raw["mirrors"].append(twin)
    assert only_problem(raw) == "mirror 'docs': name: used by more than one mirror"


def test_duplicate_index_names() -> None:
    raw = example()
    other = copy.deepcopy(docs(raw))
    other["name"] = "other"
    other["index"]["index"]["prefix"] = "other"
    raw["mirrors"].append(other)
    assert (
        only_problem(raw) == "mirror 'other': index.index.name: 'vector_idx' is already used by mirror 'docs'"
    )


@pytest.mark.parametrize(("first", "second"), [("doc", "docs"), ("docs", "doc"), ("doc", "doc:"), ("a", "a")])
def test_overlapping_prefixes(first: str, second: str) -> None:
    raw = {"mirrors": [json_mirror([], "one", first), json_mirror([], "two", second)]}
    problem = only_problem(raw)
    assert problem.startswith("mirror 'two': index.index.prefix: keys ")
    assert "of mirror 'one'" in problem


def test_distinct_prefixes_are_fine() -> None:
    parse_config({"mirrors": [json_mirror([], "one", "doc"), json_mirror([], "two", "note")]})


@pytest.mark.parametrize("prefix", ["", ":", "::", [], ["doc", ""]])
def test_empty_prefix(prefix: Any) -> None:
    raw = example()
    docs(raw)["index"]["index"]["prefix"] = prefix
    assert only_problem(raw) == "mirror 'docs': index.index.prefix: must not be empty"


def test_every_problem_is_reported_together() -> None:
    raw = example()
    raw["extra"] = True
    first = docs(raw)
    first["name"] = "Docs"  # invalid name, and more problems in the same mirror
    first["colour"] = "red"
    first["embed"]["field"] = "content"
    first["index"]["fields"].append({"name": "_vm_x", "type": "text"})
    second = json_mirror([{"name": "x", "path": "$..x", "type": "tag"}], "notes", "doc")
    second["index"]["fields"][-1]["attrs"].pop("dims")
    third = json_mirror([], "third", "")
    raw["mirrors"] += [second, third, "not a mirror"]
    found = problems(raw)
    expected = [
        "config: unknown top-level key 'extra'",
        "mirror 'Docs': name: ",
        "mirror 'Docs': colour: Extra inputs are not permitted",
        "mirror 'Docs': index.fields._vm_x: names starting '_vm_' are reserved",
        "mirror 'Docs': embed.field: 'content' is not a vector field",
        "mirror 'notes': index.fields.v: Must provide dims",
        "mirror 'third': index.index.prefix: must not be empty",
        "mirrors[3]: (mirror): expected a mapping",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in found), (start, found)
    assert len(found) == len(expected), found
    message = str(ConfigError(found))
    assert all(p in message for p in found)


# --- the file ---------------------------------------------------------------------------------------------


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mirrors.yaml"
    path.write_text(EXAMPLE)
    assert load_config(path).mirrors[0].name == "docs"


def test_load_config_names_the_file_in_its_problems(tmp_path: Path) -> None:
    path = tmp_path / "mirrors.yaml"
    path.write_text("mirrors: []\n")
    assert problems_of_file(path)[0].startswith(f"{path}: expected a top-level 'mirrors:' list")


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    (problem,) = problems_of_file(path)
    assert str(path) in problem and "cannot read mirrors file" in problem


@pytest.mark.parametrize("text", ["mirrors: [\n", "mirrors:\n  - name: docs\n bad: indent\n", "a: b: c\n"])
def test_load_config_invalid_yaml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "mirrors.yaml"
    path.write_text(text)
    (problem,) = problems_of_file(path)
    assert problem.startswith(f"{path} is not valid YAML")


def test_load_config_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "mirrors.yaml"
    path.write_bytes(b"\xff\xfe\x00mirrors")
    (problem,) = problems_of_file(path)
    assert str(path) in problem


def problems_of_file(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems
