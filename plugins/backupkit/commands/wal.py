"""``backupctl wal verify PATH_OR_S3_PREFIX``: can the archive's WAL restore every retained base backup?

``[--base-backup PATH]... [--max-age DURATION] [--json]``. Is the WAL archive whole from
the oldest retained base backup to its newest segment, on every timeline, and still fed? Exit 0 when sound, 1 when a problem was found (one
line each, or the ``--json`` object), 2 for usage errors. An S3 prefix is read with the
project's S3 client (``AWS_ENDPOINT_URL`` for an S3-compatible endpoint).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from backupkit import clock
from backupkit.commands import EXIT_OK, EXIT_PROBLEM, UsageError


def register(sub: argparse._SubParsersAction) -> None:
    wal = sub.add_parser("wal", help="WAL archives (point-in-time recovery)", description="WAL archive commands")
    wal_sub = wal.add_subparsers(dest="wal_command", required=True)
    p = wal_sub.add_parser("verify", help="check a WAL archive: continuity, timelines, base backups, freshness",
                           description=__doc__.splitlines()[0])
    p.add_argument("archive", metavar="PATH_OR_S3_PREFIX")
    p.add_argument("--base-backup", action="append", default=[], metavar="PATH", type=Path,
                   help="a retained pg_basebackup directory (plain or tar); repeat for each. Default: the "
                        "archive's .backup labels")
    p.add_argument("--max-age", metavar="DURATION", type=_age,
                   help="the newest segment must be younger than this, e.g. 15min, 2h, 1d (default: not checked)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="processes reading a local archive (default: one per CPU)")
    p.add_argument("--json", action="store_true", help="print {ok, problems, timelines, window} as JSON")
    p.set_defaults(run=run)


def _age(text: str):
    from backupkit.wal.verify import parse_age

    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def open_archive(location: str):
    """A reader for a directory or an ``s3://bucket/prefix``."""
    if location.startswith("s3://"):
        from backupkit.storage.objectstore import Bucket, s3_client
        from backupkit.wal.s3 import S3Archive, split_prefix

        try:
            bucket, prefix = split_prefix(location)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return S3Archive(Bucket(s3_client(endpoint_url=os.environ.get("AWS_ENDPOINT_URL")), bucket), prefix)
    from backupkit.wal.archive import LocalArchive

    path = Path(location)
    if not path.is_dir():
        raise UsageError(f"{location}: not a directory (nor an s3:// prefix)")
    return LocalArchive(path)


def run(args: argparse.Namespace) -> int:
    from backupkit.wal.archive import ArchiveUnavailable
    from backupkit.wal.backups import BackupError, read_base_backup, verify_files
    from backupkit.wal.verify import verify_archive

    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    reader = open_archive(args.archive)
    backups, backup_problems = [], []
    for path in args.base_backup:
        if not path.is_dir():
            raise UsageError(f"--base-backup {path}: not a directory")
        try:
            backup = read_base_backup(path)
        except BackupError as exc:
            backup_problems.append((str(path), str(exc)))
            continue
        backups.append(backup)
        complaint = verify_files(backup)
        if complaint:
            backup_problems.append((str(path), f"pg_verifybackup: {complaint}"))
    try:
        entries = list(reader.entries())
    except ArchiveUnavailable as exc:
        raise UsageError(str(exc)) from None
    report = verify_archive(entries, reader, base_backups=backups, backup_problems=backup_problems,
                            max_age=args.max_age, now=clock.now(), jobs=args.jobs)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report)
    return EXIT_OK if report.ok else EXIT_PROBLEM


def print_report(report) -> None:
    for p in report.problems:
        where = " ".join(x for x in (p.segment, f"(timeline {p.timeline})" if p.timeline else None) if x)
        print(f"{report.location}: {p.kind}: {where + ': ' if where else ''}{p.detail}")
    for t in report.timelines:
        window = t.window.to_dict() if t.window else None
        span = "no recoverable window" if window is None else f"window {_point(window['from'])} .. {_point(window['to'])}"
        print(f"{report.location}: timeline {t.timeline}: {t.segments} segments {t.first_segment} .. "
              f"{t.last_segment}, checked from {t.checked_from}; {span}")
    if report.ok:
        size = f"{report.segment_size >> 20} MB segments" if report.segment_size else "no segments"
        print(f"{report.location}: ok ({size}, {len(report.timelines)} timeline(s))")


def _point(point: dict | None) -> str:
    if point is None:
        return "(no base backup known)"
    return f"{point['lsn']} ({point['time'] or 'time unknown'}, timeline {point['timeline']})"
