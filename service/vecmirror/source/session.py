"""How vecmirror's own Postgres sessions are set up: every connection it opens goes through here.

Two things are fixed per session:

- **Settings** (`SESSION_SETTINGS`): the text Postgres gives a key or a value (`::text`) depends on
  TimeZone, DateStyle, IntervalStyle, extra_float_digits and bytea_output. vecmirror's sessions and
  the capture functions (statements.CAPTURE_SETTINGS) use the same ones, so a row's key text is the
  same whoever wrote it and whatever the server's or the role's defaults are.
- **Codecs** for the date and time types: asyncpg decodes them into Python's datetime types, which
  cannot hold every value Postgres can (`infinity`, years after 9999 or before 1, `24:00:00`,
  intervals past 999,999,999 days). Its decoder raised OverflowError inside the fetch, failing the
  whole batch at every attempt; or, for `infinity`, silently gave year 9999. Here every value
  decodes: in range as before (datetime, date, time, timedelta), anything else as a `PgValue`
  carrying Postgres' own text of it and, where it means one, its number of seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

import asyncpg

# Settings every vecmirror session runs with, so what it reads and the keys it builds do not
# depend on the server's or the role's defaults. The capture functions use the same values.
SESSION_SETTINGS: dict[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",  # Postgres 12+'s default: the shortest text that reads back exactly
    "bytea_output": "hex",
}

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # Postgres counts timestamps and dates from here
PG_EPOCH_UNIX_SECONDS = 946_684_800
PG_EPOCH_DAY = 10_957  # 2000-01-01 in days since 1970-01-01
USEC_PER_SEC = 1_000_000
USEC_PER_DAY = 86_400 * USEC_PER_SEC
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)
DAYS_PER_MONTH = 30  # how asyncpg turns an interval's months into a timedelta


@dataclass(frozen=True)
class PgValue:
    """A date/time value Python's types cannot hold. `str()` (and so templates, TEXT and TAG fields)
    gives Postgres' own text under SESSION_SETTINGS; `seconds` is what a NUMERIC field takes: epoch
    seconds for timestamps and dates (exact from the raw microseconds, any year), the length of an
    interval, ±inf when infinite, None where no number is meant (a time of day)."""

    type_name: str
    text: str
    seconds: float | None
    raw: tuple[int, ...]  # asyncpg's tuple form, so the value can be sent back as a parameter

    def __str__(self) -> str:
        return self.text

    def __format__(self, spec: str) -> str:
        return format(self.text, spec)


def _civil(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian (year, month, day) of a day count from 1970-01-01, for any year
    (H. Hinnant's civil_from_days); year 0 is 1 BC, as Postgres counts."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _date_text(pg_days: int) -> tuple[str, str]:
    """ISO date text and the era suffix (" BC" or "")."""
    year, month, day = _civil(pg_days + PG_EPOCH_DAY)
    era = " BC" if year <= 0 else ""
    return f"{year if year > 0 else 1 - year:04d}-{month:02d}-{day:02d}", era


def _clock_text(usec: int) -> str:
    """HH:MM:SS[.ffffff], trailing zeros of the fraction dropped, as Postgres writes it."""
    seconds, fraction = divmod(usec, USEC_PER_SEC)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    text = f"{hour:02d}:{minute:02d}:{second:02d}"
    return text + (f".{fraction:06d}".rstrip("0") if fraction else "")


def _infinity(type_name: str, positive: bool, raw: tuple[int, ...]) -> PgValue:
    sign = "" if positive else "-"
    return PgValue(type_name, f"{sign}infinity", float(f"{sign}inf"), raw)


def _timestamp_value(type_name: str, usec: int, raw: tuple[int, ...]) -> PgValue:
    if usec in (INT64_MAX, INT64_MIN):
        return _infinity(type_name, usec == INT64_MAX, raw)
    days, in_day = divmod(usec, USEC_PER_DAY)
    day_text, era = _date_text(days)
    zone = "+00" if type_name == "timestamptz" else ""
    seconds = (usec + PG_EPOCH_UNIX_SECONDS * USEC_PER_SEC) / USEC_PER_SEC  # int/int: correctly rounded
    return PgValue(type_name, f"{day_text} {_clock_text(in_day)}{zone}{era}", seconds, raw)


def _decode_timestamp(type_name: str) -> Callable[[tuple[int, ...]], datetime | PgValue]:
    def decode(raw: tuple[int, ...]) -> datetime | PgValue:
        try:
            value = PG_EPOCH + timedelta(microseconds=raw[0])
        except OverflowError:
            return _timestamp_value(type_name, raw[0], raw)
        return value if type_name == "timestamptz" else value.replace(tzinfo=None)

    return decode


def _decode_date(raw: tuple[int, ...]) -> date | PgValue:
    days = raw[0]
    if days in (INT32_MAX, INT32_MIN):
        return _infinity("date", days == INT32_MAX, raw)
    try:
        return PG_EPOCH.date() + timedelta(days=days)
    except OverflowError:
        text, era = _date_text(days)
        return PgValue("date", text + era, (PG_EPOCH_DAY + days) * 86_400.0, raw)


def _decode_time(raw: tuple[int, ...]) -> time | PgValue:
    if raw[0] >= USEC_PER_DAY:  # 24:00:00, which Postgres allows
        return PgValue("time", _clock_text(raw[0]), None, raw)
    return (datetime.min + timedelta(microseconds=raw[0])).time()


def _decode_timetz(raw: tuple[int, ...]) -> time | PgValue:
    usec, west = raw
    zone = timezone(timedelta(seconds=-west))
    if usec >= USEC_PER_DAY:
        return PgValue("timetz", _clock_text(usec) + _offset_text(-west), None, raw)
    return (datetime.min + timedelta(microseconds=usec)).time().replace(tzinfo=zone)


def _offset_text(east: int) -> str:
    sign = "-" if east < 0 else "+"
    hours, rest = divmod(abs(east), 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{sign}{hours:02d}"
    if minutes or seconds:
        text += f":{minutes:02d}"
    return text + (f":{seconds:02d}" if seconds else "")


def _decode_interval(raw: tuple[int, ...]) -> timedelta | PgValue:
    months, days, usec = raw
    if raw in ((INT32_MAX, INT32_MAX, INT64_MAX), (INT32_MIN, INT32_MIN, INT64_MIN)):
        return _infinity("interval", months > 0, raw)
    try:
        return timedelta(days=months * DAYS_PER_MONTH + days, microseconds=usec)
    except OverflowError:
        seconds = ((months * DAYS_PER_MONTH + days) * USEC_PER_DAY + usec) / USEC_PER_SEC
        return PgValue("interval", interval_text(months, days, usec), seconds, raw)


def interval_text(months: int, days: int, usec: int) -> str:
    """Postgres' text of an interval under IntervalStyle postgres (EncodeInterval)."""
    parts: list[str] = []
    before = False  # the last part written was negative: a positive one then gets a "+"
    years, mons = int(months / 12), months - int(months / 12) * 12  # C's truncating division
    for value, unit in ((years, "year"), (mons, "mon"), (days, "day")):
        if value:
            parts.append(f"{'+' if before and value > 0 else ''}{value} {unit}{'' if value == 1 else 's'}")
            before = value < 0
    if not parts or usec:
        sign = "-" if usec < 0 else ("+" if before else "")
        parts.append(sign + _clock_text(abs(usec)))
    return " ".join(parts)


def _encode(kind: type, to_raw: Callable[[Any], tuple[int, ...]]) -> Callable[[Any], tuple[int, ...]]:
    def encode(value: Any) -> tuple[int, ...]:
        if isinstance(value, PgValue):
            return value.raw
        if not isinstance(value, kind):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return to_raw(value)

    return encode


def _usec(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * USEC_PER_SEC + delta.microseconds


def _timestamp_raw(value: datetime) -> tuple[int, ...]:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return (_usec(aware - PG_EPOCH),)


def _time_usec(value: time) -> int:
    return ((value.hour * 60 + value.minute) * 60 + value.second) * USEC_PER_SEC + value.microsecond


def _timetz_raw(value: time) -> tuple[int, ...]:
    offset = value.utcoffset() or timedelta(0)
    return (_time_usec(value), -int(offset.total_seconds()))


def _interval_raw(value: timedelta) -> tuple[int, ...]:
    return (0, value.days, value.seconds * USEC_PER_SEC + value.microseconds)


CODECS: dict[str, tuple[Callable[[Any], tuple[int, ...]], Callable[[tuple[int, ...]], Any]]] = {
    "timestamptz": (_encode(datetime, _timestamp_raw), _decode_timestamp("timestamptz")),
    "timestamp": (_encode(datetime, _timestamp_raw), _decode_timestamp("timestamp")),
    "date": (_encode(date, lambda d: ((d - PG_EPOCH.date()).days,)), _decode_date),
    "time": (_encode(time, lambda t: (_time_usec(t),)), _decode_time),
    "timetz": (_encode(time, _timetz_raw), _decode_timetz),
    "interval": (_encode(timedelta, _interval_raw), _decode_interval),
}


async def prepare_connection(conn: asyncpg.Connection[Any]) -> None:
    """Registers vecmirror's date/time codecs on a new connection (a pool's `init`); arrays and
    ranges of these types decode through them too."""
    for type_name, (encoder, decoder) in CODECS.items():
        await conn.set_type_codec(
            type_name, schema="pg_catalog", encoder=encoder, decoder=decoder, format="tuple"
        )


async def connect(url: str, **settings: str) -> asyncpg.Connection[Any]:
    """A single connection set up like the pool's."""
    conn = await asyncpg.connect(url, server_settings={**SESSION_SETTINGS, **settings})
    await prepare_connection(conn)
    return conn
