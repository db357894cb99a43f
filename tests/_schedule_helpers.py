"""Schedules as the scheduler computes them, for the schedule tests: the run dates a DAG's
timetable yields (after the same conversion to a core timetable the scheduler does), a window
of whole years starting today, and the serialization round trip the scheduler sees.
"""

from __future__ import annotations

from datetime import datetime

from _clock import SESSION_NOW, add_years
from airflow.serialization.encoders import coerce_to_core_timetable
from airflow.timetables.base import DataInterval, TimeRestriction

MAX_RUNS = 2000  # more runs than any tested window holds: the timetable never stops


def run_dates(timetable, start: datetime, end: datetime) -> list[datetime]:
    """Every scheduled run between start and end, asking the timetable as the scheduler does."""
    tt = coerce_to_core_timetable(timetable)
    restriction = TimeRestriction(earliest=start, latest=end, catchup=True)
    dates, last = [], None
    while True:
        info = tt.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        if info is None:
            return dates
        dates.append(info.run_after)
        last = DataInterval(info.data_interval.start, info.data_interval.end)
        assert len(dates) < MAX_RUNS, "runaway schedule"


def window(years: int) -> tuple[datetime, datetime]:
    """From today's midnight UTC to the same day ``years`` later."""
    start = SESSION_NOW.replace(hour=0, minute=0, second=0, microsecond=0)
    return start, add_years(start, years)


def same_schedule_after_serialization(dag, years: int):
    """The DAG as the scheduler loads it (serialized and back); asserts it runs on the same dates."""
    from airflow.serialization.serialized_objects import DagSerialization

    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    start, end = window(years)
    assert run_dates(scheduler_dag.timetable, start, end) == run_dates(dag.timetable, start, end)
    return scheduler_dag


__all__ = ["run_dates", "same_schedule_after_serialization", "window"]
