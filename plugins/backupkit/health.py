"""Backup health: per source, what the jobs recorded, judged ok / warning / failed with one reason.

The health page (``backup_airflow.health``) answers "are our backups good right now?" from
what already exists, never by re-checking anything: the catalog (local files and the S3
listing), the verification memory, the daily run's facts file (:func:`record_daily_run`),
the restore-test and drill histories, the metrics textfiles and the backup logs. Nothing
here writes, except :func:`record_daily_run`, which the daily DAG calls.

:func:`collect_source` gathers one source's facts (the expensive part, cached by
:mod:`backupkit.health_cache`); :func:`judge` adds what depends on the clock (ages) and the
verdict. The rules are written down in ``docs/health.md``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from backupkit.catalog import Catalog, s3_key_for
from backupkit.config import Config, Source
from backupkit.history import anomaly_text, backup_points, find_anomalies
from backupkit.model import Backup, source_of
from backupkit.results import finite_number, restore_trend
from backupkit.retention.plan import Candidate, plan_retention
from backupkit.state import FileIdentity, Record
from backupkit.storage.localfs import atomic_write
from backupkit.storage.statedir import StateDir

FACTS_FORMAT = 1
CHART_NIGHTS = 60
NEXT_DELETIONS = 5  # how many of the next deletions the page names
RESTORE_TREND_RUNS = 12  # restore-test runs in the restore-time trend (a year of monthly tests)
MAX_PROBLEMS = 20  # problems of one source kept in the facts file
MAX_FACTS_BYTES = 8 << 20  # a facts file or history larger than this is refused, not read
DAILY_STALE_HOURS = 26.0  # the daily run is due every 24 h; later than this it "has not run"
REREAD_SLACK_DAYS = 2  # bit-rot coverage may lag the rolling re-read's cycle by this much
STATUSES = ("ok", "warning", "failed")
_EVIDENCE = re.compile(r"\(evidence: ([a-z0-9-]+);")


class FactsError(ValueError):
    """A facts file that cannot be used; the message names it and says why."""


# -- the daily run's facts ---------------------------------------------------------------
def copy_evidence(detail: str) -> str | None:
    """The evidence an ``s3_checksum`` result names (``sha256``, ``composite-sha256``, ...), if any.

    :mod:`backupkit.checks.s3copy` ends every comparison's detail with ``(evidence: METHOD; ...)``.
    """
    m = _EVIDENCE.search(detail or "")
    return m.group(1) if m else None


def daily_facts(results: Iterable[Mapping[str, Any]], source_names: Sequence[str]) -> dict[str, dict]:
    """Per source: ok, its problems, and per backup the S3 copy verdict with its evidence."""
    out = {name: {"map_index": i, "ok": True, "problems": [], "s3": {}} for i, name in enumerate(source_names)}
    for r in results:
        src = out.get(source_of(str(r.get("artifact", ""))))
        if src is None:
            continue
        ok = bool(r.get("ok"))
        if not ok:
            src["ok"] = False
            if len(src["problems"]) < MAX_PROBLEMS:
                src["problems"].append({k: str(r.get(k, ""))[:500] for k in ("artifact", "check", "detail")})
        if r.get("check") == "s3_checksum" and "/" in str(r.get("artifact", "")):
            name = str(r["artifact"]).split("/", 1)[1]
            src["s3"][name] = {"ok": ok, "method": copy_evidence(str(r.get("detail", ""))) or "none"}
        elif r.get("check") in ("s3_present", "s3_size") and not ok and "/" in str(r.get("artifact", "")):
            src["s3"][str(r["artifact"]).split("/", 1)[1]] = {"ok": False, "method": r["check"]}
    return out


def record_daily_run(state: StateDir, results: Iterable[Mapping[str, Any]], *, source_names: Sequence[str],
                     dag_id: str, run_id: str, now: datetime) -> Path:
    """Write what one daily run found (``facts/daily.json``, atomically) for the health page.

    Map index *i* of the run's mapped checks is source *i*, so the page can link each fact to
    the task log that produced it.
    """
    doc = {"format": FACTS_FORMAT, "dag_id": dag_id, "run_id": run_id, "time": _iso(now),
           "sources": daily_facts(results, source_names)}
    path = state.facts_file("daily")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(doc, sort_keys=True))
    return path


def read_daily_run(path: Path) -> dict | None:
    """The last daily run's facts, None when never written; :class:`FactsError` when unusable."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size > MAX_FACTS_BYTES:
        raise FactsError(f"{path}: {size} bytes, more than the {MAX_FACTS_BYTES} a facts file may have")
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise FactsError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FACTS_FORMAT:
        raise FactsError(f"{path}: not a format-{FACTS_FORMAT} facts file")
    for key in ("dag_id", "run_id", "time"):
        if not isinstance(doc.get(key), str):
            raise FactsError(f"{path}: {key} must be a string")
    when = _parse_time(doc["time"])
    if when is None:
        raise FactsError(f"{path}: time is not an ISO date-time with a UTC offset: {doc['time'][:40]!r}")
    sources = doc.get("sources")
    if not isinstance(sources, dict):
        raise FactsError(f"{path}: sources must be an object")
    clean = {}
    for name, s in sources.items():
        if not isinstance(s, dict) or not isinstance(s.get("ok"), bool) or not isinstance(s.get("map_index"), int):
            raise FactsError(f"{path}: sources.{str(name)[:60]} must have ok (true/false) and map_index (integer)")
        problems, s3 = s.get("problems", []), s.get("s3", {})
        if not isinstance(problems, list) or not isinstance(s3, dict):
            raise FactsError(f"{path}: sources.{str(name)[:60]}: problems must be a list and s3 an object")
        problems = [p for p in problems if isinstance(p, dict)][:MAX_PROBLEMS]
        s3 = {str(k): v for k, v in s3.items()
              if isinstance(v, dict) and isinstance(v.get("ok"), bool) and isinstance(v.get("method"), str)}
        clean[str(name)] = {"ok": s["ok"], "map_index": s["map_index"],
                            "problems": [{k: str(p.get(k, ""))[:500] for k in ("artifact", "check", "detail")}
                                         for p in problems], "s3": s3}
    return {"dag_id": doc["dag_id"], "run_id": doc["run_id"], "time": when, "sources": clean}


# -- shared inputs ---------------------------------------------------------------------------
@dataclass
class Shared:
    """What every source's facts draw on, read once per refresh."""

    records: dict[str, Record] = field(default_factory=dict)
    daily: dict | None = None
    restore_tests: list[dict] = field(default_factory=list)
    drills: list[dict] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> source label -> value
    logged: dict = field(default_factory=dict)  # (source, file) -> backup-log facts
    notes: list[str] = field(default_factory=list)  # what could not be read, said on the page


def _iso(dt: datetime) -> str:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: pass an aware (UTC) time")
    return dt.astimezone(timezone.utc).isoformat()


def _parse_time(value: Any) -> datetime | None:
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt.astimezone(timezone.utc) if dt.tzinfo is not None else None


def _hours(td: timedelta) -> float:
    return round(td.total_seconds() / 3600, 2)


# -- one source ----------------------------------------------------------------------------------
def _verification(source: Source, backups: Sequence[Backup], records: Mapping[str, Record],
                  identities: Mapping[str, FileIdentity]) -> dict:
    """The newest backup's last full read, failed and changed backups, and bit-rot coverage."""
    stored = [b for b in backups if b.local is not None]
    recs = {b.name: records.get(f"{source.name}/{b.name}") for b in stored}
    failed = [n for n, r in recs.items() if r is not None and not r.ok]
    never = [n for n, r in recs.items() if r is None]
    changed = [n for n, r in recs.items() if r is not None and n in identities and not r.unchanged(identities[n])]
    read = [(r.verified_at, n) for n, r in recs.items() if r is not None]
    newest = stored[-1] if stored else None
    rec = recs.get(newest.name) if newest else None
    passed = [b for b in stored if (r := recs[b.name]) is not None and r.ok and b.name not in changed]
    return {
        "newest": None if rec is None else {"name": rec.key.split("/", 1)[1], "verdict": rec.verdict,
                                            "verified_at": _iso(rec.verified_at), "detail": rec.detail[:500],
                                            "changed_since": newest.name in changed},
        "newest_verified": None if not passed else {"name": passed[-1].name, "timestamp": _iso(passed[-1].timestamp),
                                                    "key": s3_key_for(source, passed[-1].name)},
        "stored": len(stored), "failed": failed[-5:], "failed_count": len(failed),
        "never_read": len(never), "changed": changed[-5:], "changed_count": len(changed),
        "oldest_full_read": None if not read else {"at": _iso(min(read)[0]), "name": min(read)[1]},
        "failed_details": {n: recs[n].detail[:300] for n in failed[-3:]},
    }


def _s3(source: Source, backups: Sequence[Backup], listed: bool, error: str | None, daily: dict | None) -> dict:
    """The S3 side as listed now, and the copy evidence the last daily run recorded."""
    newest = backups[-1] if backups else None
    run = (daily or {}).get("sources", {}).get(source.name) or {}
    checked = run.get("s3") or {}
    methods = Counter(v["method"] for v in checked.values() if v["ok"])
    bad = sorted(n for n, v in checked.items() if not v["ok"])
    return {
        "listed": listed, "error": error,
        "copies": sum(1 for b in backups if b.s3 is not None),
        "local_only": sum(1 for b in backups if b.s3 is None and b.local is not None),
        "s3_only": sum(1 for b in backups if b.s3 is not None and b.local is None),
        "newest_has_copy": None if not listed or newest is None else newest.s3 is not None,
        "newest_check": checked.get(newest.name) if newest else None,
        "checked": len(checked), "evidence": dict(methods.most_common()), "mismatched": bad[-5:],
        "mismatched_count": len(bad),
    }


def _retention(config: Config, source: Source, backups: Sequence[Backup], records: Mapping[str, Record],
               metrics: Mapping[str, Mapping[str, float]], now: datetime, complete: bool) -> dict:
    """A dry plan (plan_retention over the catalog and the verification memory): nothing is written."""
    from backupkit.commands.retention import held_reason
    from backupkit.metric_names import RETENTION_HELD, RETENTION_LAST_RUN, RETENTION_REFUSED
    from backupkit.retention.policy import describe_policy

    candidates = []
    for b in backups:
        rec = records.get(b.id)
        candidates.append(Candidate(b.name, b.timestamp, rec.verdict if rec else "unverified", b.total_bytes,
                                    held_reason(config, source, b.name)))
    plan = plan_retention(candidates, source.retention, now=now, listing_complete=complete)
    s = plan.summary
    last = metrics.get(RETENTION_LAST_RUN, {}).get(source.name)
    return {"policy": describe_policy(source.retention), "total": s.total, "keep": s.keep, "held": s.held,
            "delete": s.delete, "bytes_to_free": s.bytes_to_free, "refused": plan.refused,
            "violations": list(plan.violations),
            "next_deletions": [d.name for d in plan.planned_deletions()[:NEXT_DELETIONS]],
            "last_sweep": None if last is None else {
                "at": _iso(datetime.fromtimestamp(last, timezone.utc)),
                "held": metrics.get(RETENTION_HELD, {}).get(source.name),
                "refused": bool(metrics.get(RETENTION_REFUSED, {}).get(source.name))}}


def _restore_test(config: Config, source: Source, tests: Sequence[dict]) -> dict | None:
    """The newest restore test of the source (its newest backup's, when the run restored several)."""
    mine = [t for t in tests if t.get("source") == source.name]
    if not mine:
        return None
    newest_time = max(t["_time"] for t in mine)
    run = [t for t in mine if t["_time"] == newest_time]
    t = next((x for x in run if x.get("role") == "newest"), run[0])
    target = source.restore_target_seconds or config.drill.rto_target_minutes * 60
    rows = t.get("verified_rows", t.get("files"))
    return {"at": _iso(t["_time"]), "run_id": t.get("run_id"), "ok": t["ok"], "backup": t.get("backup"),
            "duration_seconds": finite_number(t.get("duration_seconds")), "rows": finite_number(rows),
            "mb_per_s": finite_number(t.get("mb_per_s")),
            "target_seconds": float(target), "detail": str(t.get("detail") or "")[:500],
            "all_ok": all(x["ok"] for x in run), "tests_in_run": len(run),
            "trend": restore_trend(mine, source.name, limit=RESTORE_TREND_RUNS)}


def _pitr(source: Source, metrics: Mapping[str, Mapping[str, float]]) -> dict | None:
    """The recoverable window, when the source's kind exports one (WAL archives: the PITR gauges)."""
    from backupkit.metric_names import PITR_WINDOW_END, PITR_WINDOW_START

    start = metrics.get(PITR_WINDOW_START, {}).get(source.name)
    end = metrics.get(PITR_WINDOW_END, {}).get(source.name)
    if start is None or end is None:
        return None
    return {"start": _iso(datetime.fromtimestamp(start, timezone.utc)),
            "end": _iso(datetime.fromtimestamp(end, timezone.utc))}


def _nights(config: Config, source: Source, remote_sizes: Mapping[str, int], logged: dict, now: datetime) -> dict:
    """Sizes and ages over the last CHART_NIGHTS nights, with the weekly report's anomalies."""
    points = backup_points(source, s3_sizes=dict(remote_sizes), logged=logged)
    since = now - timedelta(days=CHART_NIGHTS)
    anomalies = find_anomalies(points, factor=config.reports.anomaly_factor, window=source.thresholds.size_window,
                               since=since)
    flagged: dict[str, list[str]] = {}
    for a in anomalies:
        flagged.setdefault(a["name"], []).append(f"{a['metric']} {a['kind']}: {anomaly_text(a)}")
    nights = []
    for prev, p in zip([None, *points], points):
        if p.timestamp < since:
            continue
        nights.append({"name": p.name, "timestamp": _iso(p.timestamp), "size": p.size,
                       "duration": p.duration, "where": p.where,
                       # how old the newest backup had become when this one replaced it
                       "age_reached_hours": _hours(p.timestamp - prev.timestamp) if prev else None,
                       "anomalies": flagged.get(p.name, [])})
    return {"nights": nights, "anomalies": len(anomalies), "since": _iso(since)}


def collect_source(config: Config, source: Source, *, local: dict, remote: dict | None, s3_error: str | None,
                   shared: Shared, now: datetime) -> dict:
    """Everything the page shows about one source that does not depend on the clock's minute."""
    catalog = Catalog(source)
    backups = sorted(catalog.merged(local, remote or {}), key=lambda b: (b.timestamp, b.name))
    identities = {}
    for b in backups:
        if b.local is not None and not b.local.is_dir:
            try:
                identities[b.name] = FileIdentity.of(b.local.path)
            except OSError:
                continue
    newest = backups[-1] if backups else None
    run = (shared.daily or {}).get("sources", {}).get(source.name)
    remote_sizes = {n: s.size for n, s in (remote or {}).items() if s.size >= 0}
    return {
        "name": source.name, "kind": source.kind, "label": source.kind_impl.label,
        "restores_into": source.kind_impl.restores_into, "max_age_hours": source.thresholds.max_age_hours,
        "count": len(backups),
        "newest": None if newest is None else {"name": newest.name, "timestamp": _iso(newest.timestamp),
                                               "size": newest.size, "local": newest.local is not None,
                                               "s3": newest.s3 is not None, "key": s3_key_for(source, newest.name)},
        "verification": _verification(source, backups, shared.records, identities),
        "s3": _s3(source, backups, remote is not None, s3_error, shared.daily),
        "retention": _retention(config, source, backups, shared.records, shared.metrics, now,
                                complete=remote is not None),
        "restore_test": _restore_test(config, source, shared.restore_tests),
        "pitr": _pitr(source, shared.metrics),
        "charts": _nights(config, source, remote_sizes, shared.logged, now),
        "daily_run": None if shared.daily is None or run is None else {
            "dag_id": shared.daily["dag_id"], "run_id": shared.daily["run_id"], "at": _iso(shared.daily["time"]),
            "map_index": run["map_index"], "ok": run["ok"], "problems": run["problems"]},
    }


# -- the verdict ---------------------------------------------------------------------------------
def _problems(config: Config, f: dict, now: datetime) -> list[tuple[str, str]]:
    """(level, text) of everything wrong with one source, most important first (docs/health.md)."""
    out: list[tuple[str, str]] = []
    fail = lambda text: out.append(("failed", text))  # noqa: E731
    warn = lambda text: out.append(("warning", text))  # noqa: E731
    newest, v, s3, run = f["newest"], f["verification"], f["s3"], f["daily_run"]
    if newest is None:
        fail("no backup at all, locally or in S3")
        return out
    age = _hours(now - datetime.fromisoformat(newest["timestamp"]))
    if age > f["max_age_hours"]:
        fail(f"newest backup {newest['name']} is {age:.1f} h old (max_age_hours {f['max_age_hours']:g})")
    nv = v["newest"]
    if nv is not None and nv["verdict"] == "failed" and nv["name"] == newest["name"]:
        fail(f"newest backup {newest['name']} failed verification on {nv['verified_at'][:10]}: {nv['detail']}")
    if run is not None and not run["ok"]:
        p = run["problems"][0] if run["problems"] else {"artifact": f["name"], "check": "?", "detail": "see the log"}
        fail(f"daily run of {run['at'][:10]}: {p['artifact']}: {p['check']}: {p['detail']}")
    others = [n for n in v["failed"] if n != newest["name"]]
    if v["failed_count"] and others:
        fail(f"{v['failed_count']} stored backup(s) failed their last full read, e.g. {others[-1]}: "
             f"{v['failed_details'].get(others[-1], '')}")
    rt = f["restore_test"]
    if rt is not None and not rt["all_ok"]:
        fail(f"restore test of {rt['at'][:10]} failed: {rt['detail'] or 'see its run'}")
    if v["changed_count"]:
        warn(f"{v['changed_count']} backup(s) changed since their last full read (e.g. {v['changed'][-1]}): "
             f"re-read by the next daily run")
    if nv is None or nv["name"] != newest["name"]:
        if newest["local"]:
            warn(f"newest backup {newest['name']} has not been verified yet")
    if run is None:
        warn("no daily verification run has recorded its facts yet")
    elif _hours(now - datetime.fromisoformat(run["at"])) > DAILY_STALE_HOURS:
        warn(f"the last daily verification ran {run['at'][:16].replace('T', ' ')} UTC, more than "
             f"{DAILY_STALE_HOURS:g} h ago")
    if s3["error"]:
        warn(f"S3 listing failed: {s3['error']}")
    elif s3["newest_has_copy"] is False:
        warn(f"newest backup {newest['name']} has no copy in S3 yet")
    cycle = math.ceil(1 / config.reread_fraction) if config.reread_fraction > 0 else None
    oldest = v["oldest_full_read"]
    if cycle and oldest and _hours(now - datetime.fromisoformat(oldest["at"])) > (cycle + REREAD_SLACK_DAYS) * 24:
        warn(f"bit-rot coverage behind: {oldest['name']} was last read in full on {oldest['at'][:10]} "
             f"(every backup is due every {cycle} days)")
    if f["retention"]["refused"]:
        warn(f"the next retention sweep would be refused: {f['retention']['violations'][0]}")
    if rt is None:
        warn("no restore test recorded")
    else:
        rt_age = (now - datetime.fromisoformat(rt["at"])).total_seconds() / 86400
        if rt_age > config.reports.restore_test_max_age_days:
            warn(f"last restore test {rt['at'][:10]} is {rt_age:.0f} days old "
                 f"(limit {config.reports.restore_test_max_age_days:g})")
        if rt["duration_seconds"] is not None and rt["duration_seconds"] > rt["target_seconds"]:
            warn(f"last restore test took {rt['duration_seconds']:.0f} s, over the target {rt['target_seconds']:.0f} s")
    nights = f["charts"]["nights"]
    if nights and nights[-1]["name"] == newest["name"] and nights[-1]["anomalies"]:
        warn(f"newest backup {newest['name']}: {nights[-1]['anomalies'][0]}")
    return out


def _one_line(text: str, limit: int = 400) -> str:
    """Details come from tools' output (pg_restore, tar): one line, bounded, for a table cell and a log."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def judge(config: Config, facts: dict, now: datetime) -> dict:
    """``facts`` plus the newest backup's age, the status (ok / warning / failed) and its one-line reason."""
    problems = [(lv, _one_line(t)) for lv, t in _problems(config, facts, now)]
    newest = facts["newest"]
    age = None if newest is None else _hours(now - datetime.fromisoformat(newest["timestamp"]))
    status = "failed" if any(lv == "failed" for lv, _ in problems) else ("warning" if problems else "ok")
    if problems:
        reason = next(t for lv, t in problems if lv == status)
    else:
        check = facts["s3"]["newest_check"] or {}
        read = facts["verification"]["newest"]
        reason = (f"newest backup {newest['name']} is {age:.1f} h old"
                  + (f", verified {read['verified_at'][:10]}" if read else "")
                  + (f", S3 copy matches ({check['method']})" if check.get("ok") else ""))
    return {**facts, "age_hours": age, "status": status, "reason": reason,
            "problems": [{"level": lv, "text": t} for lv, t in problems]}


def drill_summary(drills: Sequence[dict], config: Config, now: datetime) -> dict | None:
    """The latest DR drill: when, pass/fail, each scenario's RTO and RPO against its target."""
    if not drills:
        return None
    latest = max(drills, key=lambda d: d["_time"])
    scenarios = [{k: s.get(k) for k in ("name", "ok", "rto_seconds", "rto_target_seconds", "rpo_seconds",
                                        "rpo_target_seconds")}
                 for s in latest.get("scenarios") or [] if isinstance(s, dict)]
    age_days = (now - latest["_time"]).total_seconds() / 86400
    return {"at": _iso(latest["_time"]), "run_id": latest.get("run_id"), "ok": latest["ok"],
            "scenarios": scenarios, "overdue": age_days > config.reports.dr_drill_max_age_days}


__all__ = ["FactsError", "Shared", "STATUSES", "collect_source", "copy_evidence", "daily_facts", "drill_summary",
           "judge", "read_daily_run", "record_daily_run"]
