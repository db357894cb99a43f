"""A configured ``wal_archives:`` source verified by the daily run (:mod:`backupkit.kinds.wal_archive`).

``check_integrity`` verifies the archive where ``archive_command`` writes it (``archive_dir``)
with the base backups of ``local_dir``; ``check_cloud_copies`` checks the archive's copy
under ``archive_s3_prefix`` (every local segment older than ``max_age`` there, same size,
same bytes by the strongest evidence S3 stored, as for dumps: :mod:`backupkit.checks.s3copy`)
or, for an archive kept in S3 only, verifies that copy in full with every base backup of the
catalog, those kept only in S3 read there without a download (:mod:`backupkit.wal.s3_backups`).
Segments and base backups that passed and are unchanged are not read again (:mod:`backupkit.wal.memory`), except for
the rolling re-read. The recoverable window of
the last verification is kept in ``<state_dir>/facts/pitr-SOURCE.json`` for the metrics,
the summary, the weekly report and the health page.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime, timedelta

from backupkit.catalog import Catalog
from backupkit.config import Config, Source
from backupkit.model import CheckResult, backup_id
from backupkit.state import FileIdentity, VerificationState
from backupkit.storage.objectstore import client_errors, describe_error
from backupkit.wal import memory
from backupkit.wal.archive import ArchiveUnavailable, LocalArchive
from backupkit.wal.backups import BackupError, BaseBackup, read_base_backup, verify_files
from backupkit.wal.s3_backups import check_s3_files, probe, s3_identity, s3_range
from backupkit.wal.verify import CLOCK_SKEW, WalReport, verify_archive

WINDOW_CHECK = "pitr_window"


def _jobs(config: Config) -> int:
    return config.verification_workers or os.cpu_count() or 1


def _iso(t: datetime | None) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t else None


# -- base backups ---------------------------------------------------------------------------------
def base_backups(config: Config, source: Source, st: VerificationState, now: datetime, bucket=None
                 ) -> tuple[list[tuple[str, BaseBackup]], list[tuple[str, str]], dict[str, FileIdentity], set[str]]:
    """(key, base backup) of every base backup of the catalog (on disk, and in ``bucket`` when
    given) whose WAL range can be read, the problems found (key, detail), their identities, and
    the keys read in full now. A local copy is read as it is on disk (pg_verifybackup); one only
    in S3 from S3, without downloading it (:mod:`backupkit.wal.s3_backups`). The full read runs
    on new, changed or failed ones and the rolling share (the others passed it unchanged)."""
    found, problems, ids, heads = [], [], {}, {}
    backups = _catalog(source, bucket, problems)
    for key, b in backups.items():
        try:
            if b.path is not None:
                ids[key] = FileIdentity.of(b.path)
            elif (head := probe(bucket, b.key)) is None:   # remembered as failed, not left as it was
                ids[key] = s3_identity(b, {})
                problems.append((key, f"{bucket.uri(b.key)}: no backup_manifest (or neither PG_VERSION nor "
                                      f"a base.tar): not a base backup whose WAL range can be read"))
            else:
                heads[key], ids[key] = head, s3_identity(b, head[1])
        except OSError as exc:
            problems.append((key, f"cannot be read: {exc.strerror or exc}"))
        except client_errors() as exc:
            problems.append((key, f"cannot be read: {describe_error(exc, bucket.uri(b.key))}"))
    due = set(st.select_full_reads(ids, fraction=config.reread_fraction, now=now))
    for key in sorted(ids):
        b = backups[key]
        if b.path is None and key not in heads:
            continue
        try:
            if b.path is not None:
                backup = read_base_backup(b.path)
                complaint = verify_files(backup, _scratch(config)) if key in due else None
                what = "pg_verifybackup"
            else:
                backup = s3_range(bucket, b.key, heads[key])
                complaint = check_s3_files(bucket, backup, b.key) if key in due else None
                what = "its objects in S3"
        except BackupError as exc:
            problems.append((key, str(exc)))
            continue
        except client_errors() as exc:
            problems.append((key, f"cannot be read: {describe_error(exc, bucket.uri(b.key))}"))
            continue
        if complaint:
            problems.append((key, f"{what}: {complaint}"))
            continue
        found.append((key, backup))
    return found, problems, ids, due


def _scratch(config: Config):
    """Where an lz4/zstd tar base backup is inflated to be verified (the restores' scratch root)."""
    from backupkit.restore.scratch import local_scratch_root

    return local_scratch_root(config) / "wal-verify"


def _catalog(source: Source, bucket, problems: list[tuple[str, str]]) -> dict:
    """key -> catalog entry: every base backup on disk and in the bucket; local ones only (and a
    problem) when the bucket cannot be listed."""
    try:
        listed = Catalog(source, bucket).backups()
    except client_errors() as exc:
        where = bucket.uri(source.s3_prefix)
        problems.append((source.name, f"the base backups in {where} cannot be listed: {describe_error(exc, where)}"))
        listed = Catalog(source).local()
    return {backup_id(source.name, b.name): b for b in listed}


def _backup_verdicts(st: VerificationState, report: WalReport, found, problems, ids, due: set[str],
                     now: datetime) -> None:
    """Remember the verdict of each base backup read in full now, and of any that failed (its WAL
    gone, say), so retention counts only restorable ones as verified; the others keep the time of
    their last full read, which the rolling re-read goes by."""
    failed = dict(problems)
    for key, b in found:
        bad = [p.detail for p in report.problems if p.kind == "base_backup_wal_missing" and b.source in p.detail]
        if bad:
            failed[key] = bad[0]
    for key, ident in ids.items():
        if key in due or key in failed:
            st.record(key, None, ident, key not in failed, now, failed.get(key, ""))


# -- the archive ----------------------------------------------------------------------------------
def _verify(config: Config, source: Source, reader, directory, now: datetime, st: VerificationState,
            entries, bucket=None) -> list[CheckResult]:
    spec = source.spec
    found, problems, ids, due = base_backups(config, source, st, now, bucket)
    seg_ids = memory.identities(entries, directory)
    known = memory.remembered(st, source.name, seg_ids, fraction=config.reread_fraction, now=now)
    report = verify_archive(entries, reader, base_backups=[b for _, b in found],
                            backup_problems=[(k, d) for k, d in problems], max_age=spec.max_age, now=now,
                            jobs=_jobs(config), known=known)
    memory.remember(st, source.name, report, seg_ids, now)
    _backup_verdicts(st, report, found, problems, ids, due, now)
    results = [CheckResult(f"{source.name}/{p.segment}" if p.segment else source.name, f"wal_{p.kind}", False,
                           (f"timeline {p.timeline}: " if p.timeline and not p.segment else "") + p.detail)
               for p in report.problems]
    if spec.segment_size and report.segment_size and report.segment_size != spec.segment_size:
        results.append(CheckResult(source.name, "wal_segment_size", False,
                                   f"the archive's segments are {report.segment_size >> 20} MB, the configuration "
                                   f"says {spec.segment_size >> 20} MB"))
    segments = len(seg_ids)
    results.append(CheckResult(source.name, "wal_archive", True,
                               f"{reader.location}: read {len(report.read)} of {segments} segments "
                               f"({len(known)} unchanged since they passed), {len(found)} base backup(s)"))
    results.append(window_result(source, report, now))
    save_window(config, source, report, now)
    return results


def verify_local(config: Config, source: Source, now: datetime, state: VerificationState) -> list[CheckResult]:
    """The daily integrity check of the archive in ``archive_dir`` (see the module doc)."""
    spec = source.spec
    if spec.archive_dir is None:
        return [CheckResult(source.name, "wal_archive", True,
                            "kept in S3 only: check_cloud_copies verifies the archive under "
                            f"{spec.archive_s3_prefix}")]
    reader = LocalArchive(spec.archive_dir)
    try:
        entries = list(reader.entries())
    except ArchiveUnavailable as exc:
        return [CheckResult(source.name, "wal_archive", False, str(exc))]
    return _verify(config, source, reader, spec.archive_dir, now, state, entries)


def window_result(source: Source, report: WalReport, now: datetime) -> CheckResult:
    w = report.window
    if w is None or w.start is None or w.start.time is None or w.end.time is None:
        why = ("no base backup's WAL is archived whole" if report.base_backups else "no base backup is known")
        return CheckResult(source.name, WINDOW_CHECK, False, f"no point-in-time recovery window: {why}")
    rpo = now - w.end.time
    if -rpo > CLOCK_SKEW:   # a commit "after now": the database server's clock and this host's disagree
        return CheckResult(source.name, WINDOW_CHECK, False,
                           f"the window ends at {_iso(w.end.time)}, {_hours(-rpo)} after this host's time "
                           f"({_iso(now)}): the database server's clock and this host's disagree by more than "
                           f"{_hours(CLOCK_SKEW)}, so the RPO cannot be judged")
    return CheckResult(source.name, WINDOW_CHECK, True,
                       f"recoverable from {_iso(w.start.time)} to {_iso(w.end.time)} (timeline {w.end.timeline}); "
                       f"the last commit is {_hours(rpo)} old (RPO)")


def _hours(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    return f"{seconds // 60} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


# -- the window, between tasks --------------------------------------------------------------------
def save_window(config: Config, source: Source, report: WalReport, now: datetime) -> None:
    w = report.window
    path = config.state.facts_file(f"pitr-{source.name}")
    data = {"source": source.name, "checked_at": _iso(now), "ok": report.ok,
            "start": _iso(w.start.time) if w and w.start else None, "end": _iso(w.end.time) if w else None,
            "start_lsn": w.to_dict()["from"]["lsn"] if w and w.start else None,
            "end_lsn": w.to_dict()["to"]["lsn"] if w else None, "timeline": w.end.timeline if w else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def load_window(config: Config, source: Source) -> dict | None:
    """The last verified window: ``start``, ``end`` (aware datetimes), ``timeline``, ``checked_at``;
    None when none was found (or the file is not one this module wrote)."""
    try:
        data = json.loads(config.state.facts_file(f"pitr-{source.name}").read_text())
        start, end = data.get("start"), data.get("end")
        if not start or not end:
            return None
        out = {"start": datetime.fromisoformat(start.replace("Z", "+00:00")),
               "end": datetime.fromisoformat(end.replace("Z", "+00:00")), "timeline": data.get("timeline"),
               "checked_at": datetime.fromisoformat(data["checked_at"].replace("Z", "+00:00")),
               "end_lsn": data.get("end_lsn"), "start_lsn": data.get("start_lsn")}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if any(out[k].tzinfo is None for k in ("start", "end", "checked_at")) or out["start"] > out["end"]:
        return None   # not a file this module wrote
    return out


# -- the copy in S3 -------------------------------------------------------------------------------
def check_s3_copy(config: Config, source: Source, bucket, *, now: datetime | None,
                  state: VerificationState) -> list[CheckResult]:
    """The archive's copy under ``archive_s3_prefix`` (see the module doc)."""
    from backupkit import clock
    from backupkit.wal.s3 import S3Archive

    spec = source.spec
    if spec.archive_s3_prefix is None:
        return []
    now = now or clock.now()
    remote = S3Archive(bucket, spec.archive_s3_prefix)
    try:
        objects = {e.name: e for e in remote.entries()}
    except ArchiveUnavailable as exc:
        return [CheckResult(source.name, "wal_s3_copy", False, str(exc))]
    if spec.archive_dir is None:
        return _verify(config, source, remote, None, now, state, list(objects.values()), bucket)
    local = LocalArchive(spec.archive_dir)
    try:
        entries = list(local.entries())
    except ArchiveUnavailable as exc:
        return [CheckResult(source.name, "wal_s3_copy", False, str(exc))]
    return _compare(source, spec, remote, entries, objects, state, now)


def _compare(source, spec, remote, entries, objects, st: VerificationState, now) -> list[CheckResult]:
    """Each archived file against its copy: present once older than ``max_age``, the same size, and
    the same bytes by the strongest evidence S3 stored (:mod:`backupkit.checks.s3copy`, as for dumps).
    A copy proved for this ETag and this local file (size, mtime, ctime, inode) is not compared again."""
    from backupkit.checks.s3copy import s3_copy_report
    from backupkit.wal.naming import classify

    where = remote.location
    results, missing, evidence, compared = [], [], Counter(), 0
    cache = st.checksum_cache
    for e in sorted(entries, key=lambda e: e.name):
        if classify(e.name) is None:
            continue
        obj = objects.get(e.name)
        art = f"{source.name}/{e.name}"
        if obj is None:
            if e.mtime is None or now - e.mtime > spec.max_age:
                missing.append(e.name)
            continue
        if obj.size != e.size:
            results.append(CheckResult(art, "wal_s3_size", False, f"{where}{e.name} is {obj.size} bytes, "
                                                                  f"the archived file {e.size}"))
            continue
        path = spec.archive_dir / e.name
        try:
            ident = FileIdentity.of(path)
        except OSError:
            continue  # removed since the listing (retention): nothing to compare
        key = f"wal-copy:{art}:{(obj.etag or '').strip(chr(34))}:{ident.size}:{ident.token}"
        if key in cache:
            evidence[f"remembered ({cache[key].split()[0]})"] += 1
            continue
        compared += 1
        report = s3_copy_report(remote.bucket, remote.prefix + e.name, local_size=ident.size, local_sha256=None,
                                local_path=path, artifact=art)
        failed = [r for r in report.results if not r.ok]
        if failed:
            r = failed[-1]
            results.append(CheckResult(art, "wal_s3_checksum" if r.check == "s3_checksum" else f"wal_{r.check}",
                                       False, r.detail))
        elif report.compared:
            cache[key] = f"{report.method} {now:%Y-%m-%d}"
            evidence[report.method] += 1
    if missing:
        results.append(CheckResult(f"{source.name}/{missing[0]}", "wal_s3_present", False,
                                   f"{len(missing)} archived file(s) older than {_hours(spec.max_age)} are not in "
                                   f"{where}: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"))
    proved = ", ".join(f"{n} by {how}" for how, n in sorted(evidence.items())) or "none"
    results.append(CheckResult(source.name, "wal_s3_copy", True,
                               f"{where}: {len(objects)} objects; copies proved: {proved} ({compared} compared now)"))
    return results


__all__ = ["verify_local", "check_s3_copy", "load_window", "save_window", "window_result", "base_backups",
           "WINDOW_CHECK"]
