"""Everything a query asks for, checked against the mirror's index before Redis is called."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from redisvl.schema.fields import BaseField

from vecmirror.config import Config, MirrorConfig, field_type
from vecmirror.errors import ConfigError, QueryError
from vecmirror.query.filters import Filter, raw
from vecmirror.query.results import METRIC_SCORES, array_paths

_BRACKETS = {")": "(", "]": "[", "}": "{"}


@dataclass(frozen=True)
class Target:
    """A mirror and its vector field, as a query sees them."""

    mirror: MirrorConfig
    field: Any  # the vector field (RedisVL FlatVectorField or HNSWVectorField)

    @property
    def is_json(self) -> bool:
        return self.mirror.storage == "json"

    @property
    def datatype(self) -> str:
        return str(self.field.attrs.datatype.value).lower()

    @property
    def metric(self) -> str:
        return str(self.field.attrs.distance_metric.value).upper()

    @property
    def algorithm(self) -> str:
        return str(self.field.attrs.algorithm.value).upper()

    @property
    def array_paths(self) -> dict[str, str]:
        """JSON fields over an array, name → the array's path: return them whole (results.py)."""
        return array_paths(self.mirror.value_fields, is_json=self.is_json)

    def score(self, distance: float) -> float:
        return METRIC_SCORES[self.metric](distance)

    def check_ef_runtime(self, ef_runtime: int | None) -> None:
        if ef_runtime is None:
            return
        if self.algorithm != "HNSW":
            raise QueryError(
                f"mirror {self.mirror.name!r}: ef_runtime only applies to HNSW fields; "
                f"{self.field.name!r} is {self.algorithm}, which is always exact"
            )
        if isinstance(ef_runtime, bool) or not isinstance(ef_runtime, int) or ef_runtime < 1:
            raise QueryError(f"mirror {self.mirror.name!r}: ef_runtime must be a whole number ≥ 1")

    def check_range(self, radius: float, epsilon: float | None) -> None:
        # RediSearch refuses a negative radius, even for IP whose distances (1 - a·b) can be < 0.
        if not _finite_number(radius) or radius < 0:
            raise QueryError(
                f"mirror {self.mirror.name!r}: the range radius must be a number ≥ 0, not {radius!r}"
            )
        if epsilon is None:
            return
        if self.algorithm != "HNSW":
            raise QueryError(f"mirror {self.mirror.name!r}: epsilon only applies to HNSW fields")
        if not _finite_number(epsilon) or epsilon <= 0:
            raise QueryError(f"mirror {self.mirror.name!r}: epsilon must be a number > 0, not {epsilon!r}")

    def text_field(self, name: str | None) -> str:
        texts: list[str] = [str(f.name) for f in self.mirror.value_fields if field_type(f) == "text"]
        if name is None:
            if not texts:
                raise QueryError(
                    f"mirror {self.mirror.name!r} has no TEXT field for a fused text+vector search"
                )
            return texts[0]
        if name not in texts:
            raise QueryError(
                f"mirror {self.mirror.name!r}: {name!r} is not a TEXT field; TEXT fields: {texts}"
            )
        return name


def target_of(config: Config, mirror_name: str) -> Target:
    try:
        mirror = config.mirror(mirror_name)
    except ConfigError as exc:
        raise QueryError(str(exc.problems[0])) from exc
    if mirror.vector_field is None:
        raise QueryError(f"mirror {mirror_name!r} has no vector field to search")
    return Target(mirror, mirror.vector_field)


def check_vector(target: Target, vector: Sequence[float]) -> list[float]:
    try:
        array = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError):
        raise QueryError(
            f"mirror {target.mirror.name!r}: the query vector must be a list of numbers"
        ) from None
    dims = int(target.field.attrs.dims)
    if array.ndim != 1 or array.shape[0] != dims:
        raise QueryError(
            f"mirror {target.mirror.name!r}: the query vector has shape {array.shape}, "
            f"the field {target.field.name!r} expects {dims} numbers"
        )
    if not np.all(np.isfinite(array)):
        raise QueryError(f"mirror {target.mirror.name!r}: the query vector contains NaN or infinite values")
    return [float(v) for v in array]


def check_return_fields(target: Target, names: Sequence[str] | None) -> list[str]:
    known = {f.name: f for f in target.mirror.value_fields}
    if names is None:
        return list(known)
    for name in names:
        if name == target.field.name:
            raise QueryError(
                f"mirror {target.mirror.name!r}: ask for vectors with with_vectors, not as a field"
            )
        if name not in known:
            raise QueryError(
                f"mirror {target.mirror.name!r}: unknown field {name!r}; known fields: {sorted(known)}"
            )
    return list(names)


def check_filter(target: Target, expression: Filter | str | None) -> str | None:
    if expression is None:
        return None
    built = raw(expression) if isinstance(expression, str) else expression
    if isinstance(expression, str):
        _check_balanced(target, expression)
    fields: dict[str, BaseField] = dict(target.mirror.index.fields)
    for condition in built.conditions:
        field = fields.get(condition.field)
        if field is None:
            raise QueryError(
                f"mirror {target.mirror.name!r}: the filter names unknown field {condition.field!r}; "
                f"known fields: {sorted(fields)}"
            )
        if condition.kind != "any" and field_type(field) != condition.kind:
            raise QueryError(
                f"mirror {target.mirror.name!r}: the filter treats {condition.field!r} as "
                f"{condition.kind.upper()}, but it is a {field_type(field).upper()} field"
            )
    return str(built.query)


def _check_balanced(target: Target, expression: str) -> None:
    stack: list[str] = []
    unescaped = re.sub(r"\\.", "", expression)
    for char in unescaped:
        if char in "([{":
            stack.append(char)
        elif char in _BRACKETS and (not stack or stack.pop() != _BRACKETS[char]):
            raise QueryError(
                f"mirror {target.mirror.name!r}: malformed filter {expression!r}: unbalanced {char!r}"
            )
    if stack or unescaped.count('"') % 2:
        raise QueryError(
            f"mirror {target.mirror.name!r}: malformed filter {expression!r}: unclosed bracket or quote"
        )


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
