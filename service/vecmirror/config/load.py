"""Reading and validating the whole mirrors file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vecmirror.config.checks import cross_mirror_problems, schema_problems
from vecmirror.config.index_schema import build_index
from vecmirror.config.model import Config, MirrorConfig, pydantic_problems
from vecmirror.errors import ConfigError


def load_config(path: Path) -> Config:
    """Read and validate the mirrors file; raises ConfigError listing every problem."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError([f"cannot read mirrors file {path}: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path} is not a UTF-8 text file: {exc}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path} is not valid YAML: {exc}"]) from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: Any, source: str = "config") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: expected a top-level 'mirrors:' list with at least one mirror"])
    problems = [f"{source}: unknown top-level key {k!r}" for k in raw if k != "mirrors"]
    entries = raw.get("mirrors")
    if not isinstance(entries, list) or not entries:
        problems.insert(0, f"{source}: expected a top-level 'mirrors:' list with at least one mirror")
        raise ConfigError(problems)
    mirrors: list[MirrorConfig] = []
    for position, entry in enumerate(entries):
        label = _mirror_label(entry, position)
        mirror, found = _check_mirror(entry)
        problems += [f"{label}: {p}" for p in found]
        if mirror is not None:
            mirrors.append(mirror)
    problems += cross_mirror_problems(mirrors)
    if problems:
        raise ConfigError(problems)
    return Config(mirrors=tuple(mirrors))


def _mirror_label(entry: Any, position: int) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"mirror {name!r}" if isinstance(name, str) else f"mirrors[{position}]"


def _check_mirror(entry: Any) -> tuple[MirrorConfig | None, list[str]]:
    """The mirror, if it validates, and its problems: the index's and the rest, all of them."""
    if not isinstance(entry, dict):
        return None, ["(mirror): expected a mapping with name:, table: and index:"]
    schema, problems = build_index(entry["index"]) if "index" in entry else (None, [])
    mirror: MirrorConfig | None = None
    try:
        mirror = MirrorConfig.model_validate({**entry, "index": schema} if schema is not None else entry)
    except ValidationError as exc:
        problems += [
            f"{where}: {message}"
            for where, message in pydantic_problems(exc)
            if not (problems and where.split(".")[0] == "index")  # reported in detail already
        ]
    if schema is not None:
        problems += schema_problems(schema, entry)
    return mirror, problems
