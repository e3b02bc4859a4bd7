"""Schedule rules: shorthands map onto cron only when exact; periods; next fires across time zones."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from sessionpipe_operator.schedule import InvalidSchedule, next_fire, normalize_schedule, schedule_period

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def fires(cron: str, start: datetime, count: int, tz: str | None = None) -> list[datetime]:
    """The next ``count`` fires after ``start``, by repeated :func:`next_fire`."""
    moments = []
    moment = start
    for _ in range(count):
        moment = next_fire(cron, moment, tz)
        moments.append(moment)
    return moments


@pytest.mark.parametrize(
    ("shorthand", "interval"),
    [
        ("every 1m", timedelta(minutes=1)),
        ("every 15m", timedelta(minutes=15)),
        ("every 30m", timedelta(minutes=30)),
        ("every 60m", HOUR),
        ("every 120m", 2 * HOUR),
        ("every 1h", HOUR),
        ("every 2h", 2 * HOUR),
        ("every 8h", 8 * HOUR),
        ("every 24h", DAY),
        ("every 1d", DAY),
        ("every 7d", 7 * DAY),
        ("every   3h", 3 * HOUR),
        ("every 5m ", timedelta(minutes=5)),
    ],
)
def test_an_exact_shorthand_becomes_cron_that_fires_at_exactly_that_interval(
    shorthand: str, interval: timedelta
) -> None:
    cron = normalize_schedule(shorthand)
    assert len(cron.split()) == 5
    # Fires over hours, a day or two weeks are all exactly one interval apart...
    horizon = 14 * DAY if interval >= DAY else (DAY if interval >= HOUR else 3 * HOUR)
    start = datetime(2026, 2, 27, 22, 59, tzinfo=UTC)  # across a month end
    moments = fires(cron, start, int(horizon / interval) + 1)
    gaps = {later - earlier for earlier, later in itertools.pairwise(moments)}
    assert gaps == {interval}
    # ...and so is the period the Stale rule uses.
    assert schedule_period(cron) == interval


@pytest.mark.parametrize(
    ("shorthand", "number"),
    [
        ("every 7m", "7"),
        ("every 45m", "45"),
        ("every 90m", "90"),
        ("every 5h", "5"),
        ("every 36h", "36"),
        ("every 2d", "2"),
        ("every 30d", "30"),
        ("every 0m", "0"),
    ],
)
def test_a_shorthand_without_an_exact_cron_form_is_refused_with_its_number(shorthand: str, number: str) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        normalize_schedule(shorthand)
    assert number in str(caught.value)
    assert shorthand in str(caught.value)


@pytest.mark.parametrize(
    ("macro", "period"),
    [
        ("@hourly", HOUR),
        ("@daily", DAY),
        ("@midnight", DAY),
        ("@weekly", 7 * DAY),
        ("@monthly", 31 * DAY),
        ("@yearly", 366 * DAY),  # a leap year is the longest gap
        ("@annually", 366 * DAY),
        ("@DAILY", DAY),
    ],
)
def test_macros_pass_through_and_have_their_period(macro: str, period: timedelta) -> None:
    assert normalize_schedule(macro) == macro.lower()
    assert schedule_period(macro) == period


def test_cron_passes_through_with_whitespace_collapsed() -> None:
    assert normalize_schedule("  */10   9-17 * * MON-FRI ") == "*/10 9-17 * * MON-FRI"
    assert normalize_schedule("0 0 1 1 *") == "0 0 1 1 *"
    assert normalize_schedule("0 12 ? * SUN") == "0 12 ? * SUN"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("61 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 0 * *", "day of month"),
        ("* * * 13 *", "month"),
        ("* * * * 7", "day of week"),  # the CronJob controller's weekdays are 0-6
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "backwards"),
        ("* * *", "5"),
        ("0 0 * * * *", "5"),
        ("@every 1h", "macro"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("1,x * * * *", "minute"),
        ("", "empty"),
    ],
)
def test_malformed_cron_is_refused_saying_where(text: str, words: str) -> None:
    with pytest.raises(InvalidSchedule, match=words):
        normalize_schedule(text)


@pytest.mark.parametrize(
    ("cron", "period"),
    [
        ("0 9 * * 1-5", 3 * DAY),  # Friday 09:00 to Monday 09:00
        ("*/20 9-17 * * *", timedelta(hours=15, minutes=20)),  # 17:40 to 09:00
        ("0 0 */10 * *", 10 * DAY),  # the 1st, 11th, 21st, 31st: 21st to 31st (or the 1st of a 30-day month)
        ("0 0 1,15 * 1", 7 * DAY),  # day of month OR Monday: Mondays are never more than a week apart
        ("0 0 * * 1", 7 * DAY),
        ("30 3 * 2 *", date(2027, 2, 1) - date(2026, 2, 28)),  # February only: 28 Feb to 1 Feb next year
        ("0 0 29 2 *", date(2104, 2, 29) - date(2096, 2, 29)),  # 2100 is no leap year
        ("0,30 * * * *", timedelta(minutes=30)),
        ("5 4 * * SUN", 7 * DAY),
    ],
)
def test_period_is_the_longest_gap_between_fires(cron: str, period: timedelta) -> None:
    assert schedule_period(cron) == period


def test_period_agrees_with_the_fires_over_a_year() -> None:
    for cron in ("0 9 * * 1-5", "0 0 */10 * *", "15 6,18 1-7 * *", "0 0 1,15 * 1"):
        moments = fires(cron, datetime(2026, 1, 1, tzinfo=UTC), 400)
        longest = max(later - earlier for earlier, later in itertools.pairwise(moments))
        assert longest <= schedule_period(cron), cron


def test_next_fire_follows_the_time_zone_across_daylight_saving() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC once summer time starts (29 March 2026).
    moments = fires("0 9 * * *", datetime(2026, 3, 27, 12, 0, tzinfo=UTC), 3, "Europe/Berlin")
    assert [m.astimezone(berlin).hour for m in moments] == [9, 9, 9]
    assert [m.strftime("%m-%d %H:%M") for m in moments] == ["03-28 08:00", "03-29 07:00", "03-30 07:00"]
    assert all(m.tzinfo is not None and m.utcoffset() == timedelta(0) for m in moments)


def test_a_local_time_that_does_not_exist_is_skipped_and_a_repeated_one_fires_once() -> None:
    # 02:30 does not exist in Berlin on 29 March 2026 (clocks jump from 02:00 to 03:00).
    spring = fires("30 2 * * *", datetime(2026, 3, 28, 12, 0, tzinfo=UTC), 2, "Europe/Berlin")
    assert [m.isoformat() for m in spring] == ["2026-03-30T00:30:00+00:00", "2026-03-31T00:30:00+00:00"]
    # 02:30 happens twice on 25 October 2026 (clocks go back from 03:00 to 02:00): one fire, the first.
    autumn = fires("30 2 * * *", datetime(2026, 10, 24, 12, 0, tzinfo=UTC), 2, "Europe/Berlin")
    assert [m.isoformat() for m in autumn] == ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"]


def test_next_fire_is_strictly_after_and_defaults_to_utc() -> None:
    on_the_hour = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    assert next_fire("0 * * * *", on_the_hour, None) == datetime(2026, 5, 1, 11, 0, tzinfo=UTC)
    assert next_fire("0 * * * *", on_the_hour.replace(tzinfo=None), None) == datetime(2026, 5, 1, 11, 0, tzinfo=UTC)
    assert next_fire("0 * * * *", on_the_hour + timedelta(seconds=1), "UTC") == datetime(2026, 5, 1, 11, 0, tzinfo=UTC)
    new_year = next_fire("@yearly", on_the_hour, "America/New_York")
    assert new_year == datetime(2027, 1, 1, 5, 0, tzinfo=UTC)  # midnight in New York (UTC-5)


def test_next_fire_of_a_rare_schedule_and_an_unknown_zone() -> None:
    assert next_fire("0 0 29 2 *", datetime(2097, 1, 1, tzinfo=UTC), None) == datetime(2104, 2, 29, tzinfo=UTC)
    with pytest.raises(ValueError, match="Mars/Olympus_Mons"):
        next_fire("@daily", datetime(2026, 1, 1, tzinfo=UTC), "Mars/Olympus_Mons")
