"""The seam every source kind plugs into: what the configuration, the checks and the jobs ask of a kind.

A kind is one module under :mod:`backupkit.kinds` with one :class:`SourceKind` object. Adding
a kind (MySQL dumps, etcd snapshots, WAL archives, Kubernetes resources) is that module, its
configuration spec and its tests; the jobs call the kind through these methods and never
branch on ``source.kind`` themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from backupkit.config.reader import Reader
from backupkit.model import CheckResult


class SourceKind:
    """One kind of source. Subclasses set the class attributes and override what differs.

    :cvar id: the value of ``Source.kind`` (also the registry key)
    :cvar section: the list in the configuration file that declares such sources
    :cvar label: how messages name one source of the kind ("database", "file set")
    :cvar restores_into: what a restore produces: "database" (a scratch server) or "files"
    """

    id: ClassVar[str]
    section: ClassVar[str]
    label: ClassVar[str]
    restores_into: ClassVar[str] = "files"

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

    def coverage_paths(self, source: Any) -> tuple[str, ...]:
        """Paths the newest backup must contain (the audit's coverage control); none by default."""
        return ()

    def __repr__(self) -> str:
        return f"<source kind {self.id}>"


__all__ = ["SourceKind"]
