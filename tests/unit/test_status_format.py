"""`vecmirror status`: the table for people and the JSON for scripts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from vecmirror.ops.status import MirrorStatus, duration, format_status
from vecmirror.sink.observe import IndexState
from vecmirror.source.observe import QueueState

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
PAUSED = MirrorStatus(
    mirror="docs",
    queue=QueueState(
        pending=3,
        oldest_age=200.0,
        dead_letters=0,
        failed_rows=0,
        backfill_state="done",
        error='column "title" does not exist in public.docs\nrun `vecmirror check`',
        error_since=datetime.fromtimestamp(NOW - 185, UTC),
    ),
    table_rows=None,
    index=IndexState("docs_idx", exists=True, documents=5, indexed_ratio=1.0),
    last_sync=NOW - 190,
    table_error='relation "public.docs" does not exist',
)


def test_the_table_aligns_one_row_per_mirror() -> None:
    assert format_status([DOCS, NOTES], NOW).splitlines() == [
        "MIRROR         STATE  PENDING  OLDEST  DEAD  ROWS  DOCUMENTS  INDEXED   FAILURES  BACKFILL",
        "docs           ok     12       1m15s   2     1000  995        100%      1         done",
        "notes_archive  ok     0        -       0     0     0          no index  0         pending",
        "docs: last sync 2023-11-14T22:13:15Z (4.2s ago)",
        "notes_archive: last sync never (no batch written since Redis was last emptied)",
    ]


def test_a_paused_mirror_shows_its_state_its_error_and_since_when() -> None:
    assert format_status([PAUSED], NOW).splitlines() == [
        "MIRROR  STATE   PENDING  OLDEST  DEAD  ROWS  DOCUMENTS  INDEXED  FAILURES  BACKFILL",
        "docs    paused  3        3m20s   0     -     5          100%     0         done",
        "docs: last sync 2023-11-14T22:10:10Z (3m10s ago)",
        'docs: paused since 2023-11-14T22:10:15Z (3m05s ago): column "title" does not exist in '
        "public.docs; run `vecmirror check`",
        'docs: cannot count the table\'s rows: relation "public.docs" does not exist',
    ]
    shown = PAUSED.as_dict(NOW)
    assert (shown["state"], shown["error_since"], shown["table_rows"]) == (
        "paused",
        "2023-11-14T22:10:15Z",
        None,
    )
    assert shown["error"] == 'column "title" does not exist in public.docs\nrun `vecmirror check`'
    assert shown["table_error"] == 'relation "public.docs" does not exist'


def test_the_json_names_every_field() -> None:
    assert DOCS.as_dict(NOW) == {
        "mirror": "docs",
        "state": "ok",
        "error": None,
        "error_since": None,
        "operator_pause": None,
        "pending": 12,
        "oldest_pending_age_seconds": 75.5,
        "dead_letters": 2,
        "failed_rows": 3,
        "backfill": "done",
        "table_rows": 1000,
        "table_error": None,
        "capture_error": None,
        "documents": 995,
        "index": {
            "name": "docs_idx",
            "exists": True,
            "answering": None,
            "percent_indexed": 100.0,
            "indexing_failures": 1,
            "rebuild": None,
        },
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


def test_a_mirror_whose_changes_are_not_captured_says_why() -> None:
    uncaptured = replace(DOCS, capture_error="the capture triggers are missing on public.docs")
    assert uncaptured.state == "uncaptured"
    lines = format_status([uncaptured], NOW).splitlines()
    assert lines[1].split()[:2] == ["docs", "uncaptured"]
    assert "docs: changes not captured: the capture triggers are missing on public.docs" in lines
