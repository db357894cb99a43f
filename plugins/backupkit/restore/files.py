"""Extract a file-set archive safely, and only where restores are allowed to go.

The runbook's ``tar -xzf latest.tar.gz -C /`` trusts the archive completely: an absolute
path, a ``..`` or a symbolic link in it writes anywhere on the host. Here the archive (tar
or tar.gz) is first read whole by the very code ``backupctl verify`` uses
(:func:`backupkit.checks.archive.read_archive`): a damaged archive, a limit exceeded or one
unsafe member refuses all of it, naming the member and the reason, before anything is
written; so verify and restore never disagree. Then the target is checked (links already in
it that lead outside, existing files), and the archive is read a second time to write the
tree that was judged: every path walked inside the target only
(:mod:`backupkit.restore.rootfs`), directories first, symbolic links last. A member that
reads differently the second time stops the restore.

Each file is written to a temporary name beside its destination, checked against the
archive's ``SHA256SUMS`` member when there is one (files that come before it in the
archive wait under their temporary names until it has been read), and only then renamed
into place, so a file whose checksum does not match is never installed and an interrupted
restore leaves no half-written file. With ``existing="overwrite"`` each replaced file is
first moved to a backup directory, keeping its relative path, so the restore can be undone.
Ownership is not restored (files belong to the user running the restore); set-uid,
set-gid and sticky bits are dropped. Hard links are written as copies.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from backupkit import clock
from backupkit.checks.archive import read_archive
from backupkit.checks.detect import HEAD, detect_head
from backupkit.checks.tarstream import (DEFAULT_LIMITS, DIRECTORY, FILE, HARDLINK, SYMLINK, ArchiveError,
                                        ArchiveLimits, Member, TarReader)
from backupkit.checks.tartree import ArchiveTree, Node, parts
from backupkit.restore import rootfs
from backupkit.restore.rootfs import Escape, NotADirectory, Root
from backupkit.restore.target import inspect_target
from backupkit.model import CheckResult

CHECKSUM_MANIFEST = "SHA256SUMS"
EXISTING = ("skip", "overwrite", "fail")
_MAX_SUMS_BYTES = 64 << 20
_SHOWN = 20


class ExtractRefused(Exception):
    """Nothing was extracted (or extraction stopped); the message says why."""


class UnsafeArchive(ExtractRefused):
    def __init__(self, archive: str, problems: list[tuple[str, str]], total: int | None = None):
        self.archive, self.problems = archive, problems
        total = len(problems) if total is None else total
        shown = "; ".join(f"{name!r}: {reason}" for name, reason in problems[:_SHOWN])
        more = f" (and {total - _SHOWN} more)" if total > _SHOWN else ""
        super().__init__(f"{archive}: refused, nothing extracted: {shown}{more}")


class UnsafeTarget(ExtractRefused):
    """The target contains a symbolic link that would lead a write outside it."""


class LimitExceeded(ExtractRefused):
    pass


class ExistingFiles(ExtractRefused):
    """Files exist where the archive would write (policy ``fail``) or have the wrong type."""


class TargetNotAllowed(ExtractRefused):
    pass


class DamagedArchive(ExtractRefused):
    """The archive cannot be read (truncated, corrupt compression, not a tar archive)."""


@dataclass(frozen=True)
class ChecksumMismatch:
    path: str
    expected: str
    actual: str


@dataclass
class ExtractResult:
    archive: str
    target: Path
    written: list[str] = field(default_factory=list)  # regular files installed (relative paths)
    skipped: list[str] = field(default_factory=list)  # existing files left alone (policy skip)
    replaced: list[tuple[str, Path]] = field(default_factory=list)  # (relative path, kept copy)
    directories: int = 0
    links: int = 0
    bytes_written: int = 0
    checksum_manifest: str | None = None  # the archive member used, if any
    verified: list[str] = field(default_factory=list)
    mismatched: list[ChecksumMismatch] = field(default_factory=list)  # not installed
    unlisted: list[str] = field(default_factory=list)  # installed files the manifest does not list
    missing: list[str] = field(default_factory=list)  # listed in the manifest, absent from the archive
    backup_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)  # the archive check's warnings (set-uid, duplicates)

    @property
    def ok(self) -> bool:
        return not self.mismatched and not self.missing

    def checks(self, artifact: str) -> list[CheckResult]:
        out = [CheckResult(artifact, "extract", True,
                           f"{len(self.written)} files ({self.bytes_written} bytes), {self.directories} directories, "
                           f"{self.links} links, {len(self.skipped)} skipped, {len(self.replaced)} replaced")]
        out += [CheckResult(artifact, "tar_members", True, f"WARNING: member {w}") for w in self.warnings]
        if self.checksum_manifest is None:
            out.append(CheckResult(artifact, "checksums", True,
                                   f"no {CHECKSUM_MANIFEST} in the archive; {len(self.written)} files counted"))
            return out
        problems = [f"{m.path}: expected {m.expected[:12]}…, got {m.actual[:12]}…" for m in self.mismatched]
        problems += [f"{p}: listed in {self.checksum_manifest} but not in the archive" for p in self.missing]
        detail = f"{len(self.verified)} verified"
        if self.unlisted:
            detail += f", {len(self.unlisted)} not listed"
        if problems:
            detail += "; " + "; ".join(problems[:20])
        out.append(CheckResult(artifact, "checksums", not problems, detail))
        return out

    def to_dict(self) -> dict:
        return {"archive": self.archive, "target": str(self.target), "written": len(self.written),
                "skipped": self.skipped, "replaced": [[p, str(c)] for p, c in self.replaced],
                "directories": self.directories, "links": self.links, "bytes_written": self.bytes_written,
                "checksum_manifest": self.checksum_manifest, "verified": len(self.verified),
                "mismatched": [m.path for m in self.mismatched], "unlisted": self.unlisted,
                "missing": self.missing, "backup_dir": str(self.backup_dir) if self.backup_dir else None,
                "warnings": self.warnings, "ok": self.ok}


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def allowed_target(target: str | Path, allowed_roots: Iterable[str | Path]) -> Path:
    """``target`` with symbolic links resolved, if it lies under one of ``allowed_roots``."""
    roots = [os.path.realpath(r) for r in allowed_roots]
    if not str(target):
        raise TargetNotAllowed("no target directory given")
    real = os.path.realpath(target)
    if not os.path.isabs(str(target)):
        raise TargetNotAllowed(f"target {str(target)!r} must be an absolute path")
    for root in roots:
        if _under(real, root):
            return Path(real)
    shown = ", ".join(roots) or "(none configured)"
    via = f" (resolves to {real})" if real != os.path.normpath(str(target)) else ""
    raise TargetNotAllowed(f"target {str(target)!r}{via} is not under an allowed restore root: {shown}")


def normalize_name(name: str) -> str:
    """An archive member name as a relative path: ``./a//b/`` -> ``a/b``; the root is ``.``."""
    return posixpath.normpath(name.lstrip("/")) if name.strip("/") else "."


def _parse_sums(text: str, base: str) -> dict[str, str]:
    """``sha256sum`` output (``HEX  path`` or ``HEX *path``) -> normalized path -> hex."""
    sums = {}
    for line in text.splitlines():
        line = line.rstrip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, rest = line.partition(" ")
        digest = digest.lower().lstrip("\\")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not rest:
            continue
        path = rest[1:] if rest[:1] in (" ", "*") else rest
        sums[normalize_name(posixpath.join(base, path) if base != "." else path)] = digest
    return sums


def _fingerprint(m: Member) -> int:
    return hash((m.name, m.kind, m.linkname, m.size, m.stored, m.sparse, m.mode))


class _Plan:
    """The first reading: the verdict (the archive check's own), the tree it judged, and a
    fingerprint of every member to recognise them in the second reading."""

    def __init__(self, f: BinaryIO, label: str, gzipped: bool, limits: ArchiveLimits):
        self.fingerprints = array("q")
        scan = read_archive(f, label, gzipped=gzipped, limits=limits,
                            on_member=lambda m, _: self.fingerprints.append(_fingerprint(m)))
        _refuse_unless_ok(scan.results, scan.tree, label)
        self.tree: ArchiveTree = scan.tree
        self.count = scan.members
        self.entries = [(self.tree.path(n), n) for n in self.tree.order]
        self.warnings = [f"{name!r}: {reason}" for _, name, reason in self.tree.warnings[:_SHOWN]]
        if self.tree.n_warnings > _SHOWN:
            self.warnings.append(f"... and {self.tree.n_warnings - _SHOWN} more")
        manifests = [(p.count("/"), p, n) for p, n in self.entries
                     if n.kind == FILE and posixpath.basename(p) == CHECKSUM_MANIFEST]
        self.sums: tuple[str, Node] | None = min(manifests, key=lambda t: t[:2])[1:] if manifests else None


def _refuse_unless_ok(results: list[CheckResult], tree: ArchiveTree | None, label: str) -> None:
    """Raise what the archive check's failed results mean for a restore."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return
    damage = [r.detail for r in failed if r.check != "tar_safety" and r.check != "tar_limits"]
    if damage:
        raise DamagedArchive(f"{label}: damaged archive, nothing extracted: {'; '.join(damage)}")
    over = [r.detail for r in failed if r.check == "tar_limits"]
    if over:
        raise LimitExceeded(f"{label}: refused, nothing extracted: {'; '.join(over)}")
    raise UnsafeArchive(label, [(name, reason) for _, name, reason in tree.problems], tree.n_problems)


def _select(plan: _Plan, members: Sequence[str] | None) -> list[tuple[str, Node]]:
    if members is None:
        return list(plan.entries)
    wanted = []
    for raw in members:
        n = normalize_name(raw)
        if n == "." or n.startswith("../") or n == "..":
            raise ValueError(f"path to restore {raw!r} is not a relative path inside the archive")
        wanted.append(n)

    def under(n: str, w: str) -> bool:
        return n == w or n.startswith(w + "/")

    chosen = [(p, n) for p, n in plan.entries if any(under(p, w) for w in wanted)]
    missing = [raw for raw, w in zip(members, wanted, strict=True) if not any(under(p, w) for p, _ in chosen)]
    if missing:
        raise ValueError(f"not in the archive: {', '.join(repr(m) for m in missing)}")
    return chosen


def safe_extract(archive_path: str | Path, target_dir: str | Path, *, members: Sequence[str] | None = None,
                 max_total_bytes: int, max_files: int, existing: str = "fail",
                 backup_dir: Path | None = None, now: datetime | None = None,
                 limits: ArchiveLimits = DEFAULT_LIMITS) -> ExtractResult:
    """Extract ``archive_path`` (tar or tar.gz) into ``target_dir``.

    ``members``: paths to restore (a member and everything below it); default all.
    ``existing``: what to do with files already present: ``skip`` them, ``overwrite``
    them keeping a copy under ``backup_dir`` (default ``target/.restore-backup-<UTC
    time>/``), or ``fail`` before writing anything.
    Raises an :class:`ExtractRefused` subclass before writing anything when the archive
    or the target is unsafe, a limit is exceeded, or existing files conflict.
    """
    if existing not in EXISTING:
        raise ValueError(f"existing must be one of {', '.join(EXISTING)}; got {existing!r}")
    label = str(archive_path)
    target = Path(os.path.abspath(target_dir))
    try:
        f = open(archive_path, "rb")
    except OSError as exc:
        raise DamagedArchive(f"{label}: cannot read the archive: {exc}") from exc
    with f:
        gzipped = _archive_kind(f, label)
        plan = _Plan(f, label, gzipped, limits)  # every member judged before anything is written
        selected = _select(plan, members)
        if len(selected) > max_files:
            raise LimitExceeded(f"{label}: {len(selected)} members to extract exceed the limit of {max_files}")
        total = sum(n.size for _, n in selected if n.kind in (FILE, HARDLINK))
        if total > max_total_bytes:
            raise LimitExceeded(f"{label}: {total} bytes to extract exceed the limit of {max_total_bytes}")
        actions = _check_target(target, plan.tree, selected, existing, label)
        backup_dir = _backup_dir(target, backup_dir, actions, selected, now, label)
        target.mkdir(parents=True, exist_ok=True)
        f.seek(0)
        with Root(target) as root:
            writer = _Writer(plan, selected, actions, root, target, label, max_total_bytes, backup_dir)
            result = writer.run(f, gzipped, limits)
    result.warnings = plan.warnings
    if plan.sums:
        sums_name, present = plan.sums[0], {p for p, _ in selected}
        result.checksum_manifest = sums_name
        in_scope = [p for p in writer.sums or {} if members is None or any(
            p == normalize_name(w) or p.startswith(normalize_name(w) + "/") for w in members)]
        result.missing = sorted(p for p in in_scope if p not in present)
        result.unlisted = sorted(p for p in result.written if p not in (writer.sums or {}) and p != sums_name)
    return result


def _archive_kind(f: BinaryIO, label: str) -> bool:
    """Whether the archive is gzip-compressed; refuses what is not a tar archive at all."""
    try:
        kind, detail = detect_head(f.read(HEAD))
        f.seek(0)
    except OSError as exc:
        raise DamagedArchive(f"{label}: cannot read the archive: {exc}") from exc
    if kind not in ("tar_gzip", "tar", "pg_tar"):
        raise DamagedArchive(f"{label}: not a tar or tar.gz archive: {detail or kind}")
    return kind == "tar_gzip"


def _parent(path: str) -> list[str]:
    return parts(posixpath.dirname(path))


def _check_target(target: Path, tree: ArchiveTree, selected: list[tuple[str, Node]], existing: str,
                  label: str) -> dict[str, str]:
    """Per member: ``write``, ``replace``, ``skip`` or ``exists``; raises on a link in the
    target that leads outside it, or on conflicts (:func:`~backupkit.restore.target.inspect_target`)."""
    try:
        found = inspect_target(target, tree, selected, existing)
    except OSError as exc:
        raise ExistingFiles(f"{label}: refused, nothing extracted: cannot check the target: {exc}") from exc
    if found.unsafe:
        raise UnsafeTarget(f"{label}: refused, nothing extracted: " + "; ".join(found.unsafe[:_SHOWN]))
    if found.conflicts:
        more = f" (and {len(found.conflicts) - _SHOWN} more)" if len(found.conflicts) > _SHOWN else ""
        raise ExistingFiles(f"{label}: refused, nothing extracted: " + "; ".join(found.conflicts[:_SHOWN]) + more)
    return found.actions


def _backup_dir(target: Path, backup_dir: Path | None, actions: dict[str, str], selected: list[tuple[str, Node]],
                now: datetime | None, label: str) -> Path | None:
    if not any(a == "replace" for a in actions.values()):
        return None
    stamp = (now or clock.now()).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    backup_dir = Path(os.path.abspath(backup_dir)) if backup_dir else target / f".restore-backup-{stamp}"
    rel = os.path.relpath(backup_dir, target)
    if not rel.startswith(".."):
        inside = [p for p, _ in selected if p == rel or p.startswith(rel + "/")]
        if inside:
            raise ExistingFiles(f"{label}: member {inside[0]!r} lies inside the backup directory {backup_dir}")
    return backup_dir


@dataclass
class _Temp:
    """A file written under a temporary name, waiting to be checked and installed."""
    path: str
    node: Node
    name: str
    digest: str = ""


class _Writer:
    """The second reading: writes the planned tree, directories first and links last."""

    def __init__(self, plan: _Plan, selected: list[tuple[str, Node]], actions: dict[str, str], root: Root,
                 target: Path, label: str, max_bytes: int, backup_dir: Path | None):
        self.plan, self.selected, self.actions, self.root = plan, selected, actions, root
        self.label, self.max_bytes, self.backup_dir = label, max_bytes, backup_dir
        self.result = ExtractResult(archive=label, target=target, backup_dir=backup_dir)
        self.dests: dict[int, list[tuple[str, Node]]] = {}
        for p, n in selected:
            if n.kind in (FILE, HARDLINK) and actions[p] != "skip":
                self.dests.setdefault(n.source, []).append((p, n))
        self.sums_index = plan.sums[1].index if plan.sums else None
        # (mode, time) of the directories and links to make, taken in the second reading
        self.times: dict[int, tuple[int, float]] = {
            n.index: (0o755, 0.0) for p, n in selected if n.kind in (DIRECTORY, SYMLINK) and actions[p] != "skip"}
        self.sums: dict[str, str] | None = None
        self.waiting: list[_Temp] = []  # written before the manifest was read
        self._backup_root: Root | None = None

    def run(self, f: BinaryIO, gzipped: bool, limits: ArchiveLimits) -> ExtractResult:
        try:
            self.result.skipped = [p for p, _ in self.selected if self.actions[p] == "skip"]
            self._make_directories()
            self._write_files(TarReader(f, gzipped=gzipped, limits=limits))
            for t in self.waiting:
                self._install_at(t)
            self.waiting = []
            self._make_links()
            self._finish_directories()
        except Escape as exc:
            raise UnsafeTarget(f"{self.label}: {exc}; stopped after {len(self.result.written)} files") from exc
        except NotADirectory as exc:
            raise ExistingFiles(f"{self.label}: {exc}; stopped after {len(self.result.written)} files") from exc
        except OSError as exc:
            raise ExtractRefused(f"{self.label}: {exc}; stopped after {len(self.result.written)} files") from exc
        finally:
            self._discard_waiting()
            if self._backup_root is not None:
                self._backup_root.close()
        return self.result

    def _changed(self, what: str) -> DamagedArchive:
        return DamagedArchive(f"{self.label}: the archive changed while it was restored ({what}); "
                              f"stopped after {len(self.result.written)} files")

    def _write_files(self, reader: TarReader) -> None:
        try:
            for m in reader:
                fps = self.plan.fingerprints
                if m.index >= len(fps) or fps[m.index] != _fingerprint(m):
                    raise self._changed(f"member {m.name!r} differs")
                if m.index in self.times:
                    self.times[m.index] = (m.mode, m.mtime)
                if m.index == self.sums_index or m.index in self.dests:
                    self._write_member(reader, m)
            reader.finish()
        except ArchiveError as exc:
            raise DamagedArchive(f"{self.label}: damaged archive, stopped after {len(self.result.written)} "
                                 f"files: {exc.detail}") from exc
        if reader.count != self.plan.count or (self.sums_index is not None and self.sums is None):
            raise self._changed(f"{reader.count} members, {self.plan.count} before")

    def _write_member(self, reader: TarReader, m: Member) -> None:
        outs: list[tuple[_Temp, int, int]] = []  # (temp, parent fd, file fd)
        capture = bytearray() if m.index == self.sums_index else None
        try:
            for p, node in self.dests.get(m.index, []):
                parent = self.root.walk(_parent(p), create=True)
                try:
                    fd, name = rootfs.create_file(parent)
                except BaseException:
                    os.close(parent)
                    raise
                outs.append((_Temp(p, node, name), parent, fd))
            digest = hashlib.sha256()
            for chunk in reader.data(m):
                if capture is not None and len(capture) < _MAX_SUMS_BYTES:
                    capture += chunk[:_MAX_SUMS_BYTES - len(capture)]
                if outs:
                    self._count(len(chunk) * len(outs))
                    digest.update(chunk)
                    for _, _, fd in outs:
                        rootfs.write_all(fd, chunk)
            if capture is not None:
                sums_path = self.plan.sums[0]
                self.sums = _parse_sums(capture.decode("utf-8", "replace"), posixpath.dirname(sums_path) or ".")
                self.sums.pop(sums_path, None)  # a manifest cannot vouch for itself
            for t, parent, fd in outs:  # a hard link's copy takes the mode and time of its file
                os.fchmod(fd, m.mode & 0o777)
                rootfs.set_fd_times(fd, m.mtime)
                t.digest = digest.hexdigest()
            while outs:
                t, parent, fd = outs.pop()
                os.close(fd)
                try:
                    if self.sums is None and self.sums_index is not None:
                        self.waiting.append(t)
                    else:
                        self._install(parent, t)
                finally:
                    os.close(parent)
        finally:
            for t, parent, fd in outs:  # only after an error
                os.close(fd)
                rootfs.remove(parent, t.name)
                os.close(parent)

    def _count(self, n: int) -> None:
        self.result.bytes_written += n
        if self.result.bytes_written > self.max_bytes:
            raise LimitExceeded(f"{self.label}: more than {self.max_bytes} bytes extracted; stopped")

    def _install_at(self, t: _Temp) -> None:
        parent = self.root.walk(_parent(t.path), create=True)
        try:
            self._install(parent, t)
        finally:
            os.close(parent)

    def _install(self, parent: int, t: _Temp) -> None:
        expected = (self.sums or {}).get(t.path)
        if expected is not None and expected != t.digest:
            self.result.mismatched.append(ChecksumMismatch(t.path, expected, t.digest))
            rootfs.remove(parent, t.name)  # never install a file that does not match its checksum
            return
        self._put_in_place(parent, t.path, t.name)
        self.result.written.append(t.path)
        if expected is not None:
            self.result.verified.append(t.path)

    def _put_in_place(self, parent: int, path: str, tmp: str) -> None:
        base = posixpath.basename(path)
        try:
            if self.actions[path] == "replace" and rootfs.lstat(parent, base) is not None:
                self._keep(parent, path)
            rootfs.rename(parent, tmp, parent, base)
        except BaseException:
            rootfs.remove(parent, tmp)
            raise

    def _keep(self, parent: int, path: str) -> None:
        """Move the file at ``path`` to the backup directory (same relative path)."""
        if self._backup_root is None:
            rel = os.path.relpath(self.backup_dir, self.root.path)
            if rel.startswith(".."):
                self.backup_dir.mkdir(parents=True, exist_ok=True)
                self._backup_root = Root(self.backup_dir)
            else:  # inside the target: reached like any other path of it
                self._backup_root = Root.opened(self.root.walk(parts(rel), create=True), self.backup_dir)
        kept = self._backup_root.walk(_parent(path), create=True)
        try:
            rootfs.move_aside(parent, posixpath.basename(path), kept, posixpath.basename(path))
        finally:
            os.close(kept)
        self.result.replaced.append((path, self.backup_dir / path))

    def _discard_waiting(self) -> None:
        for t in self.waiting:
            try:
                parent = self.root.walk(_parent(t.path), create=False)
            except (Escape, NotADirectory, OSError):
                continue
            if parent is not None:
                rootfs.remove(parent, t.name)
                os.close(parent)
        self.waiting = []

    def _make_directories(self) -> None:
        for p, n in self.selected:
            if n.kind == DIRECTORY:
                os.close(self.root.walk(parts(p), create=True))
                self.result.directories += 1

    def _make_links(self) -> None:
        for p, n in self.selected:
            if n.kind != SYMLINK or self.actions[p] == "skip":
                continue
            parent = self.root.walk(_parent(p), create=True)
            try:
                self._put_in_place(parent, p, rootfs.create_symlink(parent, n.link))
                rootfs.set_times(parent, posixpath.basename(p), self.times[n.index][1])
            finally:
                os.close(parent)
            self.result.links += 1

    def _finish_directories(self) -> None:
        """Modes and times of the directories the restore made, after their contents changed them."""
        for p, n in reversed(self.selected):
            if n.kind == DIRECTORY and self.actions[p] == "write":
                fd = self.root.walk(parts(p), create=False)
                if fd is not None:
                    try:
                        mode, mtime = self.times[n.index]
                        os.fchmod(fd, (mode & 0o777) | 0o700)
                        rootfs.set_fd_times(fd, mtime)
                    finally:
                        os.close(fd)
