"""The monthly restore test runs on the first Monday of every month at 09:00 UTC, and only then.

The run dates come from the DAG's own timetable as the scheduler uses it (after a
serialization round trip); the expected dates from the calendar module. The classic cron
mistake is shown to differ.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timezone

import pytest

import airflow_env
from _schedule_helpers import run_dates, same_schedule_after_serialization, window
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import CronTriggerTimetable

DAG_ID = "backup_monthly_restore_test"
YEARS = 3


@pytest.fixture(scope="module")
def dag():
    airflow_env.configure()
    bag = DagBag(dag_folder=str(airflow_env.DAGS))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


def first_mondays(start: datetime, end: datetime) -> list[datetime]:
    """09:00 UTC of each month's first Monday, from the calendar (not from cron)."""
    out = []
    year, month = start.year, start.month
    while True:
        day = next(d for d in range(1, 8) if calendar.weekday(year, month, d) == calendar.MONDAY)
        when = datetime(year, month, day, 9, 0, tzinfo=timezone.utc)
        if when > end:
            return out
        if when >= start:
            out.append(when)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def test_run_dates_for_the_next_three_years_are_the_first_mondays(dag):
    start, end = window(YEARS)
    got = run_dates(dag.timetable, start, end)
    expected = first_mondays(start, end)
    assert len(expected) in (35, 36, 37)
    assert [d.isoformat() for d in got] == [d.isoformat() for d in expected]
    assert all(d.weekday() == 0 and d.day <= 7 and (d.hour, d.minute) == (9, 0) for d in got)


def test_the_scheduler_sees_the_same_schedule_after_serialization(dag):
    scheduler_dag = same_schedule_after_serialization(dag, YEARS)
    assert scheduler_dag.timetable.summary == "0 9 * * 1#1"
    assert dag.catchup is False and dag.max_active_runs == 1


def test_the_classic_cron_mistake_would_run_on_other_days():
    """``0 9 1-7 * 1``: day-of-month and weekday together mean EITHER, not both."""
    start, end = window(YEARS)
    wrong = run_dates(CronTriggerTimetable("0 9 1-7 * 1", timezone="UTC"), start, end)
    right = first_mondays(start, end)
    assert set(right) < set(wrong)  # every first Monday, but also...
    extra = sorted(set(wrong) - set(right))
    assert any(d.weekday() != 0 for d in extra)  # ...days 1-7 that are not Mondays
    assert any(d.day > 7 for d in extra)  # ...and every other Monday of the month
    months = {(d.year, d.month) for d in wrong}
    assert min(sum(1 for d in wrong if (d.year, d.month) == m) for m in months if
               datetime(*m, 1, tzinfo=timezone.utc) >= start and datetime(*m, 28, tzinfo=timezone.utc) < end) >= 8
