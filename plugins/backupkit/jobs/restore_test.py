"""The monthly restore test (DAG backup_monthly_restore_test): what to restore, the verdict, the metrics.

Per source, the newest backup and one picked at random (seeded by the run id, so a rerun
repeats the choice) from the older ones of the last ``restore.random_older_window_days``
days: restoring what is rarely read catches latent damage, as AWS Backup's restore testing
does. Each is restored by :func:`backupkit.restore.pipeline.restore_test`; this module turns
the results into one table, a verdict per source and the ``backup_restore_test_*`` gauges.

Restore time is a target (:func:`apply_restore_targets`): a source may declare
``restore.target_duration``; a test whose ``duration_seconds`` (download and restore of the
backup) is longer fails with the check ``restore_time``. Every result carries the bytes
restored and the rate in MB/s (10^6 bytes per second), so the history shows the trend.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from backupkit.catalog import Catalog
from backupkit.config import Config
from backupkit.metric_names import (RESTORE_TEST_DURATION, RESTORE_TEST_FILES, RESTORE_TEST_LAST_RUN,
                                    RESTORE_TEST_LAST_SUCCESS, RESTORE_TEST_ROWS, RESTORE_TEST_STATUS, help_of)
from backupkit.metrics import LastSuccessStore, MetricSet, SourceStatus
from backupkit.reports.render import human_seconds
from backupkit.restore.selection import random_older
from backupkit.storage.objectstore import Bucket


def monthly_targets(config: Config, bucket: Bucket | None, *, now: datetime, seed: str) -> list[dict]:
    """What the monthly restore test restores: per source the newest backup and one picked
    at random (seeded: a rerun of the same run repeats the choice) from the older ones of
    the last ``restore.random_older_window_days`` days."""
    rng = random.Random(seed)
    targets = []
    for source in config.sources:
        if not source.kind_impl.restorable:
            continue  # WAL archives: the point-in-time restore test is not built yet (README)
        refs = Catalog(source, bucket).backups()
        if not refs:
            targets.append({"source_name": source.name, "backup": "", "role": "newest"})
            continue
        targets.append({"source_name": source.name, "backup": refs[-1].name, "role": "newest"})
        older = random_older(refs, config.restore.random_older_window_days, now, rng)
        if older is not None:
            targets.append({"source_name": source.name, "backup": older.name, "role": "random_older"})
    return targets


def apply_restore_targets(config: Config, results: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Each result with ``bytes``, ``mb_per_s`` and ``target_seconds``; over its source's target, failed."""
    out = []
    for r in results:
        r = dict(r)
        seconds, size = r.get("duration_seconds"), r.get("bytes")
        r["mb_per_s"] = round(size / 1e6 / seconds, 3) if size and seconds else None
        try:
            target = config.source(r["source"]).restore_target_seconds
        except KeyError:
            target = None
        r["target_seconds"] = target
        if target is not None and seconds is not None and seconds > target:
            artifact = f"{r['source']}/{r['backup']}" if r.get("backup") else r["source"]
            problem = {"artifact": artifact, "check": "restore_time", "ok": False,
                       "detail": f"the restore took {human_seconds(seconds)} ({seconds:.1f} s), over its target "
                                 f"{human_seconds(target)} (restore.target_duration)"}
            r["problems"] = [*(r.get("problems") or []), problem]
            r["ok"] = False
        out.append(r)
    return out


def pitr_targets(config: Config, *, now: datetime, seed: str) -> list[dict]:
    """Per WAL archive with a verified window: one point in time drawn uniformly from inside it (seeded:
    a rerun repeats it), as AWS Backup's restore testing picks a recovery point within a window."""
    targets = []
    for source in config.sources:
        window = source.kind_impl.recovery_window(config, source)
        if window is None:
            continue
        start, end = window["start"], min(window["end"], now)
        span = (end - start).total_seconds()
        if span <= 0:
            continue
        at = start + timedelta(seconds=random.Random(f"{seed}/{source.name}").uniform(0, span))
        targets.append({"source_name": source.name, "target_time": at.isoformat(), "role": "pitr",
                        "window": [start.isoformat(), end.isoformat()]})
    return targets


def pitr_test(config: Config, target: Mapping[str, Any], *, live: Any = None, work_root: Any = None,
              bucket: Bucket | None = None, run_id: str | None = None) -> dict:
    """Restore ``target`` (from :func:`pitr_targets`) to its time, promoted, and check the markers
    (``markers_table`` of the source, with ``live`` = psql on the source's server) or, without
    markers, that the database answers. An archive kept in S3 only (no ``archive_dir``) is
    restored from S3 whole: its base backup's S3 copy too, as a site loss would leave it."""
    from backupkit.restore.pitr import PitrTarget, database_answers, marker_checks, parse_target_time, pitr_restore

    source = config.source(target["source_name"])
    markers = source.spec.markers_table
    if markers is not None:
        database, table = markers.split(".", 1)
        checks = marker_checks(live, database=database, table=table)
    else:
        db = config.source(source.spec.database).database if source.spec.database else None
        checks = database_answers(db)
    return pitr_restore(config, source.name, PitrTarget(parse_target_time(target["target_time"]), action="promote"),
                        checks=checks, role="pitr", work_root=work_root, bucket=bucket, run_id=run_id,
                        prefer="s3" if source.spec.archive_dir is None else "local")


def summarize_restore_tests(results: Sequence[Mapping[str, Any]]) -> dict:
    """Per source: pass/fail of each test; a table for the log; every problem."""
    sources: dict[str, dict] = {}
    problems: list[dict] = []
    lines = [f"{'SOURCE':24} {'ROLE':13} {'BACKUP':36} {'RESULT':6} {'SECONDS':>8} {'ROWS/FILES':>10} {'MB/S':>8}"]
    for r in results:
        s = sources.setdefault(r["source"], {"ok": True, "tests": []})
        s["ok"] = s["ok"] and bool(r.get("ok"))
        s["tests"].append({k: r.get(k) for k in ("role", "backup", "ok", "duration_seconds", "verified_rows",
                                                 "files", "location", "bytes", "mb_per_s", "target_seconds")})
        problems += r.get("problems") or []
        secs = r.get("duration_seconds")
        count = r.get("files") if r.get("files") is not None else r.get("verified_rows")
        lines.append(f"{r['source']:24} {str(r.get('role')):13} {str(r.get('backup') or '-'):36} "
                     f"{'PASS' if r.get('ok') else 'FAIL':6} {secs if secs is not None else '-':>8} "
                     f"{count if count is not None else '-':>10} {r.get('mb_per_s') or '-':>8}")
        for p in r.get("problems") or []:
            lines.append(f"    {p.get('check')}: {p.get('detail')}")
    return {"ok": all(s["ok"] for s in sources.values()) and bool(sources), "sources": sources,
            "problems": problems, "table": "\n".join(lines)}




def restore_test_metrics(results: Sequence[Mapping[str, Any]], *, now: float, store: LastSuccessStore,
                         expected_sources: Iterable[str] = ()) -> MetricSet:
    """Per source: status (1 = every restore test of it passed), duration and verified rows
    (or files) of the newest backup's test, and the last time all its tests passed (kept
    across runs in ``store``). A source with no result at all counts as failed."""
    by_source: dict[str, list[Mapping[str, Any]]] = {name: [] for name in expected_sources}
    for r in results:
        by_source.setdefault(r["source"], []).append(r)
    statuses = [SourceStatus(name, ok=bool(rs) and all(r.get("ok") for r in rs),
                             problems=sum(len(r.get("problems") or []) for r in rs) + (0 if rs else 1))
                for name, rs in by_source.items()]
    last = store.update(statuses, now)
    m = MetricSet()
    m.gauge(RESTORE_TEST_LAST_RUN, help_of(RESTORE_TEST_LAST_RUN)).set(now)
    status = m.gauge(RESTORE_TEST_STATUS, help_of(RESTORE_TEST_STATUS), ["source"])
    duration = m.gauge(RESTORE_TEST_DURATION, help_of(RESTORE_TEST_DURATION), ["source"])
    rows = m.gauge(RESTORE_TEST_ROWS, help_of(RESTORE_TEST_ROWS), ["source"])
    files = m.gauge(RESTORE_TEST_FILES, help_of(RESTORE_TEST_FILES), ["source"])
    success = m.gauge(RESTORE_TEST_LAST_SUCCESS, help_of(RESTORE_TEST_LAST_SUCCESS), ["source"])
    for st in statuses:
        status.labels(source=st.source).set(1 if st.ok else 0)
        newest = next((r for r in by_source[st.source] if r.get("role") == "newest"), None)
        if newest is not None and newest.get("duration_seconds") is not None:
            duration.labels(source=st.source).set(newest["duration_seconds"])
        if newest is not None and newest.get("files") is not None:
            files.labels(source=st.source).set(newest["files"])
        elif newest is not None:
            rows.labels(source=st.source).set(newest.get("verified_rows") or 0)
        if st.source in last:
            success.labels(source=st.source).set(last[st.source])
    return m


__all__ = ["monthly_targets", "apply_restore_targets", "pitr_targets", "pitr_test", "summarize_restore_tests",
           "restore_test_metrics"]
