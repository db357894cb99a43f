"""The Sunday review (runbook: *Sunday Backup System Review*, 10:00 UTC), as data.

Four independent collections, each a JSON-safe dict so the DAG can pass it through
XCom (``backupkit.reports.weekly`` renders them):

* :func:`collect_trends` -- per source and ISO week, the size and duration of the
  backups over the last ``trend_weeks`` weeks, and **anomalies**: a backup whose size or
  duration is at least ``anomaly_factor`` times (or at most 1/factor of) the median of
  the previous ``thresholds.size_window`` backups of its source. Sizes come from the
  local file, else the S3 object, else the log line; durations from the backup logs'
  ``backup completed ... duration=12.3s size=...`` lines (the runbook's
  ``grep "backup completed"``), else ``duration_seconds`` of the database manifest. Beside
  them, the restore-time trend: the last monthly restore tests (duration, MB/s) against the
  source's ``restore.target_duration``; a newest test over it is flagged.
* :func:`failure_pattern` -- which days, which sources, which errors: missing nights
  (no backup where the source's usual cadence wants one), ERROR lines of the backup
  logs, and backups whose last full read failed (the verification state).
* :func:`storage_usage` -- every object version in the bucket (paginated
  ListObjectVersions: noncurrent versions are billed too), by top-level prefix and
  storage class; local disk usage of the backup directories and of their
  filesystems; bytes added per week; a monthly cost estimate from the configured price
  table; and, only when reachable, AWS Cost Explorer's figure beside it.
* :func:`encryption_report` -- the bucket's default encryption present and of the
  configured kind, and every backup object (current versions under the sources'
  prefixes) without server-side encryption, or with another kind, listed.

Nothing here imports Airflow; S3 access goes through a :class:`~backupkit.storage.objectstore.Bucket`,
the backups' history through :mod:`backupkit.history`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from backupkit.catalog import local_backups
from backupkit.config import Config
from backupkit.state import VerificationState
from backupkit.storage.objectstore import Bucket
from backupkit.history import (
    GIB,
    WEEKDAYS,
    _utc,
    anomaly_text,
    backup_points,
    error_signature,
    find_anomalies,
    missing_nights,
    missing_slots,
    read_backup_logs,
    s3_backup_sizes,
    week_label,
    week_labels,
    weekly_series,
)
from backupkit.results import read_jsonl, restore_trend
from backupkit.storage.inspect import bucket_encryption, scan_objects

RESTORE_TREND_RUNS = 6  # the last six monthly restore tests in the weekly report

_AWS_ENDPOINT = re.compile(r"^https://([a-z0-9.-]+\.)?(amazonaws\.com(\.cn)?|api\.aws)(:\d+)?(/|$)")


def collect_trends(config: Config, *, now: datetime, bucket: Bucket | None = None, weeks: int | None = None,
                   factor: float | None = None) -> dict:
    """Per source: weekly size/duration series over ``weeks`` weeks and the anomalies in them."""
    now = _utc(now)
    weeks = weeks or config.reports.trend_weeks
    factor = factor or config.reports.anomaly_factor
    labels = week_labels(now, weeks)
    since = now - timedelta(weeks=weeks)
    # Baselines reach back before the window: read a few extra weeks of logs.
    logged, _, notes = read_backup_logs(config, since - timedelta(weeks=4))
    sources = {}
    tests, test_problems = restore_test_records(config)
    notes += test_problems
    for src in config.sources:
        s3_sizes = None
        if bucket is not None:
            try:
                s3_sizes = s3_backup_sizes(bucket, src)
            except Exception as exc:  # trends still work from the local side; say what is missing
                notes.append(f"{src.name}: cannot list s3://{config.bucket}/{src.s3_prefix}: {exc}")
        points = backup_points(src, s3_sizes=s3_sizes, logged=logged)
        in_window = [p for p in points if p.timestamp >= since]
        sources[src.name] = {
            "kind": src.kind,
            "backups_in_window": len(in_window),
            "weeks": weekly_series(in_window, labels),
            "anomalies": find_anomalies(points, factor=factor, window=src.thresholds.size_window, since=since),
            "missing_duration": sum(1 for p in in_window if p.duration is None),
            "first": points[0].timestamp.isoformat() if points else None,
            "restore_tests": restore_trend(tests, src.name, limit=RESTORE_TREND_RUNS),
            "restore_target_seconds": src.restore_target_seconds,
            "pitr_window": _pitr_window(config, src, now),
        }
    return {"now": now.isoformat(), "since": since.isoformat(), "weeks": labels, "factor": factor,
            "sources": sources, "notes": notes}




def restore_test_records(config: Config) -> tuple[list[dict], list[str]]:
    """The recorded restore tests (:mod:`backupkit.results`), and the lines that could not be read."""
    path = config.state.restore_tests
    if not path.exists():
        return [], []
    try:
        return read_jsonl(path)
    except OSError as exc:
        return [], [f"cannot read {path}: {exc}"]


def _pitr_window(config: Config, src, now: datetime) -> dict | None:
    """The recoverable window the last daily verification found (WAL archives), with its RPO."""
    w = src.kind_impl.recovery_window(config, src)
    if w is None:
        return None
    return {"start": w["start"].isoformat(), "end": w["end"].isoformat(), "timeline": w["timeline"],
            "checked_at": w["checked_at"].isoformat(), "rpo_seconds": max(0.0, (now - w["end"]).total_seconds())}


def failure_pattern(config: Config, *, now: datetime, bucket: Bucket | None = None, weeks: int | None = None,
                    state: VerificationState | None = None) -> dict:
    """Which days, which sources, which errors, over the trend window."""
    now = _utc(now)
    weeks = weeks or config.reports.trend_weeks
    since = now - timedelta(weeks=weeks)
    logged, log_events, notes = read_backup_logs(config, since)
    events: list[dict] = []
    for src in config.sources:
        s3_sizes = None
        if bucket is not None:
            try:
                s3_sizes = s3_backup_sizes(bucket, src)
            except Exception as exc:
                notes.append(f"{src.name}: cannot list S3: {exc}")
        points = backup_points(src, s3_sizes=s3_sizes, logged=logged)
        for day in missing_nights(points, since=since, now=now):
            events.append({"kind": "missing backup", "source": src.name, "day": day.isoformat(),
                           "weekday": WEEKDAYS[day.weekday()], "detail": "no backup that night",
                           "signature": "no backup that night"})
        for slot in missing_slots(points, since=since):
            events.append({"kind": "missing backup", "source": src.name, "day": slot.date().isoformat(),
                           "weekday": WEEKDAYS[slot.weekday()], "detail": f"no backup around {slot:%Y-%m-%d %H:%M}",
                           "signature": "no backup in its usual slot"})
    for ev in log_events:
        if ev.level != "ERROR":
            continue
        when = datetime.fromisoformat(ev.time)
        events.append({"kind": "log error", "source": ev.source or f"log {ev.log}", "day": when.date().isoformat(),
                       "weekday": WEEKDAYS[when.weekday()], "detail": ev.message,
                       "signature": error_signature(ev.message)})
    owned = state is None
    st = state or VerificationState(config.state_dir)
    try:
        for src in config.sources:
            for key, rec in st.records(prefix=f"{src.name}/").items():
                ts = src.pattern.timestamp(key.split("/", 1)[1])
                if rec.ok or ts is None or ts < since:
                    continue
                events.append({"kind": "verification failed", "source": src.name, "day": ts.date().isoformat(),
                               "weekday": WEEKDAYS[ts.weekday()], "detail": f"{key}: {rec.detail}",
                               "signature": error_signature(rec.detail or "verification failed")})
    finally:
        if owned:
            st.close()
    by_weekday = {d: Counter() for d in WEEKDAYS}
    by_source: dict[str, Counter] = defaultdict(Counter)
    sigs: dict[tuple[str, str], dict] = {}
    for e in events:
        by_weekday[e["weekday"]][e["kind"]] += 1
        by_source[e["source"]][e["kind"]] += 1
        s = sigs.setdefault((e["kind"], e["signature"]), {"kind": e["kind"], "signature": e["signature"],
                                                          "count": 0, "sources": set(), "example": e["detail"],
                                                          "last": e["day"]})
        s["count"] += 1
        s["sources"].add(e["source"])
        s["last"] = max(s["last"], e["day"])
    top = sorted(sigs.values(), key=lambda s: (-s["count"], s["kind"], s["signature"]))
    warnings = sum(1 for ev in log_events if ev.level == "WARNING")
    return {
        "since": since.isoformat(), "events": sorted(events, key=lambda e: (e["day"], e["source"], e["kind"])),
        "by_weekday": {d: dict(c) for d, c in by_weekday.items()},
        "by_source": {s: dict(c) for s, c in sorted(by_source.items())},
        "top_errors": [{**s, "sources": sorted(s["sources"])} for s in top[:15]],
        "log_warnings": warnings, "notes": notes,
    }




# -- storage -----------------------------------------------------------------------------------
def _prefix_of(key: str) -> str:
    head, sep, _ = key.partition("/")
    return f"{head}/" if sep else "(top level)"


def iter_object_versions(bucket: Bucket, prefix: str = "", *, page_size: int = 1000) -> Iterator[dict]:
    """Every object version and delete marker (ListObjectVersions, ``page_size`` a page).

    Yields ``{"key", "size", "storage_class", "latest", "last_modified", "delete_marker"}``.
    """
    for v in bucket.versions(prefix, page_size=page_size):
        yield {"key": v.key, "size": v.size, "storage_class": "-" if v.is_marker else v.storage_class,
               "latest": v.is_latest, "last_modified": v.last_modified, "delete_marker": v.is_marker}


def bucket_usage(bucket: Bucket, *, now: datetime, weeks: int, page_size: int = 1000) -> dict:
    """Bytes and objects by prefix and storage class, current and noncurrent; uploads per week."""
    labels = week_labels(now, weeks)
    by_prefix: dict[str, Counter] = defaultdict(Counter)
    by_class: dict[str, Counter] = defaultdict(Counter)
    by_prefix_class: dict[tuple[str, str], Counter] = defaultdict(Counter)
    uploads: Counter = Counter()
    for v in iter_object_versions(bucket, page_size=page_size):
        p = _prefix_of(v["key"])
        if v["delete_marker"]:
            by_prefix[p]["delete_markers"] += 1
            continue
        state = "current" if v["latest"] else "noncurrent"
        by_prefix[p][f"{state}_bytes"] += v["size"]
        by_prefix[p][f"{state}_objects"] += 1
        by_class[v["storage_class"]]["bytes"] += v["size"]
        by_class[v["storage_class"]]["objects"] += 1
        by_prefix_class[(p, v["storage_class"])]["bytes"] += v["size"]
        by_prefix_class[(p, v["storage_class"])]["objects"] += 1
        if v["last_modified"] is not None:
            uploads[week_label(_utc(v["last_modified"]))] += v["size"]
    total = sum(c["bytes"] for c in by_class.values())
    return {
        "bucket": bucket.name, "total_bytes": total,
        "objects": sum(c["objects"] for c in by_class.values()),
        "by_prefix": {p: dict(c) for p, c in sorted(by_prefix.items())},
        "by_class": {k: dict(c) for k, c in sorted(by_class.items())},
        "by_prefix_class": [{"prefix": p, "storage_class": k, **dict(c)}
                            for (p, k), c in sorted(by_prefix_class.items())],
        "uploaded_per_week": {label: uploads.get(label, 0) for label in labels},
    }


def cost_estimate(by_class: dict[str, dict], prices: dict[str, float]) -> dict:
    """USD per month for the stored bytes of each class (GB = 2^30 bytes); unpriced classes listed."""
    rows, total, unpriced = [], 0.0, []
    for cls, c in sorted(by_class.items()):
        price = prices.get(cls)
        if price is None:
            unpriced.append(cls)
            rows.append({"storage_class": cls, "bytes": c["bytes"], "usd_per_gb_month": None, "usd_per_month": None})
            continue
        usd = c["bytes"] / GIB * price
        total += usd
        rows.append({"storage_class": cls, "bytes": c["bytes"], "usd_per_gb_month": price, "usd_per_month": usd})
    return {"rows": rows, "usd_per_month": total, "unpriced": unpriced,
            "note": "storage only: requests, retrieval, transfer and minimum-size/duration charges are not "
                    "estimated"}


def _dir_usage(path: Path) -> tuple[int, int]:
    total = files = 0
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    elif e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
                        files += 1
        except FileNotFoundError:
            continue
    return total, files


def local_usage(config: Config, *, now: datetime, weeks: int) -> list[dict]:
    """Per source directory: bytes and files it holds, its filesystem's size and free space,
    and the bytes of backups taken in each week of the window (what the directory grew by)."""
    labels = week_labels(now, weeks)
    rows = []
    for src in config.sources:
        for path in src.local_dirs:   # a WAL archive's archive_dir too, on a row of its own
            row: dict[str, Any] = {"source": src.name, "path": str(path), "exists": path.is_dir(),
                                   "wal": path != src.local_dir}
            if row["exists"]:
                row["bytes"], row["files"] = _dir_usage(path)
                du = shutil.disk_usage(path)
                row.update(fs_size=du.total, fs_free=du.free, fs_used_fraction=(du.total - du.free) / du.total
                           if du.total else None)
                added: Counter = Counter()
                if path == src.local_dir:
                    for b in local_backups(src):
                        added[week_label(b.timestamp)] += b.size
                else:
                    for f in _dated_files(path):
                        added[week_label(f[0])] += f[1]
                row["added_per_week"] = {label: added.get(label, 0) for label in labels}
            rows.append(row)
    return rows


def _dated_files(path: Path) -> Iterator[tuple[datetime, int]]:
    """(mtime, size) of each file directly in ``path`` (a WAL archive: what it grew by, per week)."""
    with os.scandir(path) as it:
        for e in it:
            if e.is_file(follow_symlinks=False):
                st = e.stat(follow_symlinks=False)
                yield datetime.fromtimestamp(st.st_mtime, timezone.utc), st.st_size


class StorageHistory:
    """One line per report date in ``state_dir/reports/storage_history.jsonl``: the totals of
    each weekly run, so growth is measured (deleted objects included) instead of inferred."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> list[dict]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn line must not stop the report; the next write drops it
            if isinstance(rec, dict) and "date" in rec:
                out.append(rec)
        return sorted(out, key=lambda r: r["date"])

    def record(self, entry: dict) -> list[dict]:
        """Add (or replace, for a re-run of the same date) ``entry``; return the whole history."""
        history = [r for r in self.load() if r["date"] != entry["date"]] + [entry]
        history.sort(key=lambda r: r["date"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in history))
        os.replace(tmp, self.path)
        return history


def storage_usage(config: Config, bucket: Bucket, *, now: datetime, weeks: int | None = None,
                  cost_explorer: Callable[[], dict] | None = None, record_history: bool = True) -> dict:
    """Bucket and local usage, growth and cost (see the module docstring)."""
    now = _utc(now)
    weeks = weeks or config.reports.trend_weeks
    usage = bucket_usage(bucket, now=now, weeks=weeks)
    local = local_usage(config, now=now, weeks=weeks)
    cost = cost_estimate(usage["by_class"], config.reports.prices_usd_per_gb_month)
    ce = cost_explorer() if cost_explorer is not None else {"reachable": False,
                                                            "reason": "disabled (reports.cost_explorer: false)"}
    local_total = sum(r.get("bytes", 0) for r in local)
    history = []
    if record_history:
        history = StorageHistory(config.state.storage_history).record(
            {"date": now.date().isoformat(), "s3_bytes": usage["total_bytes"], "s3_objects": usage["objects"],
             "local_bytes": local_total})
    growth = [{"date": b["date"], "s3_bytes": b["s3_bytes"], "local_bytes": b["local_bytes"],
               "s3_change": b["s3_bytes"] - a["s3_bytes"], "local_change": b["local_bytes"] - a["local_bytes"]}
              for a, b in zip(history, history[1:])][-weeks:]
    return {"bucket": usage, "local": local, "local_total_bytes": local_total, "cost": cost,
            "cost_explorer": ce, "growth": growth, "history_points": len(history)}


def cost_explorer_figure(client: Any, *, today: date) -> dict:
    """Last full month's Amazon S3 cost from AWS Cost Explorer, or why it is not available.

    Cost Explorer exists only on AWS: a client whose endpoint is anything else (the
    sandbox's loopback S3, MinIO) is "not reachable" without a request. Any error
    (no network, AccessDenied, Cost Explorer not enabled) is reported, never raised: the
    estimate from the price table stands on its own.
    """
    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", "") or ""
    if not _AWS_ENDPOINT.match(endpoint):
        return {"reachable": False, "reason": f"endpoint {endpoint or '(none)'} is not AWS; Cost Explorer "
                                              f"exists only on AWS"}
    end = today.replace(day=1)
    start = (end - timedelta(days=1)).replace(day=1)
    try:
        resp = client.get_cost_and_usage(
            TimePeriod={"Start": start.isoformat(), "End": end.isoformat()}, Granularity="MONTHLY",
            Metrics=["UnblendedCost"],
            Filter={"Dimensions": {"Key": "SERVICE", "Values": ["Amazon Simple Storage Service"]}})
    except Exception as exc:
        return {"reachable": False, "reason": f"{type(exc).__name__}: {exc}"}
    return {"reachable": True, **sum_cost(resp), "period": f"{start.isoformat()} to {end.isoformat()} (exclusive)",
            "note": "all Amazon S3 usage of the account, not only this bucket (tag the bucket with a cost "
                    "allocation tag to split it)"}


def sum_cost(resp: dict) -> dict:
    """Total ``UnblendedCost`` of a GetCostAndUsage response (amounts are decimal strings)."""
    total, unit = 0.0, None
    for period in resp.get("ResultsByTime", ()):
        metric = (period.get("Total") or {}).get("UnblendedCost") or {}
        if "Amount" in metric:
            total += float(metric["Amount"])
            unit = metric.get("Unit", unit)
    return {"amount": total, "unit": unit or "USD", "periods": len(resp.get("ResultsByTime", ()))}




def _first(items: Iterable[str], n: int = 5, total: int | None = None) -> str:
    items = list(items)
    shown = items[:n]
    more = (len(items) if total is None else total) - len(shown)
    return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")


def encryption_report(config: Config, bucket: Bucket, *, scan: bool = True) -> dict:
    """Bucket default encryption and the backup objects' server-side encryption."""
    expected = config.reports.sse_algorithm
    default = bucket_encryption(bucket, expected)
    prefixes = sorted({p for s in config.sources for p in s.s3_prefixes})
    objects = scan_objects(bucket, prefixes, expected) if scan else None
    problems = []
    if not default["ok"]:
        problems.append(default["detail"])
    if objects is not None:
        if objects["unencrypted"]:
            problems.append(f"{objects['counts']['unencrypted']} backup object(s) without server-side encryption: "
                            + _first(objects["unencrypted"], total=objects["counts"]["unencrypted"]))
        if objects["wrong_kind"]:
            problems.append(f"{objects['counts']['wrong_kind']} backup object(s) encrypted with another kind than "
                            f"{expected}: " + _first((f"{k} ({alg})" for k, alg in objects["wrong_kind"]),
                                                     total=objects["counts"]["wrong_kind"]))
        if objects["errors"]:
            problems.append(f"{objects['counts']['errors']} object(s) could not be inspected")
    return {"bucket": config.bucket, "expected": expected, "default": default, "objects": objects,
            "scanned": scan, "problems": problems}




# -- the report ------------------------------------------------------------------------------------
def findings(sections: dict[str, dict | None]) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a weekly run: problems fail it, warnings are flagged only.

    Problems: a section that could not be collected, and encryption (a missing or
    different default encryption, backup objects without it). Warnings: anomalies,
    failures seen in the window, and Cost Explorer being unreachable is neither.
    """
    problems, warnings = [], []
    for name, data in sections.items():
        if data is None:
            problems.append(f"section {name} could not be collected (its task failed; see its log)")
    enc = sections.get("encryption")
    if enc:
        problems.extend(enc["problems"])
    trends = sections.get("trends")
    if trends:
        for src, t in trends["sources"].items():
            for a in t["anomalies"]:
                warnings.append(f"{src}: {a['metric']} {a['kind']} on {a['name']}: {anomaly_text(a)}")
            newest = (t.get("restore_tests") or [None])[-1]
            target = t.get("restore_target_seconds")
            if newest and target and newest["duration_seconds"] is not None and newest["duration_seconds"] > target:
                warnings.append(f"{src}: the restore test of {newest['at'][:10]} took {newest['duration_seconds']:.0f} s, "
                                f"over its target {target:.0f} s (restore.target_duration)")
    pattern = sections.get("failures")
    if pattern:
        kinds = Counter(e["kind"] for e in pattern["events"])
        for kind, n in sorted(kinds.items()):
            warnings.append(f"{n} {kind} event(s) since {pattern['since'][:10]}")
    return problems, warnings
