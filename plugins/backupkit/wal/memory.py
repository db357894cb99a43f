"""WAL segments verified before, remembered between daily runs (the verification memory).

Each segment is a record ``SOURCE/wal/NAME`` in :class:`backupkit.state.VerificationState`
(its identity: size, mtime, ctime, inode for a local file; size and LastModified for an
object) plus what its scan found (JSON in the ``wal_scans`` table), so an unchanged segment
that passed is not read again: the verifier reuses its scan for junctions and the window.
The rolling re-read is the same as for backups: each run also re-reads the
``reread_fraction`` of remembered segments whose last read is oldest, and a segment whose
read failed, or that changed, is read every run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path

from backupkit.state import FileIdentity, VerificationState
from backupkit.wal.archive import ArchiveEntry
from backupkit.wal.naming import classify
from backupkit.wal.scan import SegmentScan

_FIELDS = {f.name for f in fields(SegmentScan)}


def segment_key(source: str, name: str) -> str:
    return f"{source}/wal/{name}"


def identities(entries: list[ArchiveEntry], directory: Path | None) -> dict[str, FileIdentity]:
    """The identity of every segment file listed (a stat each for a directory, the listing for S3)."""
    out = {}
    for e in entries:
        c = classify(e.name)
        if c is None or c.kind != "segment":
            continue
        if directory is not None:
            try:
                out[e.name] = FileIdentity.of(directory / e.name)
            except OSError:
                continue  # vanished: the verifier reports it when it reads the listing
        else:
            stamp = int(e.mtime.timestamp() * 1e9) if e.mtime else 0
            out[e.name] = FileIdentity(e.size, stamp)
    return out


def scan_to_json(scan: SegmentScan) -> str:
    return json.dumps(asdict(scan), separators=(",", ":"))


def scan_from_json(text: str) -> SegmentScan | None:
    """A remembered scan, or None for anything that is not one (a damaged store re-reads)."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or set(data) != _FIELDS:
            return None
        data["switches"] = [tuple(int(x) for x in sw) for sw in data["switches"]]
        return SegmentScan(**data)
    except (ValueError, TypeError):
        return None


def remembered(st: VerificationState, source: str, ids: dict[str, FileIdentity], *, fraction: float,
               now: datetime) -> dict[str, SegmentScan]:
    """The scans to reuse this run: segments that passed, are unchanged and are not due for a re-read."""
    keys = {segment_key(source, n): n for n in ids}
    due = set(st.select_full_reads({k: ids[n] for k, n in keys.items()}, fraction=fraction, now=now))
    scans = st.wal_scans
    known = {}
    for key, name in keys.items():
        if key in due:
            continue
        text = scans.get(key)
        scan = scan_from_json(text) if text else None
        if scan is not None and scan.name == name and scan.problem is None:
            known[name] = scan
    return known


def remember(st: VerificationState, source: str, report, ids: dict[str, FileIdentity], now: datetime) -> int:
    """Record every segment read in this run (passed: with its scan) and forget deleted ones."""
    bad = {p.segment: p.detail for p in report.problems if p.segment}
    rows, extras = [], {}
    for name in sorted(report.read):
        if name not in ids:
            continue
        key = segment_key(source, name)
        ok = name not in bad and report.scans.get(name) is not None and report.scans[name].problem is None
        rows.append((key, ids[name], ok, now, bad.get(name, "")))
        if ok:
            extras[key] = scan_to_json(report.scans[name])
    st.record_many(rows, extras)
    prefix = segment_key(source, "")
    gone = [k for k in st.records(prefix=prefix) if k[len(prefix):] not in ids]
    st.forget(gone)
    return len(rows)


__all__ = ["segment_key", "identities", "remembered", "remember", "scan_to_json", "scan_from_json"]
