"""Named SQL: `QUERIES["claim_changes"]` is the block headed `-- name: claim_changes`."""

from __future__ import annotations

import re
from importlib.resources import files

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse_named_sql(text: str) -> dict[str, str]:
    """Split a file of `-- name:` blocks; the text before the first name is a preamble."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


# The worker's statements, and those about a mirror's own state (kept apart so that each file reads
# as one subject).
QUERIES: dict[str, str] = {
    name: sql
    for file in ("queries.sql", "mirrors.sql")
    for name, sql in parse_named_sql(files(__name__).joinpath(file).read_text()).items()
}
