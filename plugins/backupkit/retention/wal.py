"""Retention of a WAL archive, after the sweep of its base backups (``wal_archives:`` sources).

Rules (docs/wal.md, "Retention"):

- The base backups are planned like any backups (policy, guard rails, holds). One more
  hold: with ``keep_pitr_window: W``, the newest verified base backup taken at or before
  ``now - W`` (else the oldest one) is held, since every point of the window is recovered
  from it.
- WAL is deletable only below the start of the oldest base backup that remains (kept or
  held): deleting a base backup frees its WAL up to the next kept base backup's start, never
  more. A segment, partial segment or ``.backup`` label is deleted when its segment number
  (the name without its timeline, as pg_archivecleanup compares) is below that start's, and
  it was archived before ``now - W``. ``.history`` files are never deleted.
- Nothing is deleted when the plan was refused, a listing is incomplete, no base backup
  remains, or the start of a remaining one cannot be read (it has no local copy, or its
  manifest is damaged): each is said in the report.
- Deletion goes through the sweep's machinery: a dry run deletes nothing; the sweep's
  lock; an ``intent`` audit record per file (artifact ``wal/NAME``) before S3's
  DeleteObjects and the local unlink, then ``deleted`` or ``failed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable, Sequence

from backupkit.retention.plan import Candidate
from backupkit.wal.naming import classify, segment_number, segment_of, segment_name

WAL_ARTIFACT = "wal/"


@dataclass(frozen=True)
class WalFile:
    name: str
    mtime: datetime | None        # when it was archived (the oldest of the two sides)
    local: bool = False
    s3: bool = False


@dataclass(frozen=True)
class WalPlan:
    """What the WAL part of a sweep deletes, and the boundary it respects."""

    boundary: str | None                       # the oldest remaining base backup's start segment (tli 1 form)
    delete: tuple[WalFile, ...] = ()
    kept: int = 0
    reason: str = ""                           # why nothing is deleted, when so

    def to_dict(self, names: bool = True) -> dict:
        d = {"boundary": self.boundary, "delete": len(self.delete), "kept": self.kept, "reason": self.reason}
        if names:
            d["deleted_names"] = [f.name for f in self.delete]
        return d


def window_hold(candidates: Sequence[Candidate], keep_window: timedelta, now: datetime) -> dict[str, str]:
    """The base backup every point of ``keep_pitr_window`` is recovered from (held), if any."""
    if keep_window <= timedelta(0) or not candidates:
        return {}
    edge = now - keep_window
    dated = sorted((c for c in candidates if c.timestamp is not None), key=lambda c: (c.timestamp, c.name))
    before = [c for c in dated if c.timestamp <= edge]
    passed = [c for c in before if c.verified == "passed"]
    pick = (passed or before or dated[:1])
    if not pick:
        return {}
    c = pick[-1]
    return {c.name: f"needed for keep_pitr_window {_span(keep_window)}: points from {edge:%Y-%m-%d %H:%M} UTC "
                    f"on are recovered from it"}


def _span(delta: timedelta) -> str:
    s = int(delta.total_seconds())
    return f"{s // 86400}d" if s % 86400 == 0 else f"{s // 3600}h" if s % 3600 == 0 else f"{s}s"


def plan_wal(files: Iterable[WalFile], remaining_starts: Sequence[tuple[str, int | None]], *, segment_size: int,
             now: datetime, keep_window: timedelta, usable: bool = True, why_not: str = "") -> WalPlan:
    """The files to delete (pure: the golden and property tests call it).

    ``remaining_starts``: (base backup, start LSN or None when unknown) of every base backup
    that stays. ``usable`` False (refused plan, incomplete listing): nothing, for ``why_not``.
    """
    files = list(files)
    if not usable:
        return WalPlan(None, (), len(files), why_not)
    if not remaining_starts:
        return WalPlan(None, (), len(files), "no base backup remains: the WAL is kept")
    unknown = [name for name, lsn in remaining_starts if lsn is None]
    if unknown:
        return WalPlan(None, (), len(files), f"the start of base backup {unknown[0]} cannot be read: the WAL is kept")
    start = min(lsn for _, lsn in remaining_starts)
    boundary = segment_of(start, segment_size)
    edge = now - keep_window
    delete, kept = [], 0
    for f in sorted(files, key=lambda f: f.name):
        c = classify(f.name)
        segno = segment_number(c, segment_size) if c is not None and c.kind != "history" else None
        if segno is not None and segno < boundary and f.mtime is not None and f.mtime < edge:
            delete.append(f)
        else:
            kept += 1
    return WalPlan(segment_name(1, boundary, segment_size)[8:], tuple(delete), kept)


# -- inside a sweep ----------------------------------------------------------------------------------
@dataclass
class _Listing:
    files: dict[str, WalFile] = field(default_factory=dict)
    complete: bool = True


def list_archive(source, bucket, report) -> _Listing:
    """Both sides of the archive by name (a failed listing makes it incomplete, said in the report)."""
    from backupkit.storage.objectstore import client_errors, error_code
    from backupkit.wal.archive import ArchiveUnavailable, LocalArchive
    from backupkit.wal.s3 import S3Archive

    spec, out = source.spec, _Listing()
    sides: list[tuple[str, Any]] = []
    if spec.archive_dir is not None:
        sides.append(("local", LocalArchive(spec.archive_dir)))
    if spec.archive_s3_prefix is not None:
        sides.append(("s3", S3Archive(bucket, spec.archive_s3_prefix)))
    for side, reader in sides:
        try:
            for e in reader.entries():
                old = out.files.get(e.name)
                mtime = min((t for t in (e.mtime, old.mtime if old else None) if t is not None), default=None)
                out.files[e.name] = WalFile(e.name, mtime, (old.local if old else False) or side == "local",
                                            (old.s3 if old else False) or side == "s3")
        except (ArchiveUnavailable, *client_errors()) as exc:
            out.complete = False
            code = error_code(exc)[0] if not isinstance(exc, ArchiveUnavailable) else "WalListing"
            report.error(None, f"cannot list the WAL archive ({side}): {exc}", code=code)
    return out


def base_backup_start(source, name: str) -> int | None:
    from backupkit.wal.backups import BackupError, read_base_backup

    path = Path(source.local_dir) / name
    try:
        return read_base_backup(path).start_lsn
    except (BackupError, OSError):
        return None


def segment_size_of(source, bucket, listing: _Listing) -> int | None:
    """The configured segment size, else the one the segments' long headers say."""
    if source.spec.segment_size:
        return source.spec.segment_size
    from backupkit.wal.archive import ArchiveEntry, LocalArchive
    from backupkit.wal.inventory import sample_geometry
    from backupkit.wal.s3 import S3Archive

    spec = source.spec
    reader = LocalArchive(spec.archive_dir) if spec.archive_dir else S3Archive(bucket, spec.archive_s3_prefix)
    side = "local" if spec.archive_dir else "s3"
    entries = [ArchiveEntry(f.name, 0, f.mtime) for f in listing.files.values() if getattr(f, side)]
    geometry, _ = sample_geometry(entries, reader)
    return geometry.segment_size if geometry else None


def sweep_wal(sweep, plan) -> WalPlan:
    """The WAL part of ``sweep`` (a :class:`backupkit.retention.sweep._Sweep`) after its base backups' ``plan``."""
    from backupkit.storage.objectstore import ObjectRef

    source, r = sweep.source, sweep.report
    listing = list_archive(source, sweep.s3, r)
    remaining = [d.name for d in plan.decisions if d.action != "delete"]
    starts = [(name, base_backup_start(source, name)) for name in remaining]
    size = segment_size_of(source, sweep.s3, listing) if listing.files else None
    usable, why = True, ""
    if plan.refused:
        usable, why = False, "the plan was refused: no WAL deleted"
    elif not listing.complete or not r.listing_complete:
        usable, why = False, "a listing was incomplete: no WAL deleted"
    elif size is None:
        usable, why = False, "the segment size cannot be read from the archive: no WAL deleted"
    wplan = plan_wal(listing.files.values(), starts, segment_size=size or 0, now=sweep.now,
                     keep_window=source.spec.keep_pitr_window, usable=usable, why_not=why)
    r.wal = wplan.to_dict(names=False)
    if sweep.dry_run or not wplan.delete:
        r.wal["would_delete"] = [f.name for f in wplan.delete] if sweep.dry_run else []
        return wplan
    prefix = source.spec.archive_s3_prefix
    for start in range(0, len(wplan.delete), sweep.batch_size):
        chunk = wplan.delete[start:start + sweep.batch_size]
        refs = {f.name: ObjectRef(prefix + f.name) for f in chunk if f.s3}
        paths = {f.name: source.spec.archive_dir / f.name for f in chunk if f.local}
        reasons = [f"below {wplan.boundary}, the start of the oldest base backup that remains"]
        sweep.write([sweep.record("intent", artifact=WAL_ARTIFACT + f.name,
                                  keys=[refs[f.name].key] if f.name in refs else [],
                                  paths=[str(paths[f.name])] if f.name in paths else [], reasons=reasons)
                     for f in chunk])
        result = sweep.s3.delete_batch(list(refs.values()), attempts=sweep.attempts, backoff=sweep.backoff,
                                       sleep=sweep.sleep) if refs else None
        done = []
        for f in chunk:
            ref = refs.get(f.name)
            if result is not None and ref is not None and ref in result.failed:
                code, msg = result.failed[ref]
                r.error(WAL_ARTIFACT + f.name, msg, key=ref.key, code=code)
                done.append(sweep.record("failed", artifact=WAL_ARTIFACT + f.name, keys=[ref.key],
                                         detail=f"S3 deletion failed ({code}: {msg}); local copy kept"))
                continue
            try:
                if f.name in paths:
                    paths[f.name].unlink(missing_ok=True)
            except OSError as exc:
                r.error(WAL_ARTIFACT + f.name, str(exc), code="LocalDeletion")
                done.append(sweep.record("failed", artifact=WAL_ARTIFACT + f.name, detail=str(exc)))
                continue
            done.append(sweep.record("deleted", artifact=WAL_ARTIFACT + f.name,
                                     keys=[ref.key] if ref else [], paths=[str(paths[f.name])] if f.name in paths
                                     else [], reasons=reasons))
            r.wal["deleted_files"] = r.wal.get("deleted_files", 0) + 1
        sweep.write(done)
        if result is not None and result.unreachable:
            r.error(None, "S3 unreachable: the rest of the WAL deletion was not attempted", code="NotAttempted")
            break
    return wplan


__all__ = ["WalFile", "WalPlan", "plan_wal", "window_hold", "sweep_wal", "WAL_ARTIFACT"]
