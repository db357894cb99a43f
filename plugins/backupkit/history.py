"""The recent history of each source's backups: sizes, durations, errors, missing nights, anomalies.

Read from what exists (local files, S3 objects through the catalog, the backup logs'
``backup completed ... duration=12.3s size=...`` lines, database manifests), never from
mtimes. The weekly report and the health page both draw their trends and anomalies from
here: an anomaly is a backup whose size or duration is at least ``factor`` times (or at
most 1/factor of) the median of the previous ``window`` backups of its source.
"""

from __future__ import annotations

import gzip
import json
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from backupkit.catalog import Catalog, local_backups
from backupkit.checks.logs import ERROR_RE, WARNING_RE
from backupkit.config import Config, Source
from backupkit.reports.render import human_bytes, human_seconds
from backupkit.storage.localfs import MANIFEST_SUFFIX
from backupkit.storage.objectstore import Bucket

GIB = 1024 ** 3  # AWS bills storage per GB-month with GB = 2^30 bytes
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MIN_BASELINE = 3  # fewer earlier backups than this: no anomaly judgement (not enough history)
# "2026-01-31 02:00:01 INFO message" (a level word, or "[ERROR]", "ERROR:", "- ERROR -" is optional).
_LOG_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})\S*\s+"
                       r"(?:[-\[]?\s*(DEBUG|INFO|NOTICE|WARN(?:ING)?|ERROR|CRITICAL|FATAL)\]?:?\s*-?\s*)?(.*)$")
_KV = re.compile(r"(\w+)=(\"[^\"]*\"|\S+)")


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


def anomaly_text(a: dict) -> str:
    """One anomaly of :func:`find_anomalies` in words: ``12.1 MiB vs median 48.0 MiB (0.25x)``."""
    value = human_bytes(a["value"]) if a["metric"] == "size" else human_seconds(a["value"])
    base = human_bytes(a["baseline"]) if a["metric"] == "size" else human_seconds(a["baseline"])
    return f"{value} vs median {base} ({a['ratio']:.2f}x)"
