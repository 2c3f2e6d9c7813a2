"""Released migrations are frozen: released.txt records each file's sha256, and every file is listed.

A failure here means a released migration was edited: revert it and add a new NNNN_*.sql instead.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "migrations"
MIGRATION_FILE = re.compile(r"^\d{4}_\w+\.sql$")


def released() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in (MIGRATIONS / "released.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, digest = line.split()
        assert path not in entries, f"{path} is listed twice in released.txt"
        entries[path] = digest
    return entries


def test_released_txt_lists_migrations() -> None:
    entries = released()
    assert entries, "released.txt lists no migration"
    for path, digest in entries.items():
        assert path.startswith("migrations/") and MIGRATION_FILE.match(Path(path).name), path
        assert re.fullmatch(r"[0-9a-f]{64}", digest), f"{path}: not a sha256 hex digest"


@pytest.mark.parametrize(("path", "digest"), sorted(released().items()))
def test_released_migrations_are_unchanged(path: str, digest: str) -> None:
    file = ROOT / path
    assert file.is_file(), f"{path} is listed in released.txt but missing"
    actual = hashlib.sha256(file.read_bytes()).hexdigest()
    assert actual == digest, f"{path} was edited after its release; add a new migration instead"


def test_every_migration_file_is_listed() -> None:
    files = sorted(p.name for p in MIGRATIONS.iterdir() if MIGRATION_FILE.match(p.name))
    listed = sorted(Path(p).name for p in released())
    assert files == listed


def test_versions_are_consecutive_from_one() -> None:
    versions = sorted(int(p.name[:4]) for p in MIGRATIONS.iterdir() if MIGRATION_FILE.match(p.name))
    assert versions == list(range(1, len(versions) + 1))


def test_stray_sql_files_would_be_noticed() -> None:
    stray = [p.name for p in MIGRATIONS.glob("*.sql") if not MIGRATION_FILE.match(p.name)]
    assert stray == [], f"not named NNNN_name.sql, so never applied: {stray}"
