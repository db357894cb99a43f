"""Writes the golden retention cases: ``retention_input.json`` (timestamps and policies) and,
with ``--oracle`` (an executable outside this repository that reads ``{Policy, Times}`` as JSON
and prints what restic's ``ApplyPolicy`` keeps), ``retention_expected.json`` (what restic keeps
and why). The test compares our engine to both.

Timestamps are written as restic stores them: RFC 3339 with the offset the host's zone had at
that instant; the oracle runs with ``TZ`` set to the policy's zone (a host in that zone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

HERE = Path(__file__).resolve().parent
UTC = timezone.utc


def stamps(zone: str, start: datetime, step: timedelta, count: int, skip: set[int] = frozenset(),
           extra: tuple[datetime, ...] = ()) -> list[str]:
    tz = UTC if zone == "UTC" else ZoneInfo(zone)
    out = [start + i * step for i in range(count) if i not in skip] + list(extra)
    return sorted({t.astimezone(tz).isoformat() for t in out})


def cases() -> list[dict]:
    u = lambda *a: datetime(*a, tzinfo=UTC)  # noqa: E731
    nightly = stamps("UTC", u(2023, 1, 1, 2), timedelta(days=1), 500,
                     skip={3, 4, 40, 41, 42, 43, 44, 45, 46, 200, 201, 202, 350, 499},
                     extra=(u(2023, 5, 2, 14), u(2024, 2, 29, 23, 59), u(2024, 3, 1, 0, 1)))
    intraday = stamps("UTC", u(2024, 5, 1, 0, 17), timedelta(minutes=97), 300, skip={5, 6, 7, 100})
    berlin = stamps("Europe/Berlin", u(2024, 3, 20, 0, 30), timedelta(hours=5), 200)
    berlin_fall = stamps("Europe/Berlin", u(2024, 10, 20, 0, 10), timedelta(minutes=47), 400)
    ny = stamps("America/New_York", u(2024, 2, 25, 7), timedelta(hours=11), 150)
    iso = stamps("UTC", u(2020, 11, 1, 3), timedelta(hours=19), 200)
    auckland = stamps("Pacific/Auckland", u(2024, 3, 25, 13), timedelta(hours=7), 120)
    few = stamps("UTC", u(2024, 1, 1, 2), timedelta(days=3), 5)
    month_end = stamps("UTC", u(2024, 2, 25, 10), timedelta(hours=12), 74)
    # Dense backups where a keep_within cut-off crosses a DST change or lands in a gap or fold.
    berlin_spring = stamps("Europe/Berlin", u(2024, 3, 15, 7, 30), timedelta(minutes=10), 16,
                           extra=(u(2024, 4, 15, 8),))
    berlin_gap = stamps("Europe/Berlin", u(2024, 3, 31, 0, 5), timedelta(minutes=10), 14,
                        extra=(u(2024, 4, 28, 0, 30),))
    berlin_fold = stamps("Europe/Berlin", u(2024, 10, 26, 23, 55), timedelta(minutes=10), 20,
                         extra=(u(2024, 11, 27, 1, 30),))
    ny_fall = stamps("America/New_York", u(2024, 10, 20, 13, 30), timedelta(minutes=10), 14,
                     extra=(u(2024, 11, 20, 15),))
    ny_fold = stamps("America/New_York", u(2024, 11, 3, 4, 55), timedelta(minutes=10), 16,
                     extra=(u(2024, 12, 3, 6, 30),))
    return [
        {"id": "within-berlin-spring-cutoff", "zone": "Europe/Berlin", "times": berlin_spring,
         "policy": {"keep_within": "1m"}},
        {"id": "within-berlin-cutoff-in-the-gap", "zone": "Europe/Berlin", "times": berlin_gap,
         "policy": {"keep_within": "28d"}},
        {"id": "within-berlin-cutoff-in-the-fold", "zone": "Europe/Berlin", "times": berlin_fold,
         "policy": {"keep_within": "1m"}},
        {"id": "within-new-york-fall-cutoff", "zone": "America/New_York", "times": ny_fall,
         "policy": {"keep_within": "1m"}},
        {"id": "within-new-york-cutoff-in-the-fold", "zone": "America/New_York", "times": ny_fold,
         "policy": {"keep_within": "1m"}},
        {"id": "gfs-nightly-with-gaps", "zone": "UTC", "times": nightly,
         "policy": {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6, "keep_yearly": 2}},
        {"id": "last-and-hourly-intraday", "zone": "UTC", "times": intraday,
         "policy": {"keep_last": 5, "keep_hourly": 30, "keep_daily": 4}},
        {"id": "berlin-spring-forward-hourly-daily-within", "zone": "Europe/Berlin", "times": berlin,
         "policy": {"keep_hourly": 12, "keep_daily": 10, "keep_within": "1m"}},
        {"id": "berlin-fall-back-hourly", "zone": "Europe/Berlin", "times": berlin_fall,
         "policy": {"keep_hourly": 200, "keep_within": "5d3h"}},
        {"id": "new-york-spring-within-1m", "zone": "America/New_York", "times": ny,
         "policy": {"keep_within": "1m", "keep_weekly": 3}},
        {"id": "new-york-within-10d", "zone": "America/New_York", "times": ny,
         "policy": {"keep_within": "10d", "keep_daily": 2}},
        {"id": "iso-week-53", "zone": "UTC", "times": iso,
         "policy": {"keep_weekly": 12, "keep_yearly": 3, "keep_monthly": 2}},
        {"id": "auckland-autumn", "zone": "Pacific/Auckland", "times": auckland,
         "policy": {"keep_daily": 14, "keep_within": "2d12h", "keep_monthly": 3}},
        {"id": "oldest-clause", "zone": "UTC", "times": few,
         "policy": {"keep_daily": 30, "keep_weekly": 10, "keep_last": 9}},
        {"id": "within-month-overflow", "zone": "UTC", "times": month_end,
         "policy": {"keep_within": "1m"}},
    ]


def oracle_policy(policy: dict) -> dict:
    import re

    out = {"Last": policy.get("keep_last", 0), "Hourly": policy.get("keep_hourly", 0),
           "Daily": policy.get("keep_daily", 0), "Weekly": policy.get("keep_weekly", 0),
           "Monthly": policy.get("keep_monthly", 0), "Yearly": policy.get("keep_yearly", 0)}
    y, m, d, h = (int(g or 0) for g in re.match(r"(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?$",
                                                   policy.get("keep_within") or "").groups())
    out["Within"] = {"Years": y, "Months": m, "Days": d, "Hours": h}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--oracle", help="the built restic policy oracle; without it only the input is written")
    args = p.parse_args()
    data = cases()
    (HERE / "retention_input.json").write_text(json.dumps(data, indent=1) + "\n")
    if not args.oracle:
        return
    expected = {}
    for case in data:
        proc = subprocess.run([args.oracle], input=json.dumps({"Policy": oracle_policy(case["policy"]),
                                                                "Times": case["times"]}),
                              capture_output=True, text=True, check=True,
                              env={**os.environ, "TZ": case["zone"]})
        expected[case["id"]] = dict(sorted(json.loads(proc.stdout).items()))
    (HERE / "retention_expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
