"""Tar archives (file-set backups, and the container of pg_dump -Ft): read to the end with
bounded work, and judge every member against the tree the archive builds.

A file-set archive may be restored by hand with ``tar -x`` as well as by the file restore,
so a member with ``..``, an absolute path, a link that leads out of the tree (alone or
through other links) or a device node is a problem before anyone extracts it. The file
restore calls :func:`read_archive` too, so what verify refuses it refuses, and what verify
passes it can extract. Reading (:mod:`~backupkit.checks.tarstream`) and judging
(:mod:`~backupkit.checks.tartree`) follow the rules in ``docs/archive-rules.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from backupkit.checks.tarstream import DEFAULT_LIMITS, ArchiveError, ArchiveLimits, Member, TarReader
from backupkit.checks.tartree import ArchiveTree
from backupkit.model import CheckResult

MAX_LISTED = 20  # unsafe members and warnings named one by one; the rest are counted


@dataclass
class ArchiveScan:
    results: list[CheckResult]
    tree: ArchiveTree | None  # None when only the tar layer was read (pg_dump -Ft)
    members: int
    failure: ArchiveError | None  # why reading stopped early, if it did

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def read_archive(stream: BinaryIO, artifact: str, *, gzipped: bool, safety: bool = True,
                 limits: ArchiveLimits = DEFAULT_LIMITS,
                 on_member: Callable[[Member, TarReader], None] | None = None) -> ArchiveScan:
    """Read the whole archive in ``stream`` once; ``on_member`` sees each member as it is read
    (and may read its content). Never raises for what the archive contains."""
    reader = TarReader(stream, gzipped=gzipped, limits=limits)
    tree = ArchiveTree() if safety else None
    members, content, failure = 0, 0, None
    try:
        for m in reader:
            members, content = members + 1, content + m.size
            if tree is not None:
                tree.add(m)
            if on_member is not None:
                on_member(m, reader)
        reader.finish()
    except ArchiveError as exc:
        failure = exc
    results = _reading_results(artifact, gzipped, failure, members, content)
    if tree is not None:
        tree.finish()
        results += _safety_results(artifact, tree, complete=failure is None)
    return ArchiveScan(results, tree, members, failure)


def _reading_results(artifact: str, gzipped: bool, failure: ArchiveError | None, members: int,
                     content: int) -> list[CheckResult]:
    if failure is not None:
        return [CheckResult(artifact, failure.check, False, failure.detail)]
    read = CheckResult(artifact, "tar_read", True, f"{members} members, {content} bytes of content")
    return [CheckResult(artifact, "gzip", True, "gzip stream complete, CRC ok"), read] if gzipped else [read]


def _safety_results(artifact: str, tree: ArchiveTree, *, complete: bool) -> list[CheckResult]:
    if tree.n_problems:
        out = [CheckResult(artifact, "tar_safety", False, f"unsafe member {name!r}: {reason}")
               for _, name, reason in tree.problems[:MAX_LISTED]]
        if tree.n_problems > MAX_LISTED:
            out.append(CheckResult(artifact, "tar_safety", False,
                                   f"... and {tree.n_problems - MAX_LISTED} more unsafe members"))
    else:
        scope = "" if complete else " among the members read"
        out = [CheckResult(artifact, "tar_safety", True,
                           f"no absolute, '..', escaping-link or device members{scope}")]
    out += [CheckResult(artifact, "tar_members", True, f"WARNING: member {name!r}: {reason}")
            for _, name, reason in tree.warnings[:MAX_LISTED]]
    if tree.n_warnings > MAX_LISTED:
        out.append(CheckResult(artifact, "tar_members", True,
                               f"WARNING: ... and {tree.n_warnings - MAX_LISTED} more such members"))
    return out


def scan_tar(stream: BinaryIO, artifact: str, *, safety: bool = True) -> list[CheckResult]:
    """``tar_read`` (and ``tar_safety``) results for the uncompressed tar archive in ``stream``."""
    return read_archive(stream, artifact, gzipped=False, safety=safety).results


def check_tar(stream: BinaryIO, artifact: str, *, gzipped: bool) -> list[CheckResult]:
    """Checks of a file-set archive (``tar`` or ``tar_gzip``): with gzip, the stream is read
    to its end so its CRC and length trailer are checked too."""
    return read_archive(stream, artifact, gzipped=gzipped).results
