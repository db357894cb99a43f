"""The Sunday review (runbook: *Sunday Backup System Review*, 10:00 UTC), as data.

Four independent collections, each a JSON-safe dict so the DAG can pass it through
XCom, and :func:`weekly_doc` that turns them into the report:

* :func:`collect_trends` -- per source and ISO week, the size and duration of the
  backups over the last ``trend_weeks`` weeks, and **anomalies**: a backup whose size or
  duration is at least ``anomaly_factor`` times (or at most 1/factor of) the median of
  the previous ``thresholds.size_window`` backups of its source. Sizes come from the
  local file, else the S3 object, else the log line; durations from the backup logs'
  ``backup completed ... duration=12.3s size=...`` lines (the runbook's
  ``grep "backup completed"``), else ``duration_seconds`` of the database manifest.
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

Nothing here imports Airflow; S3 access goes through a :class:`~backupkit.storage.objectstore.Bucket`.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import statistics
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from backupkit.catalog import Catalog, local_backups
from backupkit.storage.localfs import MANIFEST_SUFFIX
from backupkit.storage.objectstore import Bucket, error_code, is_not_found
from backupkit.checks.logs import ERROR_RE, WARNING_RE
from backupkit.config import Config, Source
from backupkit.reports.render import Doc, bar_chart, human_bytes, human_seconds, line_chart
from backupkit.state import VerificationState

GIB = 1024 ** 3  # AWS bills storage per GB-month with GB = 2^30 bytes
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MIN_BASELINE = 3  # fewer earlier backups than this: no anomaly judgement (not enough history)
MAX_LISTED = 50  # objects listed by name in the report (the count is always complete)
MAX_KEPT = 1000  # object keys kept per finding in the scan result
HEAD_WORKERS = 8
# "2026-01-31 02:00:01 INFO message" (a level word, or "[ERROR]", "ERROR:", "- ERROR -" is optional).
_LOG_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})\S*\s+"
                       r"(?:[-\[]?\s*(DEBUG|INFO|NOTICE|WARN(?:ING)?|ERROR|CRITICAL|FATAL)\]?:?\s*-?\s*)?(.*)$")
_KV = re.compile(r"(\w+)=(\"[^\"]*\"|\S+)")
_AWS_ENDPOINT = re.compile(r"^https://([a-z0-9.-]+\.)?(amazonaws\.com(\.cn)?|api\.aws)(:\d+)?(/|$)")


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: pass an aware (UTC) time")
    return dt.astimezone(timezone.utc)


def week_label(when: datetime | date) -> str:
    y, w, _ = when.isocalendar()
    return f"{y}-W{w:02d}"


def week_labels(now: datetime, weeks: int) -> list[str]:
    """The ``weeks`` ISO weeks ending with the week of ``now``, oldest first."""
    return [week_label(now - timedelta(weeks=i)) for i in reversed(range(weeks))]


# -- backup logs ----------------------------------------------------------------------------
def log_files(path: Path) -> list[Path]:
    """The log and its logrotate siblings (``NAME.1``, ``NAME.2.gz``, ...), oldest first."""
    rotated = []
    if path.parent.is_dir():
        rx = re.compile(re.escape(path.name) + r"\.(\d+)(\.gz)?$")
        for p in path.parent.iterdir():
            m = rx.match(p.name)
            if m:
                rotated.append((int(m.group(1)), p))
    files = [p for _, p in sorted(rotated, reverse=True)]
    if path.exists():
        files.append(path)
    return files


def _lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        yield from fh


def _kv(message: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in _KV.findall(message)}


def _seconds(text: str | None) -> float | None:
    if not text:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|min|h)?", text)
    if not m:
        return None
    value = float(m.group(1))
    return value * {"ms": 0.001, "m": 60, "min": 60, "h": 3600}.get(m.group(2) or "s", 1)


@dataclass(frozen=True)
class LogEvent:
    time: str  # ISO, UTC
    log: str
    level: str  # ERROR | WARNING
    source: str | None
    message: str


def read_backup_logs(config: Config, since: datetime) -> tuple[dict[tuple[str, str], dict], list[LogEvent], list[str]]:
    """From the backup logs since ``since``: completed backups, ERROR/WARNING events, and notes.

    Completed backups are keyed ``(source, file)`` -> ``{"duration": s, "size": bytes,
    "time": iso}``. Lines are streamed, rotated files included, so a long log costs no memory.
    """
    since = _utc(since)
    floor = since.strftime("%Y-%m-%d %H:%M:%S")
    completed: dict[tuple[str, str], dict] = {}
    events: list[LogEvent] = []
    notes: list[str] = []
    for lg in config.logs:
        files = log_files(lg.path)
        if not files:
            notes.append(f"log {lg.name}: {lg.path} does not exist")
            continue
        for f in files:
            try:
                for line in _lines(f):
                    m = _LOG_LINE.match(line)
                    if not m or f"{m.group(1)} {m.group(2)}" < floor:
                        continue
                    when = f"{m.group(1)}T{m.group(2)}+00:00"
                    word, msg = m.group(3), m.group(4).strip()
                    kv = _kv(msg)
                    if "backup completed" in msg and kv.get("source") and kv.get("file"):
                        size = kv.get("size")
                        completed[(kv["source"], kv["file"])] = {
                            "duration": _seconds(kv.get("duration")), "time": when,
                            "size": int(size) if size and size.isdigit() else None}
                        continue
                    if word in ("ERROR", "CRITICAL", "FATAL") or (word is None and ERROR_RE.search(msg)):
                        level = "ERROR"
                    elif word in ("WARN", "WARNING") or (word is None and WARNING_RE.search(msg)):
                        level = "WARNING"
                    else:
                        level = None
                    if level:
                        events.append(LogEvent(when, lg.name, level, kv.get("source"), msg[:500]))
            except OSError as exc:
                notes.append(f"log {lg.name}: cannot read {f}: {exc}")
    return completed, events, notes


def _manifest_duration(path: Path) -> float | None:
    try:
        data = json.loads(path.with_name(path.name + MANIFEST_SUFFIX).read_text())
    except (OSError, ValueError):
        return None
    value = data.get("duration_seconds") if isinstance(data, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# -- the backups of a source -----------------------------------------------------------------
@dataclass(frozen=True)
class BackupPoint:
    source: str
    name: str
    timestamp: datetime
    size: int | None
    duration: float | None
    where: str  # "local", "s3", "local+s3" or "log"


def s3_backup_sizes(bucket: Bucket, source: Source) -> dict[str, int]:
    """name -> size of the source's backups in the bucket (companions excluded), as the catalog sees them."""
    return {b.name: b.s3.size for b in Catalog(source, bucket).remote()}


def backup_points(source: Source, *, s3_sizes: dict[str, int] | None = None,
                  logged: dict[tuple[str, str], dict] | None = None) -> list[BackupPoint]:
    """Every known backup of ``source`` (local, S3, or only logged), oldest first."""
    s3_sizes = s3_sizes or {}
    logged = logged or {}
    local = {b.name: b for b in local_backups(source)}
    names = set(local) | set(s3_sizes) | {f for (s, f) in logged if s == source.name}
    points = []
    for name in names:
        ts = source.pattern.timestamp(name)
        if ts is None:
            continue
        log = logged.get((source.name, name), {})
        b = local.get(name)
        if b is not None:
            size, where = b.size, "local+s3" if name in s3_sizes else "local"
        elif name in s3_sizes:
            size, where = s3_sizes[name], "s3"
        else:
            size, where = log.get("size"), "log"
        duration = log.get("duration")
        if duration is None and b is not None and source.is_database:
            duration = _manifest_duration(b.path)
        points.append(BackupPoint(source.name, name, ts, size, duration, where))
    points.sort(key=lambda p: (p.timestamp, p.name))
    return points


# -- trends and anomalies --------------------------------------------------------------------
def find_anomalies(points: Sequence[BackupPoint], *, factor: float, window: int, since: datetime) -> list[dict]:
    """Backups since ``since`` whose size or duration is >= factor x or <= 1/factor x the median
    of the ``window`` backups before it (of the same source, measured values only)."""
    if factor <= 1:
        raise ValueError(f"factor must be > 1, got {factor}")
    window = max(window, MIN_BASELINE)
    found = []
    for metric in ("size", "duration"):
        history: list[float] = []
        for p in points:
            value = getattr(p, metric)
            if value is None:
                continue
            if p.timestamp >= since and len(history) >= MIN_BASELINE:
                baseline = statistics.median(history[-window:])
                if baseline > 0:
                    ratio = value / baseline
                    if ratio >= factor or ratio <= 1 / factor:
                        found.append({"source": p.source, "name": p.name, "timestamp": p.timestamp.isoformat(),
                                      "metric": metric, "value": value, "baseline": baseline,
                                      "ratio": round(ratio, 3), "kind": "jump" if ratio >= factor else "drop",
                                      "baseline_count": len(history[-window:])})
            history.append(float(value))
    found.sort(key=lambda a: (a["timestamp"], a["metric"]))
    return found


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def weekly_series(points: Sequence[BackupPoint], labels: Sequence[str]) -> list[dict]:
    """Per ISO week of ``labels``: count, median/min/max size, median/max duration."""
    by_week: dict[str, list[BackupPoint]] = defaultdict(list)
    for p in points:
        by_week[week_label(p.timestamp)].append(p)
    rows = []
    for label in labels:
        ps = by_week.get(label, [])
        sizes = [p.size for p in ps if p.size is not None]
        durations = [p.duration for p in ps if p.duration is not None]
        rows.append({"week": label, "count": len(ps), "size_median": _median(sizes),
                     "size_min": min(sizes) if sizes else None, "size_max": max(sizes) if sizes else None,
                     "duration_median": _median(durations), "duration_max": max(durations) if durations else None})
    return rows


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
        }
    return {"now": now.isoformat(), "since": since.isoformat(), "weeks": labels, "factor": factor,
            "sources": sources, "notes": notes}


# -- failure pattern -------------------------------------------------------------------------
_SIG_SUBS = [
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]?\d{2}:\d{2}(:\d{2})?\S*"), "<time>"),
    (re.compile(r"\b[0-9a-f]{8,}\b", re.I), "<hex>"),
    (re.compile(r"(/[\w.@+-]+)+"), "<path>"),
    (re.compile(r"\d+(\.\d+)?"), "N"),
    (re.compile(r"\s+"), " "),
]


def error_signature(message: str) -> str:
    """The message with times, hashes, paths and numbers replaced, so recurrences group together."""
    sig = message
    for rx, repl in _SIG_SUBS:
        sig = rx.sub(repl, sig)
    return sig.strip()[:160]


def missing_nights(points: Sequence[BackupPoint], *, since: datetime, now: datetime) -> list[date]:
    """Days without a backup for a source backed up (about) daily; [] for other cadences.

    Days before the source's first backup are not missing; today is never missing (its
    backup may still be due). Other cadences are judged by :func:`missing_slots`.
    """
    stamps = sorted({p.timestamp for p in points})
    intervals = [(b - a).total_seconds() / 3600 for a, b in zip(stamps, stamps[1:]) if b > a]
    if len(intervals) < 2 or not 20 <= statistics.median(intervals) <= 28:
        return []
    have = {t.date() for t in stamps}
    day = max(since, stamps[0]).date()
    out = []
    while day < now.date():
        if day not in have:
            out.append(day)
        day += timedelta(days=1)
    return out


def missing_slots(points: Sequence[BackupPoint], *, since: datetime) -> list[datetime]:
    """For non-daily cadences: the expected times inside gaps longer than 1.5 usual intervals."""
    stamps = sorted({p.timestamp for p in points})
    intervals = [b - a for a, b in zip(stamps, stamps[1:]) if b > a]
    if len(intervals) < 2:
        return []
    usual = statistics.median(intervals)
    if timedelta(hours=20) <= usual <= timedelta(hours=28):
        return []
    out = []
    for a, b in zip(stamps, stamps[1:]):
        if b - a > usual * 1.5 and b >= since:
            slot = a + usual
            while slot < b - usual / 2:
                if slot >= since:
                    out.append(slot)
                slot += usual
    return out


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
        row: dict[str, Any] = {"source": src.name, "path": str(src.local_dir), "exists": src.local_dir.is_dir()}
        if row["exists"]:
            row["bytes"], row["files"] = _dir_usage(src.local_dir)
            du = shutil.disk_usage(src.local_dir)
            row.update(fs_size=du.total, fs_free=du.free, fs_used_fraction=(du.total - du.free) / du.total
                       if du.total else None)
            added: Counter = Counter()
            for b in local_backups(src):
                added[week_label(b.timestamp)] += b.size
            row["added_per_week"] = {label: added.get(label, 0) for label in labels}
        rows.append(row)
    return rows


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


# -- encryption ----------------------------------------------------------------------------------
def sse_matches(actual: str | None, expected: str) -> bool:
    """DSSE-KMS is KMS encryption (with two layers), so it satisfies ``aws:kms``."""
    if actual is None:
        return False
    return actual == expected or (expected == "aws:kms" and actual == "aws:kms:dsse")


def bucket_encryption(bucket: Bucket, expected: str) -> dict:
    """The bucket's default encryption rule and whether it is of the ``expected`` kind."""
    resp, err = bucket.setting("encryption")
    if err is not None:
        if err[0] == "ServerSideEncryptionConfigurationNotFoundError":
            return {"ok": False, "algorithm": None, "detail": f"s3://{bucket.name} has no default encryption "
                                                              f"(expected {expected})"}
        raise RuntimeError(f"cannot read the default encryption of s3://{bucket.name}: {err[0]}: {err[1]}")
    rules = (resp.get("ServerSideEncryptionConfiguration") or {}).get("Rules") or []
    default = (rules[0].get("ApplyServerSideEncryptionByDefault") or {}) if rules else {}
    alg = default.get("SSEAlgorithm")
    ok = sse_matches(alg, expected)
    detail = (f"default encryption {alg}" + (f" with key {default['KMSMasterKeyID']}" if default.get("KMSMasterKeyID")
                                             else "") + ("" if ok else f", expected {expected}"))
    return {"ok": ok, "algorithm": alg, "kms_key": default.get("KMSMasterKeyID"),
            "bucket_key": bool(rules and rules[0].get("BucketKeyEnabled")), "detail": detail}


PUBLIC_GRANTEES = ("http://acs.amazonaws.com/groups/global/AllUsers",
                   "http://acs.amazonaws.com/groups/global/AuthenticatedUsers")


def public_grants(grants: Iterable[dict]) -> list[str]:
    """``GRANTEE:PERMISSION`` of every ACL grant to everyone or to any AWS account."""
    out = []
    for g in grants:
        uri = (g.get("Grantee") or {}).get("URI")
        if uri in PUBLIC_GRANTEES:
            out.append(f"{uri.rsplit('/', 1)[-1]}:{g.get('Permission')}")
    return out


def scan_objects(bucket: Bucket, prefixes: Sequence[str], expected: str, *, acls: bool = False,
                 workers: int = HEAD_WORKERS) -> dict:
    """HEAD (and with ``acls`` GetObjectAcl) every current object under ``prefixes``.

    Returns ``counts`` and (the first :data:`MAX_KEPT` of) the keys ``unencrypted``, ``wrong_kind``
    (``[key, algorithm]``), ``public`` (``[key, grants]``) and ``errors`` (``[key, error]``). One request per object
    (two with ACLs), ``workers`` at a time: a few seconds per ten thousand objects.
    """
    keys = [o.key for p in prefixes for o in bucket.objects(p)]

    def one(key: str) -> tuple[str, str | None, list[str], str | None]:
        try:
            head = bucket.head(key)
            if head is None:
                return key, None, [], "NoSuchKey: deleted since the listing"
            grants = public_grants(bucket.object_acl(key)) if acls else []
            return key, head.get("ServerSideEncryption"), grants, None
        except Exception as exc:
            if is_not_found(exc):
                return key, None, [], "NoSuchKey: deleted since the listing"
            return key, None, [], f"{error_code(exc)[0]}: {exc}"

    unencrypted, wrong, public, errors = [], [], [], []
    by_alg: Counter = Counter()
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys) or 1))) as pool:
        for key, alg, grants, err in pool.map(one, keys):
            if err is not None:
                if "NoSuchKey" in err or "404" in err:
                    continue  # deleted since the listing (a retention sweep): nothing to judge
                errors.append([key, err])
                continue
            by_alg[alg or "none"] += 1
            if alg is None:
                unencrypted.append(key)
            elif not sse_matches(alg, expected):
                wrong.append([key, alg])
            if grants:
                public.append([key, ", ".join(grants)])
    found = {"unencrypted": sorted(unencrypted), "wrong_kind": sorted(wrong), "public": sorted(public),
             "errors": errors}
    # Counts are complete; the lists are capped so a wholly unencrypted bucket stays a small XCom.
    return {"objects": len(keys), "by_algorithm": dict(by_alg), "counts": {k: len(v) for k, v in found.items()},
            **{k: v[:MAX_KEPT] for k, v in found.items()}, "expected": expected, "prefixes": list(prefixes)}


def _first(items: Iterable[str], n: int = 5, total: int | None = None) -> str:
    items = list(items)
    shown = items[:n]
    more = (len(items) if total is None else total) - len(shown)
    return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")


def encryption_report(config: Config, bucket: Bucket, *, scan: bool = True) -> dict:
    """Bucket default encryption and the backup objects' server-side encryption."""
    expected = config.reports.sse_algorithm
    default = bucket_encryption(bucket, expected)
    prefixes = sorted({s.s3_prefix for s in config.sources})
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
def _fmt_ratio(a: dict) -> str:
    value = human_bytes(a["value"]) if a["metric"] == "size" else human_seconds(a["value"])
    base = human_bytes(a["baseline"]) if a["metric"] == "size" else human_seconds(a["baseline"])
    return f"{value} vs median {base} ({a['ratio']:.2f}x)"


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
                warnings.append(f"{src}: {a['metric']} {a['kind']} on {a['name']}: {_fmt_ratio(a)}")
    pattern = sections.get("failures")
    if pattern:
        kinds = Counter(e["kind"] for e in pattern["events"])
        for kind, n in sorted(kinds.items()):
            warnings.append(f"{n} {kind} event(s) since {pattern['since'][:10]}")
    return problems, warnings


def weekly_doc(*, report_date: date, trends: dict | None, failures: dict | None, storage: dict | None,
               encryption: dict | None, location: str | None = None) -> Doc:
    """The weekly report: summary, trends with charts, failure pattern, storage and cost, encryption."""
    doc = Doc(f"Weekly backup review {report_date.isoformat()}")
    problems, warnings = findings({"trends": trends, "failures": failures, "storage": storage,
                                   "encryption": encryption})
    doc.heading("Summary")
    if location:
        doc.para(f"Report location: {location}")
    doc.para("Verdict: " + ("PROBLEMS FOUND" if problems else "no problems") +
             f" ({len(problems)} problem(s), {len(warnings)} item(s) flagged for review)")
    doc.bullets([f"PROBLEM: {p}" for p in problems] + [f"FLAG: {w}" for w in warnings])

    doc.heading("Backup duration and size trends")
    if trends is None:
        doc.para("Not available: the trends task failed.")
    else:
        doc.para(f"ISO weeks {trends['weeks'][0]} to {trends['weeks'][-1]}; anomaly = size or duration at least "
                 f"{trends['factor']:g}x (or at most 1/{trends['factor']:g}) the median of the previous backups "
                 f"of the same source.")
        labels = trends["weeks"]
        for src, t in trends["sources"].items():
            doc.heading(src, 3)
            # One chart per source and measure: a 2 GiB file set would flatten a 50 MiB database's line.
            doc.chart(f"size-{src}", line_chart(f"{src}: backup size per week", labels, {
                "max": [w["size_max"] for w in t["weeks"]], "median": [w["size_median"] for w in t["weeks"]],
                "min": [w["size_min"] for w in t["weeks"]]}), f"{src}: backup size per ISO week")
            doc.chart(f"duration-{src}", line_chart(f"{src}: backup duration per week", labels, {
                "max": [w["duration_max"] for w in t["weeks"]],
                "median": [w["duration_median"] for w in t["weeks"]]}, fmt=human_seconds),
                f"{src}: backup duration per ISO week")
            doc.table(["Week", "Backups", "Median size", "Min size", "Max size", "Median duration", "Max duration"],
                      [[w["week"], w["count"], human_bytes(w["size_median"]), human_bytes(w["size_min"]),
                        human_bytes(w["size_max"]), human_seconds(w["duration_median"]),
                        human_seconds(w["duration_max"])] for w in t["weeks"]])
            if t["missing_duration"]:
                doc.para(f"{t['missing_duration']} backup(s) in the window have no recorded duration "
                         f"(no 'backup completed' log line and no manifest).")
        anomalies = [a for t in trends["sources"].values() for a in t["anomalies"]]
        doc.heading("Anomalies", 3)
        doc.table(["Source", "Backup", "Metric", "Change", "Value vs baseline"],
                  [[a["source"], a["name"], a["metric"], a["kind"], _fmt_ratio(a)] for a in anomalies])
        doc.bullets(f"note: {n}" for n in trends["notes"])

    doc.heading("Failure pattern")
    if failures is None:
        doc.para("Not available: the failure-pattern task failed.")
    else:
        kinds = sorted({k for c in failures["by_weekday"].values() for k in c}) or ["missing backup", "log error",
                                                                                   "verification failed"]
        doc.para(f"Since {failures['since'][:10]}: missing backups, ERROR lines in the backup logs and failed "
                 f"verifications, by weekday, source and error. {failures['log_warnings']} WARNING line(s) "
                 f"were logged (not counted as failures).")
        doc.table(["Weekday", *kinds], [[d, *[failures["by_weekday"][d].get(k, 0) for k in kinds]] for d in WEEKDAYS])
        doc.chart("failures-by-weekday", bar_chart("Failure events by weekday",
                                                   [(d, sum(failures["by_weekday"][d].values())) for d in WEEKDAYS],
                                                   fmt=lambda v: f"{v:.0f}"),
                  "Failure events by weekday")
        doc.table(["Source", *kinds], [[s, *[c.get(k, 0) for k in kinds]] for s, c in failures["by_source"].items()])
        doc.table(["Kind", "Error (normalised)", "Count", "Sources", "Last", "Example"],
                  [[e["kind"], e["signature"], e["count"], ", ".join(e["sources"]), e["last"], e["example"][:200]]
                   for e in failures["top_errors"]])
        doc.bullets(f"note: {n}" for n in failures["notes"])

    doc.heading("Storage")
    if storage is None:
        doc.para("Not available: the storage task failed.")
    else:
        b = storage["bucket"]
        doc.para(f"s3://{b['bucket']}: {human_bytes(b['total_bytes'])} in {b['objects']} object versions "
                 f"(current and noncurrent; noncurrent versions are billed too).")
        doc.table(["Prefix", "Current", "Current objects", "Noncurrent", "Noncurrent objects", "Delete markers"],
                  [[p, human_bytes(c.get("current_bytes", 0)), c.get("current_objects", 0),
                    human_bytes(c.get("noncurrent_bytes", 0)), c.get("noncurrent_objects", 0),
                    c.get("delete_markers", 0)] for p, c in b["by_prefix"].items()])
        doc.table(["Prefix", "Storage class", "Bytes", "Objects"],
                  [[r["prefix"], r["storage_class"], human_bytes(r["bytes"]), r["objects"]]
                   for r in b["by_prefix_class"]])
        doc.chart("storage-by-prefix", bar_chart("Bucket usage by prefix",
                                                 [(p, c.get("current_bytes", 0) + c.get("noncurrent_bytes", 0))
                                                  for p, c in b["by_prefix"].items()]),
                  "Bucket usage by prefix")
        doc.heading("Local disk", 3)
        doc.table(["Source", "Directory", "Backups and companions", "Files", "Filesystem used", "Filesystem free"],
                  [[r["source"], r["path"], human_bytes(r.get("bytes")), r.get("files", "-"),
                    f"{r['fs_used_fraction']:.0%}" if r.get("fs_used_fraction") is not None else "-",
                    human_bytes(r.get("fs_free"))]
                   if r["exists"] else [r["source"], r["path"], "missing", "-", "-", "-"]
                   for r in storage["local"]])
        doc.heading("Growth per week", 3)
        weeks = list(b["uploaded_per_week"])
        doc.table(["Week", "Uploaded to S3", *[f"New local ({r['source']})" for r in storage["local"] if r["exists"]]],
                  [[w, human_bytes(b["uploaded_per_week"][w]),
                    *[human_bytes(r["added_per_week"][w]) for r in storage["local"] if r["exists"]]] for w in weeks])
        doc.chart("uploads-per-week", bar_chart("Bytes uploaded per week", [(w, b["uploaded_per_week"][w])
                                                                            for w in weeks]),
                  "Bytes uploaded to the bucket per ISO week")
        if storage["growth"]:
            doc.table(["Report date", "S3 total", "S3 change", "Local total", "Local change"],
                      [[g["date"], human_bytes(g["s3_bytes"]), human_bytes(g["s3_change"]),
                        human_bytes(g["local_bytes"]), human_bytes(g["local_change"])] for g in storage["growth"]])
        else:
            doc.para("Net growth: first recorded run; next week's report shows the change since this one.")
        doc.heading("Monthly cost estimate", 3)
        c = storage["cost"]
        doc.table(["Storage class", "Stored", "USD per GB-month", "USD per month"],
                  [[r["storage_class"], human_bytes(r["bytes"]),
                    "no price configured" if r["usd_per_gb_month"] is None else f"{r['usd_per_gb_month']:g}",
                    "-" if r["usd_per_month"] is None else f"{r['usd_per_month']:.4f}"] for r in c["rows"]])
        usd = c["usd_per_month"]
        amount = f"{usd:.2f}" if usd >= 1 else f"{usd:.4f}"
        doc.para(f"Estimate: {amount} USD per month ({c['note']})."
                 + (f" Classes without a price: {', '.join(c['unpriced'])}." if c["unpriced"] else ""))
        ce = storage["cost_explorer"]
        if ce.get("reachable"):
            doc.para(f"AWS Cost Explorer: {ce['amount']:.2f} {ce['unit']} for {ce['period']} ({ce['note']}).")
        else:
            doc.para(f"Cost Explorer not reachable: {ce['reason']}")

    doc.heading("Encryption")
    if encryption is None:
        doc.para("Not available: the encryption task failed.")
    else:
        d = encryption["default"]
        doc.para(f"Bucket default encryption: {'OK' if d['ok'] else 'PROBLEM'}: {d['detail']}.")
        o = encryption["objects"]
        if o is None:
            doc.para("Object encryption was not scanned in this run (scan_objects=false).")
        else:
            doc.para(f"{o['objects']} backup object(s) under {', '.join(o['prefixes'])}: "
                     + ", ".join(f"{k}: {v}" for k, v in sorted(o["by_algorithm"].items())) + ".")
            n = o["counts"]["unencrypted"]
            if n:
                doc.para(f"Objects without server-side encryption ({n}):")
                doc.bullets(o["unencrypted"][:MAX_LISTED] + ([f"... and {n - MAX_LISTED} more"] if n > MAX_LISTED
                                                              else []))
            if o["wrong_kind"]:
                doc.para(f"Objects encrypted with another kind than {o['expected']} ({o['counts']['wrong_kind']}):")
                doc.bullets(f"{k} ({alg})" for k, alg in o["wrong_kind"][:MAX_LISTED])
            if o["errors"]:
                doc.bullets(f"could not inspect {k}: {err}" for k, err in o["errors"][:MAX_LISTED])
    return doc


__all__ = ["collect_trends", "failure_pattern", "storage_usage", "encryption_report", "weekly_doc", "findings",
           "find_anomalies", "backup_points", "BackupPoint", "read_backup_logs", "bucket_encryption", "scan_objects",
           "cost_explorer_figure", "sum_cost", "cost_estimate", "bucket_usage", "local_usage", "StorageHistory",
           "missing_nights", "error_signature", "week_labels", "sse_matches", "public_grants"]
