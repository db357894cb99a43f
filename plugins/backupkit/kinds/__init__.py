"""Source kinds: one module each, registered here (see :mod:`backupkit.kinds.base`)."""

from __future__ import annotations

from backupkit.kinds import files, k8s_resources, postgres, wal_archive
from backupkit.kinds.base import SourceKind

# In the order their sections appear in the configuration file.
KINDS: dict[str, SourceKind] = {k.id: k for k in (postgres.KIND, files.KIND, k8s_resources.KIND, wal_archive.KIND)}


def kind_of(kind_id: str) -> SourceKind:
    try:
        return KINDS[kind_id]
    except KeyError:
        raise ValueError(f"unknown source kind {kind_id!r} (known: {', '.join(KINDS)})") from None


__all__ = ["KINDS", "kind_of", "SourceKind"]
