"""The seam every source kind plugs into: what the configuration, the checks and the jobs ask of a kind.

A kind is one module under :mod:`backupkit.kinds` with one :class:`SourceKind` object. Adding
a kind (MySQL dumps, etcd snapshots, WAL archives, Kubernetes resources) is that module, its
configuration spec and its tests; the jobs call the kind through these methods and never
branch on ``source.kind`` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from backupkit.config.reader import Reader
from backupkit.model import CheckResult


@dataclass
class KindRestore:
    """What a kind's restore found: its checks and the numbers it measured (seconds, rows, files)."""

    artifact: str
    checks: list[CheckResult] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, check: str, ok: bool, detail: str) -> bool:
        self.checks.append(CheckResult(self.artifact, check, ok, detail))
        return ok


class SourceKind:
    """One kind of source. Subclasses set the class attributes and override what differs.

    :cvar id: the value of ``Source.kind`` (also the registry key)
    :cvar section: the list in the configuration file that declares such sources
    :cvar label: how messages name one source of the kind ("database", "file set")
    :cvar restores_into: what a restore produces: "database" (a scratch server), "files", or
        "point_in_time" (a server recovered to a time: :mod:`backupkit.restore.pitr`)
    :cvar restorable: whether restore tests and the drill restore this kind's backups yet
    """

    id: ClassVar[str]
    section: ClassVar[str]
    label: ClassVar[str]
    restores_into: ClassVar[str] = "files"
    restorable: ClassVar[bool] = True   # restore tests and the DR drill restore its backups

    def parse_spec(self, r: Reader) -> Any:
        """The kind's own keys of one source (common keys are read by the loader)."""
        raise NotImplementedError

    def expected_format(self, source: Any) -> str:
        """The format the verification holds this source's backups to: a key of
        :data:`backupkit.checks.detect.FORMAT_KINDS` ("custom", "plain", ..., "files")."""
        return "files"

    def content_checks(self, source: Any, path: Path, artifact: str) -> list[CheckResult]:
        """Checks of what the backup holds beyond its format (run after the format check); none by default."""
        return []

    def storage_places(self, source: Any) -> tuple[tuple[Path, ...], tuple[str, ...]]:
        """(local directories, S3 prefixes) where this kind keeps backups beyond the source's
        ``local_dir`` and ``s3_prefix``: counted by the weekly storage report and scanned for
        encryption by the weekly report and the audit. None by default."""
        return (), ()

    def coverage_paths(self, source: Any) -> tuple[str, ...]:
        """Paths the newest backup must contain (the audit's coverage control); none by default."""
        return ()

    # -- the daily verification (backupkit.jobs.daily calls these) -------------------------------
    def verify_source(self, config: Any, source: Any, now: Any, state: Any) -> list[CheckResult] | None:
        """The integrity checks of a kind that is not verified backup by backup (a WAL archive), or
        None for the default: each backup read in full against its format, with the rolling re-read."""
        return None

    def cloud_checks(self, config: Any, source: Any, bucket: Any, state: Any) -> list[CheckResult]:
        """S3 checks beyond each backup's copy (a WAL archive's copy in the bucket); none by default."""
        return []

    # -- retention (backupkit.retention.sweep calls these) ---------------------------------------
    def retention_holds(self, source: Any, candidates: Any, now: Any) -> dict[str, str]:
        """name -> reason of backups this kind holds beyond the policy (none by default)."""
        return {}

    def after_sweep(self, sweep: Any, plan: Any) -> None:
        """More to delete once the backups' plan is applied (a WAL archive's segments); nothing by default."""

    def recovery_window(self, config: Any, source: Any) -> dict | None:
        """The recoverable window the last verification found (``start``, ``end``: aware datetimes,
        ``timeline``), for kinds that have one (WAL archives); None by default."""
        return None

    # -- restores (backupkit.restore.pipeline calls these) ------------------------------------
    # The default is an archive of files (file sets, Kubernetes resource backups): extracted safely
    # into a scratch directory, its checksums and the kind's coverage paths checked. A kind whose
    # backups restore otherwise (a database) overrides both.
    def scratch_target(self, source: Any, new_database: Callable[[], Any] | None, work_dir: Any) -> Any:
        """The throwaway target a restore test of ``source`` goes into (started and torn down by the
        caller): a scratch directory under ``work_dir`` by default."""
        from backupkit.restore.scratch import ScratchDirectory

        return ScratchDirectory(work_dir)

    def restore(self, job: Any, fetched: Any, target: Any) -> KindRestore:
        """Restore the fetched backup (:class:`backupkit.restore.fetch.Fetched`) into ``target`` and
        verify it; every finding is a check of the result, never an exception. By default: safe
        extraction (:mod:`backupkit.restore.files`), checksums from its SHA256SUMS, the coverage
        paths present."""
        import time

        from backupkit.restore.files import ExtractRefused, normalize_name, safe_extract

        out = KindRestore(job.artifact)
        limits = job.config.restore
        extracted = target.path / "extract"
        t0 = time.monotonic()
        try:
            er = safe_extract(fetched.path, extracted, max_total_bytes=limits.max_extract_bytes,
                              max_files=limits.max_extract_files, existing="fail")
        except (ExtractRefused, ValueError) as exc:
            out.add("extract", False, str(exc).replace(str(fetched.path), fetched.label)[:4000])
            return out
        out.checks += er.checks(job.artifact)
        for p in self.coverage_paths(job.source):
            rel = normalize_name(p)
            present = (extracted / rel).exists()
            out.add(f"path {rel}", present, "restored" if present else "missing from the archive")
        if not er.written:
            out.add("files", False, "the archive holds no files")
        out.info.update(restore_seconds=round(time.monotonic() - t0, 3), files=len(er.written),
                        bytes_written=er.bytes_written, verified_files=len(er.verified),
                        checksum_manifest=er.checksum_manifest)
        return out

    def __repr__(self) -> str:
        return f"<source kind {self.id}>"


__all__ = ["SourceKind", "KindRestore"]
