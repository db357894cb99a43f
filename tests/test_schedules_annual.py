"""The DR drill runs once a year on the configured date at 09:00 UTC, and only then.

The run dates come from the DAG's own timetable as the scheduler uses it (after a serialization
round trip); the expected dates are built with ``datetime`` from the configured MM-DD, not
from cron. A second configuration file proves the schedule follows ``drill.date``.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

import airflow_env
from _schedule_helpers import run_dates, same_schedule_after_serialization, window
from airflow.dag_processing.dagbag import DagBag
from backupkit.config import DEFAULT_CONFIG, ConfigError, load_config

DAG_ID = "backup_annual_dr_drill"
YEARS = 3


def parse(config_file=None):
    """The drill DAG parsed under ``config_file`` (default: the repository's configuration)."""
    airflow_env.configure()
    with pytest.MonkeyPatch.context() as mp:
        if config_file is None:
            mp.delenv("BACKUPKIT_CONFIG", raising=False)
        else:
            mp.setenv("BACKUPKIT_CONFIG", str(config_file))
        bag = DagBag(dag_folder=str(airflow_env.DAGS / f"{DAG_ID}.py"))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


def yearly(month: int, day: int, start: datetime, end: datetime) -> list[datetime]:
    """09:00 UTC of month/day in every year of the window, from the calendar."""
    out = []
    for year in range(start.year, end.year + 1):
        when = datetime(year, month, day, 9, 0, tzinfo=timezone.utc)
        if start <= when <= end:
            out.append(when)
    return out


@pytest.fixture(scope="module")
def dag():
    return parse()


def test_run_dates_for_the_next_three_years_are_the_configured_day(dag):
    month, day = load_config(DEFAULT_CONFIG).drill.month_day
    start, end = window(YEARS)
    got = run_dates(dag.timetable, start, end)
    assert len(got) == YEARS or len(got) == YEARS + 1  # the window may hold the day of its last year too
    assert [d.isoformat() for d in got] == [d.isoformat() for d in yearly(month, day, start, end)]
    assert (month, day) == (11, 15)  # the documented default (include/config/backups.yaml has no drill block)


def test_the_scheduler_sees_the_same_schedule_after_serialization(dag):
    scheduler_dag = same_schedule_after_serialization(dag, YEARS)
    assert scheduler_dag.timetable.summary == "0 9 15 11 *"
    assert dag.catchup is False and dag.max_active_runs == 1


@pytest.mark.parametrize("mmdd", ["03-31", "01-01", "12-31"])
def test_the_schedule_follows_the_configured_date(tmp_path, mmdd):
    text = DEFAULT_CONFIG.read_text() + f'\ndrill:\n  date: "{mmdd}"\n'
    cfg = tmp_path / "backups.yaml"
    cfg.write_text(text)
    dag = parse(cfg)
    month, day = (int(x) for x in mmdd.split("-"))
    start, end = window(YEARS)
    got = run_dates(dag.timetable, start, end)
    assert got == yearly(month, day, start, end) and len(got) >= YEARS
    assert all((d.month, d.day, d.hour, d.minute) == (month, day, 9, 0) for d in got)


def test_a_date_not_every_year_has_is_refused(tmp_path):
    cfg = tmp_path / "backups.yaml"
    cfg.write_text(DEFAULT_CONFIG.read_text() + '\ndrill:\n  date: "02-29"\n')
    with pytest.raises(ConfigError, match="drill.date: expected MM-DD of a day every year has"):
        load_config(cfg)
