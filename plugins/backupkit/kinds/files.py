"""File sets backed up as tar archives (``tar -czf``): configuration under ``file_sets:``.

Checked as safe archives (:mod:`backupkit.checks.archive`), restored by safe extraction of
chosen paths (:mod:`backupkit.restore.files`); ``paths`` are what the newest archive must
contain (the quarterly audit's coverage control, and every restore test's check).
"""

from __future__ import annotations

from dataclasses import dataclass

from backupkit.config.reader import Reader
from backupkit.kinds.base import SourceKind


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


KIND = FilesKind()

__all__ = ["KIND", "FileSetSpec", "FilesKind"]
