"""The daily verification, one source at a time: what the DAG's tasks call.

Every function returns JSON-serialisable lists of result dicts (``CheckResult.to_dict()``)
so the Airflow adapters can pass them through XCom unchanged, and :func:`summarize`
turns all of them into one verdict and a readable table.

Artifacts are named ``SOURCE/FILE`` (source-level checks use the bare source name, the
backup logs ``logs/NAME``), which is how :func:`summarize` groups them per source.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

from backupkit import clock
from backupkit.catalog import Catalog, local_backups
from backupkit.checks.freshness import check_freshness
from backupkit.checks.logs import LOGS, log_of, scan_logs
from backupkit.checks.s3copy import s3_copy_report
from backupkit.config import Config, Source
from backupkit.metrics import LastSuccessStore, MetricSet, SourceStatus, verification_metrics
from backupkit.model import Backup, CheckResult, backup_id, source_of
from backupkit.state import FileIdentity, VerificationState
from backupkit.storage.localfs import read_sidecar
from backupkit.storage.objectstore import MAX_BATCH, Bucket, client_errors, describe_error


def _now(now: datetime | None) -> datetime:
    return now if now is not None else clock.now()


def backup_key(source: Source | str, backup: Backup | str) -> str:
    """The artifact name and state key of a backup: ``SOURCE/FILE`` (:func:`backupkit.model.backup_id`)."""
    src = source if isinstance(source, str) else source.name
    name = backup if isinstance(backup, str) else backup.name
    return backup_id(src, name)


def default_state(config: Config) -> VerificationState:
    return VerificationState(config.state_dir)


@contextmanager
def _state(config: Config, state: VerificationState | None) -> Iterator[VerificationState]:
    """The caller's state, or the configured one opened (and closed) for this call."""
    if state is not None:
        yield state
        return
    owned = default_state(config)
    try:
        yield owned
    finally:
        owned.close()


def _dicts(results: Iterable[CheckResult]) -> list[dict]:
    return [r.to_dict() for r in results]


# -- presence, freshness, size, gaps ---------------------------------------------------
def check_presence(config: Config, source_name: str, now: datetime | None = None) -> list[dict]:
    """Is there a fresh backup of a plausible size, and no missing night? (no file is read)"""
    source = config.source(source_name)
    return _dicts(check_freshness(source, local_backups(source), _now(now)))


# -- integrity (full reads, rolling) ---------------------------------------------------
def check_integrity(config: Config, source_name: str, now: datetime | None = None,
                    state: VerificationState | None = None) -> list[dict]:
    """Read new backups, failed ones and the rolling share of the rest in full; remember the outcome."""
    from backupkit.verify import VerifyOptions, configured_format, verify_artifact  # imported late: a light module

    now = _now(now)
    source = config.source(source_name)
    with _state(config, state) as st:
        own = source.kind_impl.verify_source(config, source, now, st)
    if own is not None:  # a kind verified as a whole (a WAL archive: backupkit.wal.source)
        return _dicts(own)
    backups = {backup_key(source, b): b for b in local_backups(source)}
    results: list[CheckResult] = []
    with _state(config, state) as st:
        # Retention removed these backups: their records would only grow the file.
        st.forget(k for k in st.records(prefix=f"{source.name}/") if k not in backups)
        identities = {k: FileIdentity.of(b.path) for k, b in backups.items()}
        selected = st.select_full_reads(identities, fraction=config.reread_fraction, now=now)
        fresh = 0
        for key in selected:
            b, ident = backups[key], identities[key]
            prev = st.get(key)
            if prev is None or not prev.unchanged(ident) or not prev.ok:
                fresh += 1
            try:
                report = verify_artifact(b.path, label=key, configured_format=configured_format(source),
                                         options=VerifyOptions(workers=config.verification_workers))
            except Exception as exc:  # one unreadable backup must not hide the others
                res = [CheckResult(key, "integrity", False, f"verification could not run: {exc}")]
                st.record(key, None, ident, False, now, res[0].detail)
                results.extend(res)
                continue
            res = list(report.results)
            if report.ok:
                res += source.kind_impl.content_checks(source, b.path, key)
            if (prev is not None and prev.ok and prev.size == b.size and prev.sha256 and report.sha256
                    and prev.sha256 != report.sha256):
                res.append(CheckResult(key, "sha256_history", False,
                                       f"content changed since it passed on {prev.verified_at:%Y-%m-%d}: "
                                       f"SHA-256 was {prev.sha256}, now {report.sha256}"))
            bad = [r for r in res if not r.ok]
            st.record(key, report.sha256, ident, not bad, now, "; ".join(f"{r.check}: {r.detail}" for r in bad))
            results.extend(res)
    results.append(CheckResult(source.name, "integrity", True,
                               f"read {len(selected)} of {len(backups)} backups in full "
                               f"({fresh} new, changed or failed before; {len(selected) - fresh} rolling re-reads)"))
    return _dicts(results)


# -- S3 copies ---------------------------------------------------------------------------
def _known_sha256(st: VerificationState, key: str, b: Backup) -> tuple[str | None, str]:
    """The backup's SHA-256 without reading it, and where it comes from: its last passed full read
    (if the file is unchanged since), else its sidecar."""
    rec = st.get(key)
    if rec is not None and rec.ok and rec.sha256 and rec.unchanged(FileIdentity.of(b.path)):
        return rec.sha256, f"the local backup's verified read of {rec.verified_at:%Y-%m-%d}"
    try:
        return read_sidecar(b.path), "the local backup's sidecar"
    except ValueError:  # a malformed sidecar: the integrity check reports it
        return None, "the local backup"


def check_cloud_copies(config: Config, source_name: str, bucket: Bucket,
                       state: VerificationState | None = None) -> list[dict]:
    """Every local backup has a copy in S3 with the same size and the same bytes.

    The SHA-256 comes from the state store (verified) or the sidecar; the local file is
    read only when S3's evidence needs it (composites, CRCs, MD5 ETags: once, since
    matches are remembered) or, for the newest backup, when no SHA-256 is known. A
    directory dump is compared file by file. Objects under the prefix with no local
    counterpart are counted (information: S3 usually keeps backups longer than the disk).

    A backup whose deletion a retention sweep announced in the audit log and has not
    finished (the sweep was killed between deleting the S3 copy and the local one) is
    reported as a deletion in progress, not as "missing in S3": failing on it would stop
    the asset event that triggers the sweep that finishes it.
    """
    from backupkit.retention.audit import AuditLog

    source = config.source(source_name)
    catalog = Catalog(source, bucket)
    backups = catalog.local()
    pending = AuditLog(config.state_dir).pending(source.name)
    results: list[CheckResult] = []
    body = local = stored = skipped = 0
    with _state(config, state) as st:
        cache = st.checksum_cache
        for i, b in enumerate(backups):
            key = backup_key(source, b)
            newest = i == len(backups) - 1
            if b.name in pending:
                rec = pending[b.name]
                results.append(CheckResult(key, "s3_present", True,
                                           f"deletion in progress: retention run {rec.get('run_id')} recorded "
                                           f"'{rec.get('action')}' at {rec.get('time')}; the next sweep finishes it"))
                continue
            if b.is_dir:
                reports = _dir_copy_reports(bucket, catalog.s3_key(b.name), b.path, key, cache)
                results.extend(_merge_dir_reports(key, reports))
            else:
                sha, origin = _known_sha256(st, key, b)
                reports = [s3_copy_report(bucket, catalog.s3_key(b.name), local_size=b.size, local_sha256=sha,
                                          local_path=b.path if (sha or newest) else None, artifact=key,
                                          composite_cache=cache, local_sha256_origin=origin)]
                results.extend(reports[0].results)
            for report in reports:
                body += report.body_bytes_read
                local += report.local_bytes_read
            if not all(r.compared for r in reports) or not reports:
                skipped += 1
            elif any(r.method != "stream" for r in reports):
                stored += 1
        results += source.kind_impl.cloud_checks(config, source, bucket, st)
    local_names = {b.name for b in backups}
    try:
        s3_only = sum(1 for b in catalog.remote() if b.name not in local_names)
        results.append(CheckResult(source.name, "s3_only", True,
                                   f"{s3_only} backups in {bucket.uri(source.s3_prefix)} have no local copy"))
    except client_errors() as exc:  # listing is informational; say it failed, do not hide it
        results.append(CheckResult(source.name, "s3_only", False,
                                   f"cannot list: {describe_error(exc, bucket.uri(source.s3_prefix))}"))
    results.append(CheckResult(source.name, "s3_copies", True,
                               f"{len(backups)} copies checked, {stored} by what S3 stored, "
                               f"{skipped} not compared (no SHA-256 known); "
                               f"read {body} bytes from S3 and {local} bytes of local files"))
    return _dicts(results)


def _dir_copy_reports(bucket: Bucket, prefix: str, root: Path, artifact: str, cache) -> list:
    """The S3 copy of each file of a directory dump or base backup: their HEADs asked several at a
    time (a base backup is a thousand small files), a thousand files' answers held at once."""
    files = [(f"{prefix}/{rel}", f) for rel, f in dir_files(root)]
    reports = []
    for i in range(0, len(files), MAX_BATCH):
        chunk = files[i:i + MAX_BATCH]
        heads = bucket.heads([k for k, _ in chunk], checksums=True)
        reports += [s3_copy_report(bucket, k, local_size=f.stat().st_size, local_sha256=None, local_path=f,
                                   artifact=artifact, composite_cache=cache, head=heads[k]) for k, f in chunk]
    return reports


def dir_files(root: Path) -> list[tuple[str, Path]]:
    """(path relative to ``root`` with ``/``, file) of every regular file of a directory dump."""
    return sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _merge_dir_reports(artifact: str, reports: list) -> list[CheckResult]:
    """One s3_present / s3_size / s3_checksum triple for a directory dump, naming the first bad file."""
    if not reports:
        return [CheckResult(artifact, "s3_present", False, "the directory dump has no files")]
    out = []
    for check in ("s3_present", "s3_size", "s3_checksum"):
        rows = [r for rep in reports for r in rep.results if r.check == check]
        bad = [r for r in rows if not r.ok]
        if bad:
            out.append(CheckResult(artifact, check, False, f"{len(bad)} of {len(reports)} files: {bad[0].detail}"))
            if check != "s3_checksum":
                break
        elif rows:
            out.append(CheckResult(artifact, check, True, f"all {len(reports)} files: {rows[0].detail}"))
    return out


# -- logs --------------------------------------------------------------------------------
def check_logs(config: Config, state: VerificationState | None = None) -> list[dict]:
    """ERROR/WARNING lines of the configured backup logs since the last run."""
    if not config.logs:
        return [CheckResult(LOGS, "log", True, "no backup logs configured").to_dict()]
    with _state(config, state) as st:
        results, offsets = scan_logs(config.logs, st.load_log_offsets())
        st.save_log_offsets(offsets)
    return _dicts(results)


# -- inventory helpers -------------------------------------------------------------------
def latest_backup(config: Config, source_name: str, now: datetime | None = None) -> dict | None:
    """The newest local backup of a source: name, timestamp, age, size, path (None if none)."""
    source = config.source(source_name)
    backups = local_backups(source)
    if not backups:
        return None
    b = backups[-1]
    age = (_now(now) - b.timestamp).total_seconds() / 3600
    return {"name": b.name, "timestamp": b.timestamp.isoformat(), "age_hours": round(age, 2),
            "size": b.size, "local_path": str(b.path), "count": len(backups)}


# -- metrics -----------------------------------------------------------------------------
def source_statuses(config: Config, results: Iterable[CheckResult | dict], source_names: Iterable[str],
                    now: datetime) -> list[SourceStatus]:
    """What this run found per source: ok, problem count, newest backup's age and size, max age."""
    rows = [_as_dict(r) for r in results]
    statuses = []
    for name in source_names:
        problems = sum(1 for r in rows if not r["ok"] and source_of(r["artifact"]) == name)
        latest = latest_backup(config, name, now)
        age = (now - datetime.fromisoformat(latest["timestamp"])).total_seconds() if latest else None
        statuses.append(SourceStatus(name, ok=problems == 0, problems=problems, age_seconds=age,
                                     size_bytes=latest["size"] if latest else None,
                                     max_age_seconds=config.source(name).thresholds.max_age_hours * 3600))
    return statuses


def run_metrics(config: Config, results: Iterable[CheckResult | dict], source_names: Iterable[str], *,
                now: datetime) -> MetricSet:
    """This run's gauges (every source's status and last success, newest backup, log problems)."""
    rows = [_as_dict(r) for r in results]
    statuses = source_statuses(config, rows, source_names, now)
    log_problems: dict[str, int] = {lg.name: 0 for lg in config.logs}
    for r in rows:
        name = log_of(r["artifact"])
        if name is not None and not r["ok"]:
            log_problems[name] = log_problems.get(name, 0) + 1
    last_success = LastSuccessStore(config.state.metrics_values("daily")).update(statuses, now.timestamp())
    m = verification_metrics(statuses, now=now.timestamp(), last_success=last_success, log_problems=log_problems)
    pitr_metrics(m, config, source_names, now)
    return m


def pitr_metrics(m: MetricSet, config: Config, source_names: Iterable[str], now: datetime) -> None:
    """The recoverable window of every source whose kind has one (WAL archives), and its RPO: the age
    of the window's end (it grows when archiving or the verification stops)."""
    from backupkit.metric_names import PITR_RPO, PITR_WINDOW_END, PITR_WINDOW_START, help_of

    windows = {n: w for n in source_names if (w := config.source(n).kind_impl.recovery_window(config, config.source(n)))}
    if not windows:
        return
    start = m.gauge(PITR_WINDOW_START, help_of(PITR_WINDOW_START), ["source"])
    end = m.gauge(PITR_WINDOW_END, help_of(PITR_WINDOW_END), ["source"])
    rpo = m.gauge(PITR_RPO, help_of(PITR_RPO), ["source"])
    for name, w in sorted(windows.items()):
        start.labels(source=name).set(w["start"].timestamp())
        end.labels(source=name).set(w["end"].timestamp())
        rpo.labels(source=name).set(max(0.0, (now - w["end"]).total_seconds()))


# -- the verdict -------------------------------------------------------------------------
def _as_dict(r: CheckResult | dict) -> dict:
    return r.to_dict() if isinstance(r, CheckResult) else dict(r)


def summarize(results: Iterable[CheckResult | dict]) -> dict:
    """One verdict for a run: ``ok``, the ``problems``, per-source ``counts`` and a ``table``.

    The table has one row per problem (and per reported WARNING log line), then one count
    line per source, so the task log names every failing artifact and check.
    """
    rows = [_as_dict(r) for r in results]
    problems = [r for r in rows if not r["ok"]]
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        c = counts.setdefault(source_of(r["artifact"]), {"checks": 0, "problems": 0, "warnings": 0})
        c["checks"] += 1
        if not r["ok"]:
            c["problems"] += 1
        elif str(r.get("detail", "")).startswith("WARNING:"):
            c["warnings"] += 1
    shown = [(r, "FAIL") for r in problems] + [(r, "WARN") for r in rows
                                                if r["ok"] and str(r.get("detail", "")).startswith("WARNING:")]
    header = ("SOURCE/ARTIFACT", "CHECK", "STATUS", "DETAIL")
    table_rows = [(r["artifact"], r["check"], status, str(r.get("detail", "")).replace("\n", " "))
                  for r, status in shown]
    lines = []
    if table_rows:
        w0 = min(max(len(header[0]), *(len(t[0]) for t in table_rows)), 70)
        w1 = max(len(header[1]), *(len(t[1]) for t in table_rows))
        fmt = f"{{:<{w0}}}  {{:<{w1}}}  {{:<6}}  {{}}"
        lines.append(fmt.format(*header))
        lines.append(fmt.format("-" * w0, "-" * w1, "-" * 6, "-" * 6))
        lines.extend(fmt.format(*t) for t in table_rows)
        lines.append("")
    else:
        lines.append("No problems found.")
    windows = [r for r in rows if r["check"] == "pitr_window"]
    for r in windows:
        lines.append(f"{r['artifact']}: point-in-time recovery: {r.get('detail', '')}")
    if windows:
        lines.append("")
    for src in sorted(counts):
        c = counts[src]
        warn = f", {c['warnings']} warnings" if c["warnings"] else ""
        lines.append(f"{src}: {c['checks']} checks, {c['problems']} problems{warn}")
    return {"ok": not problems, "problems": problems, "counts": counts, "table": "\n".join(lines)}


__all__ = ["check_presence", "check_integrity", "check_cloud_copies", "check_logs", "latest_backup",
           "summarize", "default_state", "backup_key", "source_of"]
