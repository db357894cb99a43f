"""The retention audit log: every deletion, announced before it happens and confirmed after.

Retention is the one place this project deletes backups, so each deletion leaves a
trail that survives a crash at any point. Records are JSON lines, appended and fsynced
to ``state_dir/audit/retention.jsonl`` (the log of record, never rewritten) and to a
per-run file ``state_dir/audit/runs/<run_id>/<source>.jsonl`` that is mirrored to the
bucket as ``audit/retention/<run_id>/<source>.jsonl`` at the end of the run (and when it
fails). A run file that could not be mirrored stays on disk and is uploaded by the next
run, then removed.

Record (one JSON object per line, keys sorted)::

    {"time": "...Z", "run_id": "...", "source": "trixtech-db", "artifact": "trixtech_..dump",
     "action": "intent", "keys": ["database/trixtech_..dump", ...], "paths": ["/opt/..", ...],
     "size": 123, "bytes": 370, "sha256": "..", "reasons": ["not kept by any rule"],
     "dry_run": false, "detail": "", "bucket": "trixtech-backups"}

``size`` is the backup file's, ``bytes`` everything the deletion frees (companions and
both copies); ``sha256`` is the verified digest (state store) or the sidecar's.

Actions for a backup: ``intent`` (written and fsynced *before* anything is deleted),
then ``deleted`` or ``failed``; ``abandoned`` when a later run no longer plans to delete
a backup whose deletion was interrupted. Noncurrent S3 versions: ``purge_intent`` then
``purged`` / ``purge_failed``. Run level (no artifact): ``refused`` and ``run`` (the
summary). A backup whose last record is ``intent`` or ``failed`` may be half-deleted:
:meth:`AuditLog.pending` lists them so the next sweep finishes them (and the daily
verification reports them as deletions in progress instead of failing on them).

Torn lines: a crash or a full disk mid-append leaves a last line without its end. Every
append therefore starts on a fresh line (a newline is written first when the file does
not end with one), so the torn fragment stays a line of its own; readers skip it and
list it in :attr:`AuditLog.torn` (line number and the start of the fragment), which the
sweep reports. A torn record is never an ``intent`` whose deletion went ahead: the
deletion starts only after the append returned and was fsynced. A torn ``deleted``
leaves the backup pending, and the next sweep finishes (finds nothing left to) delete.

A dry run writes nothing (no record, no file, no upload): it must be safe to run from
anywhere, and the report it returns already says what would be deleted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from backupkit import clock
from backupkit.storage.localfs import append_durably as _append_durably
from backupkit.storage.objectstore import Bucket
from backupkit.storage.statedir import StateDir, safe_segment

S3_PREFIX = "audit/retention/"
PENDING_ACTIONS = ("intent", "failed")
SETTLED_ACTIONS = ("deleted", "abandoned")


def safe_run_id(run_id: str) -> str:
    """A run id usable as one path segment and S3 key segment (Airflow ids contain ``:`` and ``+``)."""
    try:
        return safe_segment(run_id)
    except ValueError:
        raise ValueError(f"unusable run id {run_id!r}") from None


def utc_now() -> str:
    return clock.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_record(*, run_id: str, source: str, action: str, artifact: str | None = None,
                keys: Sequence[str] = (), paths: Sequence[str] = (), size: int = 0, sha256: str | None = None,
                reasons: Sequence[str] = (), dry_run: bool = False, detail: str = "", **extra: Any) -> dict:
    """One audit record; ``time`` is the wall clock (when it happened, not the plan's ``now``)."""
    rec = {"time": utc_now(), "run_id": run_id, "source": source, "artifact": artifact, "action": action,
           "keys": list(keys), "paths": list(paths), "size": int(size), "sha256": sha256,
           "reasons": list(reasons), "dry_run": bool(dry_run), "detail": detail}
    rec.update(extra)
    return rec


class AuditLog:
    """Append-only JSON-lines audit of retention deletions under ``state_dir/audit``.

    Nothing is created until the first :meth:`append`, so constructing one is free.
    """

    def __init__(self, state_dir: Path | str, *, journal: str = "retention"):
        self.state = StateDir(state_dir)
        self.dir = self.state.journal_dir
        self.path = self.state.retention_journal if journal == "retention" else self.state.restore_journal
        self.torn: list[tuple[int, str]] = []  # (line number, start of the fragment) seen by the last read

    def run_path(self, run_id: str, source: str) -> Path:
        return self.state.run_journal(safe_run_id(run_id), source)

    @staticmethod
    def mirror_key(run_id: str, source: str) -> str:
        return f"{S3_PREFIX}{safe_run_id(run_id)}/{source}.jsonl"

    def append(self, records: Iterable[dict]) -> int:
        """Append records (all of one run and source) to the log and to their run file, fsynced.

        The log of record is written first: a crash in between leaves the run file (the
        mirror) short, never the log.
        """
        records = list(records)
        if not records:
            return 0
        data = "".join(json.dumps(r, sort_keys=True, separators=(",", ":"), default=str) + "\n"
                       for r in records).encode()
        _append_durably(self.path, data)
        first = records[0]
        _append_durably(self.run_path(first["run_id"], first["source"]), data)
        return len(records)

    def records(self, source: str | None = None) -> Iterator[dict]:
        """Every record (of ``source``), oldest first. Torn lines (a crash or full disk mid-append)
        are skipped and listed in :attr:`torn`; blank lines are ignored."""
        self.torn = []
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = None
                if not isinstance(rec, dict):
                    self.torn.append((lineno, line[:80].decode("utf-8", "replace").rstrip("\n")))
                    continue
                if source is None or rec.get("source") == source:
                    yield rec

    def torn_warnings(self) -> list[str]:
        """The torn lines of the last read, one sentence each (for reports)."""
        return [f"{self.path}: line {n} is a torn record (a crash or a full disk mid-append), skipped: {text!r}"
                for n, text in self.torn]

    def pending(self, source: str) -> dict[str, dict]:
        """Backups of ``source`` whose last record is ``intent`` or ``failed``: possibly half-deleted.

        Streams the log; only the pending records are held in memory.
        """
        pending: dict[str, dict] = {}
        for rec in self.records(source):
            name, action = rec.get("artifact"), rec.get("action")
            if not name:
                continue
            if action in PENDING_ACTIONS:
                pending[name] = rec
            elif action in SETTLED_ACTIONS:
                pending.pop(name, None)
        return pending

    def mirror(self, bucket: Bucket, run_id: str, source: str) -> str:
        """Upload this run's records to ``audit/retention/<run_id>/<source>.jsonl``; then drop the local run file.

        Raises on failure (the caller reports it); the run file stays for the next run.
        """
        path = self.run_path(run_id, source)
        if not path.exists():
            return ""
        key = self.mirror_key(run_id, source)
        bucket.upload(path, key, ContentType="application/x-ndjson")
        path.unlink()
        try:
            path.parent.rmdir()
        except OSError:
            pass  # other sources of the same run still have files there
        return key

    def unmirrored(self) -> list[tuple[str, str]]:
        """(run_id, source) of run files left by runs whose upload failed."""
        runs = self.state.run_journals
        if not runs.is_dir():
            return []
        return sorted((p.parent.name, p.stem) for p in runs.glob("*/*.jsonl"))


__all__ = ["AuditLog", "make_record", "safe_run_id", "S3_PREFIX"]
