"""`index:` of a mirror → a RedisVL IndexSchema, with every problem named by its key.

RedisVL ignores keys it does not know; a typo there would silently fall back to a default, so
unknown keys are errors here.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from redisvl.schema import IndexInfo, IndexSchema, StorageType
from redisvl.schema.fields import BaseField, FieldFactory

from vecmirror.config.model import (
    FIELD_KEYS,
    INDEX_INFO_KEYS,
    INDEX_KEYS,
    VECTOR_ALGORITHMS,
    field_type,
    pydantic_problems,
    validation_message,
)


def build_index(raw: Any) -> tuple[IndexSchema | None, list[str]]:
    """The RedisVL schema of a mirror's `index:`, or None and every problem found in it.

    RedisVL ignores keys it does not know, so a misspelt option would silently fall back to its
    default (a HASH index for `storage-type: json`, say); here every unknown key is an error.
    """
    if isinstance(raw, IndexSchema):
        return raw, []
    if not isinstance(raw, dict):
        return None, ["index: expected a mapping with `index:` and `fields:`"]
    problems = _unknown_keys("index", raw, INDEX_KEYS)
    info, info_problems = _index_info(raw.get("index"))
    problems += info_problems
    storage = info.storage_type if info is not None else StorageType.HASH
    fields, field_problems = _index_fields(raw.get("fields"), storage)
    problems += field_problems
    if problems or info is None:
        return None, problems
    try:
        schema = IndexSchema.model_validate(
            {"index": info, "fields": {f.name: f for f in fields}, "version": raw.get("version", "0.1.0")}
        )
    except ValidationError as exc:
        return None, [f"index.{where}: {message}" for where, message in pydantic_problems(exc)]
    except (ValueError, TypeError) as exc:
        return None, [f"index: {exc}"]
    return schema, []


def _unknown_keys(where: str, raw: dict[Any, Any], known: tuple[str, ...]) -> list[str]:
    return [f"{where}.{key}: unknown key (known: {', '.join(known)})" for key in raw if key not in known]


def _index_info(raw: Any) -> tuple[IndexInfo | None, list[str]]:
    if not isinstance(raw, dict):
        return None, ["index.index: expected a mapping with at least `name:` and `prefix:`"]
    problems = _unknown_keys("index.index", raw, INDEX_INFO_KEYS)
    try:
        info = IndexInfo.model_validate(raw)
    except ValidationError as exc:
        # A union (prefix: str | list) reports each member; the first message is enough.
        first = {str(error["loc"][0]): validation_message(error["msg"]) for error in reversed(exc.errors())}
        return None, problems + [f"index.index.{where}: {message}" for where, message in first.items()]
    return info, problems


def _index_fields(raw: Any, storage: StorageType) -> tuple[list[BaseField], list[str]]:
    if not isinstance(raw, list) or not raw:
        return [], ["index.fields: expected a non-empty list of fields"]
    fields: list[BaseField] = []
    problems: list[str] = []
    for position, raw_field in enumerate(raw):
        field, field_problems = _index_field(raw_field, position, storage)
        problems += field_problems
        if field is None:
            continue
        if any(f.name == field.name for f in fields):
            problems.append(f"index.fields.{field.name}: defined more than once")
        fields.append(field)
    return fields, problems


def _index_field(raw: Any, position: int, storage: StorageType) -> tuple[BaseField | None, list[str]]:
    if not isinstance(raw, dict):
        return None, [f"index.fields[{position}]: expected a mapping such as {{name: title, type: text}}"]
    spec = _normalise_field(raw, storage)
    name = spec.get("name")
    where = f"index.fields.{name}" if isinstance(name, str) and name else f"index.fields[{position}]"
    problems = _unknown_keys(where, raw, FIELD_KEYS)
    problems += _field_spec_problems(where, spec)
    if problems:
        return None, problems
    attrs = spec.get("attrs") or {}
    try:
        field = FieldFactory.create_field(type=spec["type"], name=name, attrs=attrs, path=spec.get("path"))
    except ValidationError as exc:
        return None, [f"{where}.{loc}: {message}" for loc, message in pydantic_problems(exc)]
    except (ValueError, TypeError, AttributeError) as exc:
        return None, [f"{where}: {exc}"]
    # The path RedisVL would give the field (IndexSchema does this when it builds fields itself).
    field.path = (field.path or f"$.{field.name}") if storage == StorageType.JSON else None
    problems = _unknown_keys(f"{where}.attrs", attrs, tuple(type(field.attrs).model_fields))
    algorithm = str(getattr(getattr(field.attrs, "algorithm", None), "value", "")).lower()
    if field_type(field) == "vector" and algorithm not in VECTOR_ALGORITHMS:
        problems.append(f"{where}.attrs.algorithm: {algorithm!r} is not supported; use flat or hnsw")
    if field_type(field) == "vector" and getattr(field.attrs, "index_missing", False):
        # RedisVL 0.28 sends the flag as a bare boolean and FT.CREATE fails at start-up.
        problems.append(f"{where}.attrs.index_missing: not supported on vector fields")
    return field, problems


def _field_spec_problems(where: str, spec: dict[str, Any]) -> list[str]:
    name, kind, attrs = spec.get("name"), spec.get("type"), spec.get("attrs")
    problems = []
    if not isinstance(name, str) or not name:
        problems.append(f"{where}.name: required")
    elif name.startswith("$"):
        problems.append(
            f"{where}.name: {name!r} is a JSON path; write {{name: {name}, as_name: NAME}} "
            "or {name: NAME, path: PATH}"
        )
    if not isinstance(kind, str):
        problems.append(f"{where}.type: required, one of text, tag, numeric, geo, vector")
    if attrs is not None and not isinstance(attrs, dict):
        problems.append(f"{where}.attrs: expected a mapping")
    if "path" in spec and not isinstance(spec["path"], str):
        problems.append(f"{where}.path: expected a JSON path such as $.a.b")
    return problems


def _normalise_field(field: dict[str, Any], storage: StorageType) -> dict[str, Any]:
    """Accept FT.CREATE-style `as_name` besides RedisVL's own `name` + `path` for JSON fields, and
    FT.CREATE's upper-case types."""
    field = dict(field)
    if isinstance(field.get("type"), str):
        field["type"] = field["type"].lower()
    if "as_name" not in field:
        return field
    alias = field.pop("as_name")
    name = field.get("name")
    if storage == StorageType.JSON and isinstance(name, str) and "path" not in field:
        field["path"] = name if name.startswith("$") else f"$.{name}"
    field["name"] = alias
    return field
