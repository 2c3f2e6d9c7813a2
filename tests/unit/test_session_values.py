"""Values Python's types cannot hold (source/session.py) and how they become fields; TAG elements
that hold the separator. The decoders are checked against Postgres' own text in
tests/integration/test_odd_values.py."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

import pytest
from test_documents import ROW, build, field_value, mirror, row_error

from vecmirror.pipeline.template import Template
from vecmirror.source.session import CODECS, SESSION_SETTINGS, PgValue, interval_text


def decode(type_name: str, *raw: int) -> Any:
    return CODECS[type_name][1](raw)


def encode(type_name: str, value: Any) -> tuple[int, ...]:
    return CODECS[type_name][0](value)


def test_in_range_values_decode_as_before() -> None:
    assert decode("timestamptz", 0) == datetime(2000, 1, 1, tzinfo=UTC)
    assert decode("timestamp", 1_500_000) == datetime(2000, 1, 1, 0, 0, 1, 500_000)
    assert decode("date", -1) == date(1999, 12, 31)
    assert decode("time", 3_600_000_001) == time(1, 0, 0, 1)
    assert decode("timetz", 0, -7200) == time(0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert decode("interval", 1, 2, 3_000_000) == timedelta(days=32, seconds=3)


@pytest.mark.parametrize(
    ("type_name", "raw", "text", "seconds"),
    [
        ("timestamptz", (9223371331199000000,), "294276-12-31 23:59:59+00", 9224318015999.0),
        ("timestamp", (252455616000000000,), "10000-01-01 00:00:00", 253402300800.0),
        ("timestamptz", (-211810204799500000,), "4713-01-01 00:00:00.5+00 BC", -210863519999.5),
        ("date", (2921940,), "10000-01-01", 253402300800.0),
        ("date", (-2451507,), "4713-01-01 BC", -210863520000.0),
        ("date", (-730485,), "0001-01-01 BC", -62167219200.0),
        ("timestamptz", (2**63 - 1,), "infinity", float("inf")),
        ("timestamp", (-(2**63),), "-infinity", float("-inf")),
        ("date", (2**31 - 1,), "infinity", float("inf")),
        ("date", (-(2**31),), "-infinity", float("-inf")),
        ("time", (86_400_000_000,), "24:00:00", None),
        ("timetz", (86_400_000_000, 19800), "24:00:00-05:30", None),
        ("interval", (2_040_000_000, 0, 0), "170000000 years", 2_040_000_000 * 30 * 86400.0),
        ("interval", (2**31 - 1, 2**31 - 1, 2**63 - 1), "infinity", float("inf")),
        ("interval", (-(2**31), -(2**31), -(2**63)), "-infinity", float("-inf")),
    ],
)
def test_values_python_cannot_hold(
    type_name: str, raw: tuple[int, ...], text: str, seconds: float | None
) -> None:
    value = decode(type_name, *raw)
    assert value == PgValue(type_name, text, seconds, raw)
    assert str(value) == f"{value}" == text
    assert encode(type_name, value) == raw  # sent back as a parameter unchanged


def test_interval_text_follows_intervalstyle_postgres() -> None:
    assert interval_text(-2_039_999_997, -2, 14_401_500_000) == "-169999999 years -9 mons -2 days +04:00:01.5"
    assert interval_text(0, 1, -1_000_000) == "1 day -00:00:01"
    assert interval_text(0, -1, 1_000_000) == "-1 days +00:00:01"
    assert interval_text(0, 0, 0) == "00:00:00"
    assert interval_text(13, 0, 0) == "1 year 1 mon"


def test_encoders_take_python_values() -> None:
    assert encode("timestamptz", datetime(2000, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == (0,)
    assert encode("timestamp", datetime(2000, 1, 2)) == (86_400_000_000,)
    assert encode("date", date(2000, 1, 3)) == (2,)
    assert encode("interval", timedelta(days=1, microseconds=5)) == (0, 1, 5)
    with pytest.raises(TypeError):
        encode("date", "2000-01-01")


def test_session_settings_fix_what_key_text_depends_on() -> None:
    assert SESSION_SETTINGS["TimeZone"] == "UTC"
    assert SESSION_SETTINGS["DateStyle"].startswith("ISO")
    assert {"IntervalStyle", "extra_float_digits", "bytea_output"} <= set(SESSION_SETTINGS)


FAR = decode("timestamptz", 9223371331199000000)
INFINITE = decode("date", 2**31 - 1)
MIDNIGHT = decode("time", 86_400_000_000)


def test_numeric_fields_take_exact_seconds() -> None:
    assert field_value("price", FAR) == 9223371331199000000 / 1e6 + 946684800
    assert field_value("price", decode("date", -2451507)) == -210863520000.0


@pytest.mark.parametrize(("value", "problem"), [(INFINITE, "is infinite"), (MIDNIGHT, "is not a number")])
def test_numeric_fields_refuse_infinity_and_times_of_day(value: PgValue, problem: str) -> None:
    error = row_error({**ROW, "price": value})
    assert error.field == "price" and problem in error.problem and value.text in error.problem


def test_text_tag_and_templates_take_postgres_text() -> None:
    assert field_value("title", FAR) == "294276-12-31 23:59:59+00"
    assert field_value("title", [FAR, INFINITE]) == '["294276-12-31 23:59:59+00", "infinity"]'
    assert field_value("genre", INFINITE) == "infinity"
    assert (
        Template("{title} at {when}").render({"title": "x", "when": FAR}) == "x at 294276-12-31 23:59:59+00"
    )


def test_a_tag_array_element_holding_the_separator_fails_the_row() -> None:
    error = row_error({**ROW, "genre": ["a,b", "c"]}, key=("9",))
    assert (error.key, error.field) == (["9"], "genre")
    assert "'a,b' contains the TAG separator ','" in error.problem
    assert field_value("genre", "a,b") == "a,b"  # a plain text column is split on purpose


def test_on_a_json_array_path_too() -> None:
    config = mirror("json")
    row = {**ROW, "labels": ["x", "y,z"], "scores": [], "places": []}
    assert row_error(row, config).field == "labels"
    assert build({**row, "labels": ["x", "y"]}, config).fields["labels"] == ["x", "y"]
    assert build({**row, "labels": "y,z"}, config).fields["labels"] == "y,z"
