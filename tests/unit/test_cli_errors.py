"""The CLI's last-resort net: what vecmirror raises on purpose is one line and exit 2; a driver error
that slipped past the boundary too, flagged as internal; a bug keeps its traceback. In `run` with
JSON logs each of them is one JSON line instead."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import asyncpg
import pytest
from click.testing import CliRunner
from redis import exceptions as redis_errors

from vecmirror.cli import _row_keys, failure_logged, failure_message, handles_errors, main
from vecmirror.errors import StartupError
from vecmirror.logging import configure_logging
from vecmirror.settings import Settings

SECRET = "Zq8-cli-pw"


def failing(exc: BaseException) -> Callable[[], None]:
    def command() -> None:
        raise exc

    return command


def test_a_vecmirror_error_is_one_redacted_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    command = handles_errors(failing(StartupError(f"no luck with postgresql://u:{SECRET}@db/app")))
    with pytest.raises(SystemExit) as exited:
        command()
    assert exited.value.code == 2
    assert capsys.readouterr().err == "vecmirror: no luck with postgresql://u:***@db/app\n"


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.DeadlockDetectedError("deadlock detected"),
        redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
def test_a_driver_error_that_slipped_through_is_an_internal_error(
    exc: BaseException, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "info")
    with pytest.raises(SystemExit) as exited:
        handles_errors(failing(exc))()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vecmirror: internal error: {type(exc).__name__}: ")
    assert err.endswith("(please report; run with VECMIRROR_LOG_LEVEL=debug for the traceback)\n")
    assert err.count("\n") == 1


def test_at_debug_level_the_internal_error_logs_its_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "debug")
    try:
        with pytest.raises(SystemExit):
            handles_errors(failing(redis_errors.ResponseError("ERR odd")))()
    finally:
        configure_logging("json", "info")
    logged, line = capsys.readouterr().err.splitlines()
    assert json.loads(logged)["event"] == "internal_error"
    assert "Traceback" in json.loads(logged)["exception"]
    assert line.startswith("vecmirror: internal error: ResponseError: ERR odd")


def test_a_bug_keeps_its_traceback() -> None:
    assert failure_message(AttributeError("'NoneType' object has no attribute 'x'")) is None
    with pytest.raises(AttributeError):
        handles_errors(failing(AttributeError("x")))()


def run_failing(exc: BaseException, log_format: str) -> None:
    settings = Settings(log_format=log_format)
    configure_logging(settings.log_format, "info")
    with failure_logged(settings):
        raise exc


def test_run_with_json_logs_ends_in_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run_failing(StartupError(f"redis://:{SECRET}@cache:6379 is sad"), "json")
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    event = json.loads(line)
    assert event["event"] == "run_failed" and event["level"] == "error"
    assert event["error"] == "redis://:***@cache:6379 is sad" and event["error_type"] == "StartupError"


def test_run_with_json_logs_reports_a_bug_as_json_with_its_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        run_failing(AttributeError("x"), "json")
    assert exited.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    event = json.loads(line)
    assert event["event"] == "run_crashed" and "AttributeError: x" in event["exception"]


def test_run_with_console_logs_leaves_the_error_to_the_plain_line() -> None:
    with pytest.raises(StartupError):
        run_failing(StartupError("plain"), "console")


def test_a_reader_gone_away_is_no_error_of_ours(capfd: pytest.CaptureFixture[str]) -> None:
    """`vecmirror verify | head -1`: the closed pipe ends the command quietly, not as an internal error."""
    command = handles_errors(failing(BrokenPipeError(32, "Broken pipe")))
    saved = os.dup(1)
    try:
        with pytest.raises(SystemExit) as exited:
            command()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    assert exited.value.code == 1
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    ("argument", "key"),
    [
        ("42", ("42",)),
        ('["acme", 42]', ("acme", "42")),
        ('["[abc"]', ("[abc",)),
        # JSON's spelling, as Postgres reads it: str() gave 'True' (found trying wait-synced).
        ("[true, 1.5, false]", ("true", "1.5", "false")),
    ],
)
def test_keys_on_the_command_line(argument: str, key: tuple[str, ...]) -> None:
    assert _row_keys((argument,)) == [key]


@pytest.mark.parametrize("argument", ['["2"', "[abc", "[]", '[{"a": 1}', "[null]", '["a", [1]]'])
def test_a_key_that_is_no_json_array_is_one_line_and_exit_2(
    argument: str, capsys: pytest.CaptureFixture[str]
) -> None:
    command = handles_errors(lambda: _row_keys((argument,)))
    with pytest.raises(SystemExit) as exited:
        command()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and err.startswith(f"vecmirror: key {argument!r}")


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("VECMIRROR_CONFIG_LEASE", "-1", "VECMIRROR_CONFIG_LEASE: Input should be greater than 0"),
        ("VECMIRROR_BATCH_SIZE", "many", "VECMIRROR_BATCH_SIZE: Input should be a valid integer"),
        ("VECMIRROR_LOG_FORMAT", "xml", "VECMIRROR_LOG_FORMAT: Input should be 'auto', 'json' or 'console'"),
    ],
)
def test_a_wrong_setting_is_one_line_naming_it_and_exit_2(
    variable: str, value: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("VECMIRROR_DATABASE_URL", f"postgresql://u:{SECRET}@127.0.0.1:1/app")
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"vecmirror: invalid settings: {says}")
    assert result.stderr.count("\n") == 1 and SECRET not in result.stderr and value not in result.stderr


@pytest.mark.parametrize("url", ["notaurl", "mysql://u@db/app", "host=db dbname=app"])
def test_a_database_url_of_another_kind_is_named_not_an_internal_error(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """asyncpg refused these with an error naming no setting, reported as an internal error."""
    monkeypatch.setenv("VECMIRROR_DATABASE_URL", url)
    command = handles_errors(lambda: Settings().require_database_url())
    with pytest.raises(SystemExit) as exited:
        command()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "VECMIRROR_DATABASE_URL is not a postgresql:// (or postgres://) URL" in err
    assert "internal error" not in err and url not in err
