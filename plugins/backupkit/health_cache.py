"""The health page's memory: facts are recomputed only when something they are made of changed.

Invalidation rule (``docs/health.md``): every request stats the inputs -- the configuration
file, every entry of every source's ``local_dir`` (size, mtime, ctime, inode: a backup added,
removed, rewritten or flipped in place), the verification memory and its WAL, the facts,
history, journal and metrics files, and the backup logs -- which costs a few milliseconds
for thousands of backups. If nothing changed since the last refresh (and the UTC day is the
same), the cached facts are judged again against the clock (ages, staleness) and returned.
The S3 listing, the one input that cannot be stat'ed, is re-listed when any local input
changed or when it is older than ``s3_ttl`` seconds; a failed listing is reported, not hidden.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from backupkit import clock
from backupkit.catalog import Catalog
from backupkit.config import DEFAULT_CONFIG, Config, load_config
from backupkit.health import (
    CHART_NIGHTS,
    MAX_FACTS_BYTES,
    FactsError,
    Shared,
    collect_source,
    drill_summary,
    judge,
    read_daily_run,
)
from backupkit.history import log_files, read_backup_logs
from backupkit.storage.objectstore import Bucket, client_errors, describe_error

S3_TTL = 300.0  # seconds an S3 listing is trusted when no local input changed
STATE_FILES = ("verification_db", "restore_tests", "dr_drills", "retention_journal", "restore_journal")


def _stat(path: Path) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (str(path), None)
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _entries(directory: Path) -> tuple:
    """(name, size, mtime, ctime, inode) of every entry of ``directory``, one scandir, no recursion."""
    try:
        with os.scandir(directory) as it:
            rows = []
            for de in it:
                try:
                    st = de.stat(follow_symlinks=False)
                except OSError:
                    continue
                rows.append((de.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    except OSError:
        return (str(directory), None)
    rows.sort()
    return (str(directory), tuple(rows))


def fingerprint(config: Config) -> tuple:
    """Everything the facts are made of, as stat results (see the module doc)."""
    state = config.state
    parts: list[Any] = [_stat(config.path)]
    parts += [_entries(s.local_dir) for s in config.sources]
    db = state.verification_db
    parts += [_stat(getattr(state, name)) for name in STATE_FILES]
    parts += [_stat(db.with_name(db.name + "-wal")), _stat(state.facts_file("daily")), _entries(state.metrics_dir)]
    for lg in config.logs:
        parts += [_stat(p) for p in log_files(lg.path)]
    return tuple(parts)


def _bounded_jsonl(path: Path, notes: list[str]) -> list[dict]:
    """A history file's records (``backupkit.results.read_jsonl``), refused when too large to read."""
    from backupkit.results import read_jsonl

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return []
    if size > MAX_FACTS_BYTES:
        notes.append(f"{path.name}: {size} bytes, more than {MAX_FACTS_BYTES}; not read")
        return []
    try:
        records, problems = read_jsonl(path)
    except (OSError, UnicodeDecodeError) as exc:
        notes.append(f"{path.name}: cannot read: {exc}")
        return []
    notes += problems[:5]
    return records


def read_metrics(directory: Path, notes: list[str]) -> dict[str, dict[str, float]]:
    """metric -> source label -> value from every ``*.prom`` textfile (the jobs' last values)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    try:
        files = sorted(directory.glob("*.prom"))
    except OSError:
        return out
    for path in files:
        try:
            if path.stat().st_size > MAX_FACTS_BYTES:
                notes.append(f"metrics {path.name}: larger than {MAX_FACTS_BYTES} bytes; not read")
                continue
            text = path.read_text(encoding="utf-8")
            for fam in text_string_to_metric_families(text):
                for sample in fam.samples:
                    src = sample.labels.get("source")
                    if src is not None:
                        out.setdefault(sample.name, {})[src] = float(sample.value)
        except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:  # the parser's errors
            notes.append(f"metrics {path.name}: not a Prometheus textfile: {str(exc)[:200]}")
    return out


def read_shared(config: Config, now: datetime) -> Shared:
    """The inputs every source shares, each read tolerantly: what cannot be read becomes a note."""
    from backupkit.state import VerificationState

    shared = Shared()
    try:
        store = VerificationState.existing(config.state_dir)
        if store is not None:
            with store:
                shared.records = store.records()
    except Exception as exc:  # sqlite3.Error, OSError: the page says so instead of failing
        shared.notes.append(f"verification memory: cannot read: {exc}")
    try:
        shared.daily = read_daily_run(config.state.facts_file("daily"))
    except FactsError as exc:
        shared.notes.append(str(exc))
    shared.restore_tests = _bounded_jsonl(config.state.restore_tests, shared.notes)
    shared.drills = _bounded_jsonl(config.state.dr_drills, shared.notes)
    shared.metrics = read_metrics(config.state.metrics_dir, shared.notes)
    baseline = max(s.thresholds.size_window for s in config.sources) if config.sources else 7
    try:
        shared.logged, _, notes = read_backup_logs(config, now - timedelta(days=CHART_NIGHTS + baseline + 2))
        shared.notes += notes
    except (OSError, ValueError) as exc:
        shared.notes.append(f"backup logs: cannot read: {exc}")
    return shared


class HealthService:
    """Judged facts of every configured source, cached as the module doc says.

    :param bucket_factory: makes the configured bucket's client when a listing is due (never at
        construction: nothing touches the network until the first request)
    :param config_path: the configuration file (None: ``$BACKUPKIT_CONFIG`` or the default)
    """

    def __init__(self, bucket_factory: Callable[[Config], Bucket | None], *, config_path: Path | None = None,
                 s3_ttl: float = S3_TTL, now: Callable[[], datetime] = clock.now):
        self._bucket_factory = bucket_factory
        self._config_path = config_path
        self._s3_ttl = s3_ttl
        self._now = now
        self._lock = threading.Lock()
        self._config: tuple[tuple, Config] | None = None
        self._listing: dict[str, tuple[dict | None, str | None]] = {}
        self._listed_at: float | None = None
        self._listed_for: tuple | None = None
        self._facts: dict | None = None
        self._key: tuple | None = None
        self.refreshes = 0  # how many times the facts were recomputed (tests and the benchmark read it)

    def config(self) -> Config:
        path = Path(self._config_path or os.environ.get("BACKUPKIT_CONFIG") or DEFAULT_CONFIG)
        key = (_stat(path), os.environ.get("BACKUPKIT_CONFIG"))
        if self._config is None or self._config[0] != key:
            self._config = (key, load_config(self._config_path))
        return self._config[1]

    def invalidate(self) -> None:
        """Forget everything (the next request lists S3 again)."""
        with self._lock:
            self._key = self._facts = self._listed_at = None

    def _list_s3(self, config: Config, fp: tuple) -> None:
        fresh = self._listed_at is not None and time.monotonic() - self._listed_at < self._s3_ttl
        if fresh and self._listed_for == fp:
            return
        listing: dict[str, tuple[dict | None, str | None]] = {}
        try:
            bucket = self._bucket_factory(config)
        except Exception as exc:  # a broken connection is a fact to show, not a crash
            bucket, error = None, f"no S3 client: {exc}"
        else:
            error = None if bucket is not None else "no S3 connection configured"
        for source in config.sources:
            if bucket is None:
                listing[source.name] = (None, error)
                continue
            try:
                listing[source.name] = (Catalog(source, bucket).scan_s3(), None)
            except client_errors() as exc:
                listing[source.name] = (None, describe_error(exc, bucket.uri(source.s3_prefix)))
        self._listing, self._listed_at, self._listed_for = listing, time.monotonic(), fp

    def _refresh(self, config: Config, now: datetime) -> dict:
        fp = fingerprint(config)
        key = (fp, now.date(), id(config))
        if self._facts is not None and self._key == key and self._listed_at is not None \
                and time.monotonic() - self._listed_at < self._s3_ttl:
            return self._facts
        self._list_s3(config, fp)
        shared = read_shared(config, now)
        sources = []
        for source in config.sources:
            remote, error = self._listing.get(source.name, (None, "not listed"))
            try:
                local = Catalog(source).scan_local()
            except OSError as exc:
                local, error = {}, f"cannot list {source.local_dir}: {exc}"
            sources.append(collect_source(config, source, local=local, remote=remote, s3_error=error,
                                          shared=shared, now=now))
        self._facts = {"facts_at": now.isoformat(), "sources": sources, "drills": shared.drills,
                       "notes": shared.notes,
                       "s3_listed_at": (now - timedelta(seconds=time.monotonic() - self._listed_at)).isoformat()}
        self._key = key
        self.refreshes += 1
        return self._facts

    def snapshot(self, now: datetime | None = None) -> dict:
        """Every source judged now: ``{"generated_at", "summary", "sources", "drill", "notes", ...}``."""
        now = now or self._now()
        config = self.config()
        with self._lock:
            facts = self._refresh(config, now)
        sources = [judge(config, f, now) for f in facts["sources"]]
        summary = {status: sum(1 for s in sources if s["status"] == status) for status in ("ok", "warning", "failed")}
        return {"generated_at": now.isoformat(), "facts_at": facts["facts_at"], "s3_listed_at": facts["s3_listed_at"],
                "summary": summary, "sources": sources, "drill": drill_summary(facts["drills"], config, now),
                "notes": list(facts["notes"])}

    def source(self, name: str, now: datetime | None = None) -> dict | None:
        snap = self.snapshot(now)
        return next((s for s in snap["sources"] if s["name"] == name), None)


__all__ = ["HealthService", "S3_TTL", "fingerprint", "read_metrics", "read_shared"]
