"""Schedule rules: what ``spec.schedule`` may say, what cron it becomes, how often and when it fires.

Cron is read the way the Kubernetes CronJob controller reads it (robfig/cron's standard parser):
five fields, ``*``/``?``, ranges, steps, lists, month and weekday names, weekdays 0-6; the day of
month and the day of week are ANDed when either is a bare ``*``/``?`` and ORed otherwise. No
dependency: the rules are small and must match the controller, not another cron dialect.
"""

from __future__ import annotations

import bisect
import calendar
import itertools
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: Macros the CronJob controller understands, and the cron each one means.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_SHORTHAND = re.compile(r"^every\s*([0-9]+)\s*([mhd])$", re.IGNORECASE)
_MONTH_NAMES = {name.upper(): number for number, name in enumerate(calendar.month_abbr) if name}
_DAY_NAMES = {name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
#: The Gregorian calendar repeats, weekdays included, every 400 years (146097 days, 20871 weeks).
_CYCLE_START = date(2000, 1, 1)
_CYCLE_DAYS = 146097


class InvalidSchedule(ValueError):
    """``spec.schedule`` cannot be turned into a cron schedule that fires; the message says why."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, _MONTH_NAMES),
    _Field("day of week", 0, 6, _DAY_NAMES),
)


@dataclass(frozen=True)
class CronFields:
    """A parsed 5-field cron expression."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]  # 0 = Sunday
    day_of_month_star: bool
    day_of_week_star: bool

    def fires_on(self, day: date) -> bool:
        """Whether any minute of ``day`` (a calendar date in the schedule's zone) fires."""
        if day.month not in self.months:
            return False
        by_month_day = day.day in self.days_of_month
        by_week_day = (day.weekday() + 1) % 7 in self.days_of_week
        if self.day_of_month_star or self.day_of_week_star:
            return by_month_day and by_week_day
        return by_month_day or by_week_day

    def minutes_of_day(self) -> list[int]:
        """The minutes after midnight at which a firing day fires, ascending."""
        return sorted(hour * 60 + minute for hour in self.hours for minute in self.minutes)


def effective_cron(text: str) -> str:
    """The five-field cron ``text`` runs on: :func:`normalize_schedule`, with a macro spelled out.

    ``status.schedule`` shows it, so ``every 2h`` or ``@daily`` reads as the times it fires.
    """
    normalized = normalize_schedule(text)
    return MACROS.get(normalized, normalized)


def normalize_schedule(text: str) -> str:
    """The cron schedule ``text`` means, for the CronJob: a 5-field expression or a macro.

    Cron expressions and ``@hourly``-style macros pass through (whitespace collapsed, macros in
    lower case). The shorthand ``every Nm`` / ``every Nh`` / ``every Nd`` becomes cron only where the
    interval is exact: minutes dividing an hour, hours dividing a day, one day or one week (``*/7``
    minutes would restart at every full hour, so ``every 7m`` is refused, not approximated).

    Raises :class:`InvalidSchedule` naming the problem: a field out of range, an unknown macro, a
    shorthand with no exact cron form, or an expression that never fires (``0 0 30 2 *``).
    """
    compact = " ".join(text.split())
    if not compact:
        raise InvalidSchedule("the schedule is empty")
    if compact.startswith("@"):
        macro = compact.lower()
        if macro not in MACROS:
            raise InvalidSchedule(f"unknown macro {compact!r}; use one of {', '.join(MACROS)}")
        return macro
    shorthand = _SHORTHAND.match(compact)
    if shorthand:
        return _shorthand_cron(int(shorthand.group(1)), shorthand.group(2).lower(), compact)
    parse_cron(compact)
    return compact


def parse_cron(cron: str) -> CronFields:
    """Parse a 5-field cron expression or a macro; raise :class:`InvalidSchedule` if it is not one."""
    expression = MACROS.get(cron.strip().lower(), cron)
    parts = expression.split()
    if len(parts) != 5:
        raise InvalidSchedule(
            f"{cron!r} has {len(parts)} fields; cron needs 5 (minute hour day-of-month month day-of-week)"
        )
    values: list[frozenset[int]] = []
    stars: list[bool] = []
    for part, spec in zip(parts, _FIELDS, strict=True):
        numbers, star = _parse_field(part, spec)
        values.append(numbers)
        stars.append(star)
    minutes, hours, days_of_month, months, days_of_week = values
    fields = CronFields(
        minutes, hours, days_of_month, months, days_of_week, day_of_month_star=stars[2], day_of_week_star=stars[4]
    )
    if (fields.day_of_month_star or fields.day_of_week_star) and not any(
        day <= _longest_month(month) for month in fields.months for day in fields.days_of_month
    ):
        raise InvalidSchedule(f"{cron!r} never fires: no month has that day")
    return fields


def schedule_period(cron: str) -> timedelta:
    """The longest gap between two consecutive fires of ``cron`` (a cron expression or macro).

    This is the schedule's period for the Stale rule: ``0 9 * * 1-5`` fires daily on weekdays, but
    its period is the weekend's 72 hours. Gaps are measured in wall-clock time of the schedule's
    zone (a daylight-saving shift changes one gap by an hour twice a year; that is ignored).
    """
    return _period(parse_cron(cron))


def next_fire(cron: str, after: datetime, tz: str | None) -> datetime:
    """The first fire of ``cron`` strictly after ``after``, in UTC.

    ``tz`` is the IANA zone the schedule runs in (``None``: UTC, the controller's usual zone); a
    naive ``after`` is taken as UTC. Local times that do not exist (skipped by a daylight-saving
    change) do not fire; a repeated local time fires once, at its first occurrence.

    Raises :class:`InvalidSchedule` for a bad expression and :class:`ValueError` for an unknown zone.
    """
    fields = parse_cron(cron)
    zone = _zone(tz)
    moment = after if after.tzinfo is not None else after.replace(tzinfo=UTC)
    start = moment.astimezone(zone).date()
    minutes = fields.minutes_of_day()
    local_now = moment.astimezone(zone)
    # On the first day, start just before the current local minute (a DST fold may repeat it).
    first = max(0, bisect.bisect_left(minutes, local_now.hour * 60 + local_now.minute - 60))
    for offset in range(_CYCLE_DAYS + 1):
        day = start + timedelta(days=offset)
        if not fields.fires_on(day):
            continue
        for minute_of_day in minutes[first if offset == 0 else 0 :]:
            local = datetime(day.year, day.month, day.day, minute_of_day // 60, minute_of_day % 60, tzinfo=zone)
            instant = local.astimezone(UTC)
            if instant.astimezone(zone).replace(tzinfo=None) != local.replace(tzinfo=None):
                continue  # this local time does not exist on that day
            if instant > moment:
                return instant
    raise InvalidSchedule(f"{cron!r} never fires")  # unreachable for a schedule parse_cron accepted


def _shorthand_cron(count: int, unit: str, text: str = "") -> str:
    text = text or f"every {count}{unit}"
    if count == 0:
        raise InvalidSchedule(f"{text!r} is not an interval")
    if unit == "m":
        if count % 60 == 0:
            return _shorthand_cron(count // 60, "h", text)
        if 60 % count:
            raise InvalidSchedule(
                f"{text!r} has no exact cron form: {count} does not divide 60, so the interval would restart at "
                "every full hour; use minutes that divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30) "
                "or a cron expression"
            )
        return "* * * * *" if count == 1 else f"*/{count} * * * *"
    if unit == "h":
        if count % 24 == 0:
            return _shorthand_cron(count // 24, "d", text)
        if 24 % count:
            raise InvalidSchedule(
                f"{text!r} has no exact cron form: {count} does not divide 24, so the interval would restart at "
                f"every midnight; use hours that divide 24 (1, 2, 3, 4, 6, 8, 12) or a cron expression"
            )
        return "0 * * * *" if count == 1 else f"0 */{count} * * *"
    if count == 1:
        return "0 0 * * *"
    if count == 7:
        return "0 0 * * 0"
    raise InvalidSchedule(
        f"{text!r} has no exact cron form: months have 28 to 31 days, so only one day and one week map "
        f"onto cron; use a cron expression"
    )


def _parse_field(text: str, spec: _Field) -> tuple[frozenset[int], bool]:
    """The values of one cron field, and whether it counts as ``*`` for the day-of-month/week rule."""
    values: set[int] = set()
    star = False
    for term in text.split(","):
        range_text, _, step_text = term.partition("/")
        if "/" in term and not step_text.isdigit():
            raise InvalidSchedule(f"{spec.name} {text!r}: the step after '/' must be a whole number")
        step = int(step_text) if step_text else 1
        if step == 0:
            raise InvalidSchedule(f"{spec.name} {text!r}: a step of 0 never advances")
        if range_text in ("*", "?"):
            low, high = spec.low, spec.high
            star = star or step == 1
        else:
            low_text, dash, high_text = range_text.partition("-")
            low = _value(low_text, spec, text)
            high = _value(high_text, spec, text) if dash else (spec.high if step_text else low)
            if low > high:
                raise InvalidSchedule(f"{spec.name} {text!r}: the range {range_text!r} runs backwards")
        values.update(range(low, high + 1, step))
    return frozenset(values), star


def _value(text: str, spec: _Field, field_text: str) -> int:
    if spec.names and text.upper() in spec.names:
        return spec.names[text.upper()]
    if not text.isdigit():
        raise InvalidSchedule(f"{spec.name} {field_text!r}: {text!r} is not a number from {spec.low} to {spec.high}")
    number = int(text)
    if not spec.low <= number <= spec.high:
        raise InvalidSchedule(f"{spec.name} {field_text!r}: {number} is outside {spec.low}-{spec.high}")
    return number


def _longest_month(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def _zone(tz: str | None) -> ZoneInfo:
    if tz is None:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown time zone {tz!r}") from error


@lru_cache(maxsize=256)
def _period(fields: CronFields) -> timedelta:
    minutes = fields.minutes_of_day()
    within_day = max((later - earlier for earlier, later in itertools.pairwise(minutes)), default=0)
    every_day = len(fields.months) == 12 and (
        (fields.day_of_month_star and fields.day_of_week_star)
        or (not fields.day_of_month_star and not fields.day_of_week_star and len(fields.days_of_week) == 7)
    )
    if every_day:
        days_apart = 1
    else:
        first = _CYCLE_START.toordinal()
        firing = [
            ordinal for ordinal in range(first, first + _CYCLE_DAYS) if fields.fires_on(date.fromordinal(ordinal))
        ]
        firing.append(firing[0] + _CYCLE_DAYS)  # the cycle repeats: wrap around to its first firing day
        days_apart = max(later - earlier for earlier, later in itertools.pairwise(firing))
    across_days = days_apart * 1440 - minutes[-1] + minutes[0]
    return timedelta(minutes=max(within_day, across_days))
