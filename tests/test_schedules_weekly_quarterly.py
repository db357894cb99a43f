"""The weekly and quarterly schedules, as the scheduler computes them, against dates computed
independently with the calendar module for the next three years.

The scheduler's view: the DAG's timetable converted to the core timetable the scheduler uses,
asked for one run after another (``next_dagrun_info`` with catch-up, as a backfill walks it).
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta, timezone

import pytest

import airflow_env
from _clock import SESSION_NOW, add_years
from _schedule_helpers import run_dates
from airflow.dag_processing.dagbag import DagBag

START = SESSION_NOW
END = add_years(START, 3)


@pytest.fixture(scope="module")
def dags():
    airflow_env.configure()
    bag = DagBag(dag_folder=str(airflow_env.DAGS / "backup_weekly_maintenance.py"))
    bag.collect_dags(dag_folder=str(airflow_env.DAGS / "backup_quarterly_audit.py"))
    assert bag.import_errors == {}
    return bag.dags


def scheduled(dag, start: datetime, end: datetime) -> list[datetime]:
    """Run times the scheduler would create in [start, end), as plain UTC datetimes."""
    return [datetime.fromtimestamp(d.timestamp(), timezone.utc) for d in run_dates(dag.timetable, start, end)
            if d < end]


def expected_sundays(start: datetime, end: datetime) -> list[datetime]:
    out = []
    for year in range(start.year, end.year + 1):
        for month in range(1, 13):
            for week in calendar.monthcalendar(year, month):
                if week[calendar.SUNDAY]:
                    out.append(datetime(year, month, week[calendar.SUNDAY], 10, tzinfo=timezone.utc))
    return [d for d in out if start <= d < end]


def expected_quarter_fridays(start: datetime, end: datetime) -> list[datetime]:
    out = []
    for year in range(start.year, end.year + 1):
        for month in (3, 6, 9, 12):
            last_friday = max(week[calendar.FRIDAY] for week in calendar.monthcalendar(year, month))
            out.append(datetime(year, month, last_friday, 9, tzinfo=timezone.utc))
    return [d for d in out if start <= d < end]


def test_weekly_runs_every_sunday_at_10_utc(dags):
    dag = dags["backup_weekly_maintenance"]
    assert (dag.timetable.expression, str(dag.timetable.timezone)) == ("0 10 * * 0", "UTC")
    runs = scheduled(dag, START, END)
    assert runs == expected_sundays(START, END)
    assert 155 <= len(runs) <= 158
    assert all(b - a == timedelta(weeks=1) for a, b in zip(runs, runs[1:]))


def test_audit_runs_on_the_last_friday_of_each_quarter_at_09_utc(dags):
    dag = dags["backup_quarterly_audit"]
    assert (dag.timetable.expression, str(dag.timetable.timezone)) == ("0 9 * 3,6,9,12 L5", "UTC")
    runs = scheduled(dag, START, END)
    assert runs == expected_quarter_fridays(START, END)
    assert len(runs) in (11, 12, 13)
    for run in runs:  # a Friday, in the quarter's last month, and the last one: a week later is next month
        assert run.weekday() == calendar.FRIDAY and run.month in (3, 6, 9, 12)
        assert (run + timedelta(days=7)).month != run.month


def test_known_quarter_ends(dags):
    """Fixed dates, independent of today (2027-12-31 is the month's last day and a Friday)."""
    start, end = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2028, 1, 1, tzinfo=timezone.utc)
    known = ["2026-03-27", "2026-06-26", "2026-09-25", "2026-12-25",
             "2027-03-26", "2027-06-25", "2027-09-24", "2027-12-31"]
    assert [d.date().isoformat() for d in expected_quarter_fridays(start, end)] == known
    assert [d.date().isoformat() for d in scheduled(dags["backup_quarterly_audit"], start, end)] == known


def test_neither_dag_catches_up_or_overlaps(dags):
    for dag_id in ("backup_weekly_maintenance", "backup_quarterly_audit"):
        dag = dags[dag_id]
        assert dag.catchup is False and dag.max_active_runs == 1
