"""The explicit package list in pyproject.toml must name every package, or a wheel would lack it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    service = ROOT / "service"
    found = {".".join(init.parent.relative_to(service).parts) for init in service.rglob("__init__.py")} | {
        "vecmirror.migrations"
    }
    assert listed == found
