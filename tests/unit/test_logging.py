"""Log lines: JSON that parses, stable event names with their fields, other libraries' records in the
same shape, and no password from a URL."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from vecmirror.logging import configure_logging, redact

SECRET = "s3cret-Pa55"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers, root.level = handlers, level
    logging.captureWarnings(False)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_events_are_json_lines_with_their_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    log = structlog.get_logger("vecmirror.run.worker")
    log.info("batch_synced", mirror="docs", changes=3, rows=3, duration_seconds=0.0123)
    log.error("row_failed", mirror="docs", key=["7"], stage="document", field="price", error="not a number")
    log.debug("too_detailed", mirror="docs")
    first, second = json_lines(capsys.readouterr().err)
    assert first["event"] == "batch_synced" and first["level"] == "info"
    assert (first["mirror"], first["rows"], first["duration_seconds"]) == ("docs", 3, 0.0123)
    assert first["timestamp"].endswith("Z")
    assert second["event"] == "row_failed" and second["key"] == ["7"] and second["stage"] == "document"


def test_library_records_are_rendered_the_same_way(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    logging.getLogger("asyncpg.pool").warning("connection lost: %s", "reset")
    logging.getLogger("sentence_transformers").info("routine chatter")
    [line] = json_lines(capsys.readouterr().err)
    assert line == {
        "event": "connection lost: reset",
        "level": "warning",
        "logger": "asyncpg.pool",
        "timestamp": line["timestamp"],
    }


def test_a_password_in_a_url_never_reaches_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    url = f"postgresql://vecmirror:{SECRET}@db.internal:5432/app"
    structlog.get_logger().error("server_unavailable", error=f"could not connect to {url}")
    logging.getLogger("redis").error("lost redis://:%s@cache:6379/0", SECRET)
    err = capsys.readouterr().err
    assert SECRET not in err
    first, second = json_lines(err)
    assert first["error"] == "could not connect to postgresql://vecmirror:***@db.internal:5432/app"
    assert second["event"] == "lost redis://:***@cache:6379/0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://user:pw@host:1/0", "redis://user:***@host:1/0"),
        ("rediss://:pw@host", "rediss://:***@host"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),  # no password: unchanged
        (
            "postgresql://host/db?user=u&password=x&sslmode=require",
            "postgresql://host/db?user=u&password=***&sslmode=require",
        ),
        ("two: a://u:p@h and b://v:q@i", "two: a://u:***@h and b://v:***@i"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_the_console_format_is_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console", "info")
    structlog.get_logger().info("batch_synced", mirror="docs", rows=3)
    err = capsys.readouterr().err
    assert "batch_synced" in err and "mirror" in err and "docs" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err)
