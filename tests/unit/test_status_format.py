"""`vecmirror status`: the table for people and the JSON for scripts."""

from __future__ import annotations

import pytest

from vecmirror.sink.observe import IndexState
from vecmirror.source.observe import QueueState
from vecmirror.status import MirrorStatus, duration, format_status

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z

DOCS = MirrorStatus(
    mirror="docs",
    queue=QueueState(pending=12, oldest_age=75.5, dead_letters=2, failed_rows=3, backfill_state="done"),
    table_rows=1000,
    index=IndexState("docs_idx", exists=True, documents=995, indexing_failures=1, indexed_ratio=1.0),
    last_sync=NOW - 4.25,
)
NOTES = MirrorStatus(
    mirror="notes_archive",
    queue=QueueState(pending=0, oldest_age=None, dead_letters=0, failed_rows=0, backfill_state="pending"),
    table_rows=0,
    index=IndexState("notes_idx", exists=False),
    last_sync=None,
)


def test_the_table_aligns_one_row_per_mirror() -> None:
    assert format_status([DOCS, NOTES], NOW).splitlines() == [
        "MIRROR         PENDING  OLDEST  DEAD  ROWS  DOCUMENTS  INDEXED   FAILURES  BACKFILL",
        "docs           12       1m15s   2     1000  995        100%      1         done",
        "notes_archive  0        -       0     0     0          no index  0         pending",
        "docs: last sync 2023-11-14T22:13:15Z (4.2s ago)",
        "notes_archive: last sync never (no batch written since Redis was last emptied)",
    ]


def test_the_json_names_every_field() -> None:
    assert DOCS.as_dict(NOW) == {
        "mirror": "docs",
        "pending": 12,
        "oldest_pending_age_seconds": 75.5,
        "dead_letters": 2,
        "failed_rows": 3,
        "backfill": "done",
        "table_rows": 1000,
        "documents": 995,
        "index": {"name": "docs_idx", "exists": True, "percent_indexed": 100.0, "indexing_failures": 1},
        "last_sync": "2023-11-14T22:13:15Z",
        "last_sync_age_seconds": 4.25,
    }
    never = NOTES.as_dict(NOW)
    assert never["last_sync"] is None and never["last_sync_age_seconds"] is None
    assert never["oldest_pending_age_seconds"] is None and never["index"]["exists"] is False


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04, "0.0s"), (59.94, "59.9s"), (60, "1m00s"), (3599, "59m59s"), (3600, "1h00m"), (90061, "1d01h")],
)
def test_durations_read_at_a_glance(seconds: float, text: str) -> None:
    assert duration(seconds) == text
