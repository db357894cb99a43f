"""The result files of restore tests and DR drills: appended by their jobs, read by the audit and the
health page.

The files (JSON lines in ``state_dir/history/``; the
monthly restore-test DAG and the DR drill DAG append to them; a missing file fails the
audit's recoverability control with "no restore test recorded" / "no DR drill recorded"):

``restore_tests.jsonl`` (written with :func:`record_restore_tests`), one line per backup restored
in a test run::

    {"time": "2026-11-02T09:41:07+00:00", "source": "trixtech-db", "ok": true,
     "run_id": "scheduled__2026-11-02T09:00:00+00:00",    # optional: groups a run's lines
     "triggered_by": "alice",                             # optional: who started the run
     "backup": "trixtech_20261102_020000.dump",          # optional
     "duration_seconds": 42.1, "detail": "",              # optional: download + restore
     "restore_seconds": 30.2, "bytes": 52428800, "mb_per_s": 1.245,   # optional
     "target_seconds": 2700}                              # optional: restore.target_duration then

A *restore test* is the set of lines with one ``run_id`` (lines without one are grouped
by calendar month of ``time``); it passed when every line is ``ok``.

``dr_drills.jsonl`` (written with :func:`record_dr_drill`), one line per drill::

    {"time": "...", "ok": true, "run_id": "...", "triggered_by": "alice",   # optional
     "scenarios": [{"name": "database_corruption", "ok": true, "rto_seconds": 310,
                    "rto_target_seconds": 3600, "rpo_seconds": 25200, "rpo_target_seconds": 86400}]}

The latest drill met its targets when ``ok`` is true and every scenario is ``ok`` with
``rto_seconds <= rto_target_seconds`` and ``rpo_seconds <= rpo_target_seconds`` where given.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from backupkit.storage.statedir import StateDir


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: pass an aware (UTC) time")
    return dt.astimezone(timezone.utc)


def _append_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> int:
    """Append JSON lines and fsync: a result is either recorded whole or not at all."""
    lines = "".join(json.dumps(dict(r), sort_keys=True, default=str) + "\n" for r in records)
    if not lines:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(lines)
        fh.flush()
        os.fsync(fh.fileno())
    return lines.count("\n")


def record_restore_tests(state_dir: Path, results: Iterable[Mapping[str, Any]], *, run_id: str,
                         now: datetime, triggered_by: str | None = None) -> int:
    """Append one restore-test run's results (one per restored backup: ``source``, ``ok``, and
    optionally ``backup``, ``role``, ``duration_seconds``, ``restore_seconds``, ``bytes``, ``mb_per_s``,
    ``target_seconds``, ``verified_rows``, ``files``, ``problems``) to ``restore_tests.jsonl`` (the health
    page shows the rows or files checked, and the restore-time trend)."""
    rows = []
    for r in results:
        problems = r.get("problems") or []
        detail = r.get("detail") or "; ".join(f"{p.get('check')}: {p.get('detail')}" for p in problems
                                              if isinstance(p, Mapping))
        rows.append({"time": _utc(now).isoformat(), "run_id": run_id, "source": str(r["source"]),
                     "ok": bool(r.get("ok")), **({"triggered_by": triggered_by} if triggered_by else {}),
                     **{k: r[k] for k in ("backup", "role", "duration_seconds", "restore_seconds", "bytes",
                                          "mb_per_s", "target_seconds", "verified_rows", "files")
                        if r.get(k) is not None},
                     "detail": detail[:1000]})
    return _append_jsonl(StateDir(state_dir).restore_tests, rows)


def record_dr_drill(state_dir: Path, *, ok: bool, scenarios: Sequence[Mapping[str, Any]], run_id: str,
                    now: datetime, detail: str = "", triggered_by: str | None = None) -> int:
    """Append one DR drill (scenarios with ``name``, ``ok``, ``rto_seconds``, ``rto_target_seconds``,
    ``rpo_seconds``, ``rpo_target_seconds``) to ``dr_drills.jsonl``."""
    return _append_jsonl(StateDir(state_dir).dr_drills, [{
        "time": _utc(now).isoformat(), "run_id": run_id, "ok": bool(ok), "detail": detail,
        **({"triggered_by": triggered_by} if triggered_by else {}),
        "scenarios": [dict(s) for s in scenarios]}])


def restore_trend(records: Iterable[Mapping[str, Any]], source: str, *, limit: int = 12) -> list[dict]:
    """The source's restore-test runs, oldest first (at most ``limit``): per run the test of its newest
    backup (``role: newest``, else the first line), with time, verdict, duration, MB/s and target."""
    runs: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        if r.get("source") == source:
            runs.setdefault(str(r.get("run_id") or f"month {r['_time']:%Y-%m}"), []).append(r)
    points = []
    for run_id, lines in runs.items():
        t = next((x for x in lines if x.get("role") == "newest"), lines[0])
        points.append({"at": t["_time"].isoformat(), "run_id": run_id, "ok": all(x["ok"] for x in lines),
                       **{k: finite_number(t.get(k)) for k in ("duration_seconds", "mb_per_s", "target_seconds")}})
    return sorted(points, key=lambda p: p["at"])[-limit:]


def finite_number(v: Any) -> float | None:
    """``v`` as a float when it is a finite number (not a bool), else None: history lines are input."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    """(records, problems) of a JSON-lines file; a bad line is a problem, not a crash."""
    records, problems = [], []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            when = datetime.fromisoformat(str(rec["time"]).replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise ValueError("time has no UTC offset")
            if not isinstance(rec.get("ok"), bool):
                raise ValueError("ok must be true or false")
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{path.name} line {i}: {exc}")
            continue
        rec["_time"] = when.astimezone(timezone.utc)
        records.append(rec)
    return records, problems


__all__ = ["record_restore_tests", "record_dr_drill", "read_jsonl", "restore_trend", "finite_number"]
