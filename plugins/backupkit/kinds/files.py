"""File sets backed up as tar archives (``tar -czf``): configuration under ``file_sets:``.

Checked as safe archives (:mod:`backupkit.checks.archive`), restored by safe extraction of
chosen paths (:mod:`backupkit.restore.files`); ``paths`` are what the newest archive must
contain (the quarterly audit's coverage control, and every restore test's check).
"""

from __future__ import annotations

from dataclasses import dataclass

from backupkit.config.reader import Reader
from backupkit.kinds.base import KindRestore, SourceKind


@dataclass(frozen=True)
class FileSetSpec:
    paths: tuple[str, ...] = ()


class FilesKind(SourceKind):
    id = "files"
    section = "file_sets"
    label = "file set"
    restores_into = "files"

    def parse_spec(self, r: Reader) -> FileSetSpec:
        return FileSetSpec(paths=r.strings("paths"))

    def coverage_paths(self, source) -> tuple[str, ...]:
        return source.spec.paths

    # -- restores -----------------------------------------------------------------------------
    def scratch_target(self, source, new_database, work_dir):
        from backupkit.restore.scratch import ScratchDirectory

        return ScratchDirectory(work_dir)

    def restore(self, job, fetched, target) -> KindRestore:
        """Safe extraction into the scratch directory; checksums from SHA256SUMS, the configured paths present."""
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
        for p in job.source.spec.paths:
            rel = normalize_name(p)
            present = (extracted / rel).exists()
            out.add(f"path {rel}", present, "restored" if present else "missing from the archive")
        if not er.written:
            out.add("files", False, "the archive holds no files")
        out.info.update(restore_seconds=round(time.monotonic() - t0, 3), files=len(er.written),
                        bytes_written=er.bytes_written, verified_files=len(er.verified),
                        checksum_manifest=er.checksum_manifest)
        return out


KIND = FilesKind()

__all__ = ["KIND", "FileSetSpec", "FilesKind"]
