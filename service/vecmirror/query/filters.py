"""A filter builder for RediSearch queries: TAG, NUMERIC and TEXT conditions joined with & | ~.

    from vecmirror.query import tag, num, text, raw
    f = tag("genre").any_of("pets", "sci-fi") & num("price").between(10, 50) & ~text("title").matches("draft")

Values are escaped here, whatever characters they hold. A filter is checked against the mirror's
index (the field must exist and have the right type) before Redis is called.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from redisvl.query.filter import Num

from vecmirror.errors import QueryError

# What RediSearch 2.10 splits TEXT into tokens on, measured: ASCII whitespace and every ASCII
# punctuation character except backslash (its escape) and underscore. Unicode spaces do not split.
TEXT_SEPARATORS = re.compile(r"[ \t\n\r\f\v!\"#$%&'()*+,\-./:;<=>?@\[\]^`{|}~]+")
# Inside a token, everything that is not a letter or digit is escaped: harmless when not special.
# ASCII punctuation and space: escaped with a backslash. Non-ASCII characters are left alone, since
# RediSearch escapes a single byte and a backslash before a multi-byte character breaks it.
_ASCII_PUNCTUATION = re.compile(r"([\x20-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e])")
MIN_PREFIX = 2  # RediSearch's MINPREFIX default
INCLUSIVE = ("both", "neither", "left", "right")


@dataclass(frozen=True)
class Condition:
    """A field that must exist in the index with this type for the query to make sense."""

    field: str
    kind: str  # "tag", "numeric" or "text"


class Filter:
    """A RediSearch filter expression plus the fields it needs; combine with &, | and ~."""

    def __init__(self, query: str, conditions: Iterable[Condition] = ()) -> None:
        self.query = query
        self.conditions = tuple(conditions)

    def __and__(self, other: Filter) -> Filter:
        return Filter(f"({self.query} {other.query})", self.conditions + other.conditions)

    def __or__(self, other: Filter) -> Filter:
        return Filter(f"({self.query} | {other.query})", self.conditions + other.conditions)

    def __invert__(self) -> Filter:
        return Filter(f"(-{self.query})", self.conditions)

    def __str__(self) -> str:
        return self.query

    def __repr__(self) -> str:
        return f"Filter({self.query!r})"


def raw(expression: str) -> Filter:
    """A RediSearch filter string as users write it, e.g. '@genre:{pets} @price:[10 50]'."""
    fields = re.findall(r"@([A-Za-z_][\w]*)\s*:", expression)
    return Filter(f"({expression})", [Condition(f, "any") for f in fields])


class tag:
    def __init__(self, field: str) -> None:
        self.field = field

    def any_of(self, *values: str) -> Filter:
        """Documents carrying at least one of these tags."""
        checked = "|".join(_escape_tag(v) for v in _tag_values(self.field, values))
        return Filter(f"@{self.field}:{{{checked}}}", [Condition(self.field, "tag")])

    def all_of(self, *values: str) -> Filter:
        """Documents carrying every one of these tags."""
        clauses = " ".join(f"@{self.field}:{{{_escape_tag(v)}}}" for v in _tag_values(self.field, values))
        return Filter(f"({clauses})", [Condition(self.field, "tag")])


class num:
    def __init__(self, field: str) -> None:
        self.field = field

    def between(self, low: float, high: float, inclusive: str = "both") -> Filter:
        """low..high; `inclusive` is "both", "neither", "left" or "right"."""
        if inclusive not in INCLUSIVE:
            raise QueryError(
                f"filter on {self.field!r}: inclusive must be one of {INCLUSIVE}, not {inclusive!r}"
            )
        _number(self.field, low), _number(self.field, high)
        if low > high:
            raise QueryError(f"filter on {self.field!r}: empty range, {low} > {high}")
        return self._filter(str(Num(self.field).between(low, high, inclusive=inclusive)))

    def eq(self, value: float) -> Filter:
        return self._filter(str(Num(self.field) == _number(self.field, value)))

    def gt(self, value: float) -> Filter:
        return self._filter(str(Num(self.field) > _number(self.field, value)))

    def ge(self, value: float) -> Filter:
        return self._filter(str(Num(self.field) >= _number(self.field, value)))

    def lt(self, value: float) -> Filter:
        return self._filter(str(Num(self.field) < _number(self.field, value)))

    def le(self, value: float) -> Filter:
        return self._filter(str(Num(self.field) <= _number(self.field, value)))

    def _filter(self, query: str) -> Filter:
        return Filter(query, [Condition(self.field, "numeric")])


class text:
    def __init__(self, field: str) -> None:
        self.field = field

    def matches(self, value: str) -> Filter:
        """Documents whose field holds these words in this order (a phrase), case-insensitively."""
        tokens = text_tokens(value)
        if not tokens:
            raise QueryError(f"filter on {self.field!r}: {value!r} has no words to match")
        phrase = " ".join(_escape_token(t) for t in tokens)
        return Filter(f'@{self.field}:"{phrase}"', [Condition(self.field, "text")])

    def prefix(self, value: str) -> Filter:
        """Documents with a word in the field starting with `value` (one word, two characters or more)."""
        tokens = text_tokens(value)
        if len(tokens) != 1 or len(tokens[0]) < MIN_PREFIX:
            raise QueryError(
                f"filter on {self.field!r}: a prefix must be one word of at least {MIN_PREFIX} "
                f"characters, not {value!r}"
            )
        return Filter(f"@{self.field}:{_escape_token(tokens[0])}*", [Condition(self.field, "text")])


def text_tokens(value: str) -> list[str]:
    return [t for t in TEXT_SEPARATORS.split(value) if t]


def _escape_tag(value: str) -> str:
    # RedisVL's tag escaper misses ` and _ (both break the query), hence our own.
    return _ASCII_PUNCTUATION.sub(r"\\\1", value)


def _escape_token(token: str) -> str:
    return _ASCII_PUNCTUATION.sub(r"\\\1", token)


def _tag_values(field: str, values: tuple[str, ...]) -> list[str]:
    if not values:
        raise QueryError(f"filter on {field!r}: give at least one tag value")
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise QueryError(f"filter on {field!r}: tag values must be non-empty strings, not {value!r}")
    return [v.strip() for v in values]


def _number(field: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise QueryError(f"filter on {field!r}: {value!r} is not a number")
    return value
