"""Extract a file-set archive safely, and only where restores are allowed to go.

The runbook's ``tar -xzf latest.tar.gz -C /`` trusts the archive completely: an absolute
path, a ``..`` or a symbolic link in it writes anywhere on the host. Here the whole
archive (tar or tar.gz) is read and judged before anything is written: a truncated or
corrupt archive, or a single unsafe member, refuses all of it, naming the member and the
reason. The archive reading and per-member rules are :mod:`backupkit.checks.archive`'s;
this module adds what needs the whole archive or the target: a member below a symbolic
link of the same archive, links already in the target that point outside it, size
limits, existing files.

Each file is written to a temporary name beside its destination, checked against the
archive's ``SHA256SUMS`` member when there is one, and only then renamed into place, so
a file whose checksum does not match is never installed and an interrupted restore
leaves no half-written file. With ``existing="overwrite"`` each replaced file is first
moved to a backup directory, keeping its relative path, so the restore can be undone.
Ownership is not restored (files belong to the user running the restore); set-uid,
set-gid and sticky bits are dropped.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from backupkit import clock
from backupkit.checks.archive import check_tar, unsafe_reason
from backupkit.checks.detect import HEAD, detect_head
from backupkit.checks.stream import GZIP_ERRORS
from backupkit.model import CheckResult

CHECKSUM_MANIFEST = "SHA256SUMS"
EXISTING = ("skip", "overwrite", "fail")
CHUNK = 1 << 20
_MAX_SUMS_BYTES = 64 << 20


class ExtractRefused(Exception):
    """Nothing was extracted (or extraction stopped); the message says why."""


class UnsafeArchive(ExtractRefused):
    def __init__(self, archive: str, problems: list[tuple[str, str]]):
        self.archive, self.problems = archive, problems
        shown = "; ".join(f"{name!r}: {reason}" for name, reason in problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
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

    @property
    def ok(self) -> bool:
        return not self.mismatched and not self.missing

    def checks(self, artifact: str) -> list[CheckResult]:
        out = [CheckResult(artifact, "extract", True,
                           f"{len(self.written)} files ({self.bytes_written} bytes), {self.directories} directories, "
                           f"{self.links} links, {len(self.skipped)} skipped, {len(self.replaced)} replaced")]
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
                "ok": self.ok}


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


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


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


class _Plan:
    """What the archive holds and what will be written, decided before writing anything."""

    def __init__(self, tar: tarfile.TarFile, label: str):
        self.last: dict[str, tarfile.TarInfo] = {}
        problems: list[tuple[str, str]] = []
        seen_regular: set[str] = set()
        symlinks: set[str] = set()
        order: list[str] = []
        for m in tar:
            reason = unsafe_reason(m)
            name = normalize_name(m.name)
            if reason is None and m.islnk() and normalize_name(m.linkname) not in seen_regular:
                reason = f"hard link to {m.linkname!r}, which is not an earlier file of the archive"
            if reason:
                problems.append((m.name, reason))
                continue
            if name == ".":
                continue
            if m.isreg():
                seen_regular.add(name)
            if m.issym():
                symlinks.add(name)
            if name not in self.last:
                order.append(name)
            self.last[name] = m
        for name in order:
            for anc in _ancestors(name):
                if anc in symlinks:
                    problems.append((self.last[name].name,
                                     f"lies below {anc!r}, a symbolic link of the same archive"))
                    break
        if problems:
            raise UnsafeArchive(label, problems)
        self.order = order


def _select(plan: _Plan, members: Sequence[str] | None) -> list[str]:
    if members is None:
        return list(plan.order)
    wanted = []
    for raw in members:
        n = normalize_name(raw)
        if n == "." or n.startswith("../") or n == "..":
            raise ValueError(f"path to restore {raw!r} is not a relative path inside the archive")
        wanted.append(n)
    def under(n: str, w: str) -> bool:
        return n == w or n.startswith(w + "/")

    chosen = [n for n in plan.order if any(under(n, w) for w in wanted)]
    missing = [raw for raw, w in zip(members, wanted, strict=True) if not any(under(n, w) for n in chosen)]
    if missing:
        raise ValueError(f"not in the archive: {', '.join(repr(m) for m in missing)}")
    return chosen


def safe_extract(archive_path: str | Path, target_dir: str | Path, *, members: Sequence[str] | None = None,
                 max_total_bytes: int, max_files: int, existing: str = "fail",
                 backup_dir: Path | None = None, now: datetime | None = None) -> ExtractResult:
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
    gzipped = _check_readable(archive_path, label)
    try:
        tar = tarfile.open(archive_path, "r:gz" if gzipped else "r:")
    except (tarfile.TarError, *GZIP_ERRORS) as exc:  # changed since it was read a moment ago
        raise DamagedArchive(f"{label}: damaged archive, nothing extracted: {exc}") from exc
    with tar:
        try:
            plan = _Plan(tar, label)  # every member judged before anything is written
        except (tarfile.TarError, *GZIP_ERRORS) as exc:
            raise DamagedArchive(f"{label}: damaged archive, nothing extracted: {exc}") from exc
        selected = _select(plan, members)
        infos = [plan.last[n] for n in selected]
        if len(infos) > max_files:
            raise LimitExceeded(f"{label}: {len(infos)} members to extract exceed the limit of {max_files}")
        total = sum(m.size for m in infos if m.isreg()) + sum(
            plan.last[normalize_name(m.linkname)].size for m in infos if m.islnk())
        if total > max_total_bytes:
            raise LimitExceeded(f"{label}: {total} bytes to extract exceed the limit of {max_total_bytes}")

        real_target = os.path.realpath(target)
        actions = _check_target(target, real_target, infos, selected, existing, label)
        replacing = any(a == "replace" for a in actions.values())
        if replacing:
            stamp = (now or clock.now()).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            backup_dir = Path(backup_dir) if backup_dir else target / f".restore-backup-{stamp}"
            rel_backup = os.path.relpath(os.path.abspath(backup_dir), target)
            if not rel_backup.startswith(".."):
                inside = [n for n in selected if n == rel_backup or n.startswith(rel_backup + "/")]
                if inside:
                    raise ExistingFiles(f"{label}: member {inside[0]!r} lies inside the backup directory {backup_dir}")
        else:
            backup_dir = None

        sums_name = _find_sums(plan)
        sums: dict[str, str] = {}
        if sums_name:
            f = tar.extractfile(plan.last[sums_name])
            data = f.read(_MAX_SUMS_BYTES) if f else b""
            sums = _parse_sums(data.decode("utf-8", "replace"), posixpath.dirname(sums_name) or ".")
            sums.pop(sums_name, None)  # a manifest cannot vouch for itself

        target.mkdir(parents=True, exist_ok=True)
        real_target = os.path.realpath(target)
        writer = _Writer(tar, label, target, real_target, max_total_bytes, sums, backup_dir)
        try:
            result = writer.run(infos, selected, actions)
        except (tarfile.TarError, *GZIP_ERRORS) as exc:
            done = len(writer.result.written)
            raise DamagedArchive(f"{label}: damaged archive, stopped after {done} files: {exc}") from exc
        result.checksum_manifest = plan.last[sums_name].name if sums_name else None
        if sums_name:
            present = set(selected)
            in_scope = [p for p in sums if members is None or any(
                p == normalize_name(w) or p.startswith(normalize_name(w) + "/") for w in members)]
            result.missing = sorted(p for p in in_scope if p not in present)
            result.unlisted = sorted(p for p in result.written if p not in sums and p != sums_name)
        return result


def _check_readable(archive_path: str | Path, label: str) -> bool:
    """Read the whole archive once (gzip CRC, tar end-of-archive marker) with the archive
    checks, so a truncated or corrupt archive is refused before anything is written.
    Returns whether it is gzip-compressed."""
    try:
        with open(archive_path, "rb") as f:
            kind, detail = detect_head(f.read(HEAD))
            if kind not in ("tar_gzip", "tar", "pg_tar"):
                raise DamagedArchive(f"{label}: not a tar or tar.gz archive: {detail or kind}")
            f.seek(0)
            results = check_tar(f, label, gzipped=kind == "tar_gzip")
    except OSError as exc:
        raise DamagedArchive(f"{label}: cannot read the archive: {exc}") from exc
    # Unsafe members are judged member by member in _Plan (same rules, structured result).
    damage = [r.detail for r in results if not r.ok and r.check != "tar_safety"]
    if damage:
        raise DamagedArchive(f"{label}: damaged archive, nothing extracted: {'; '.join(damage)}")
    return kind == "tar_gzip"


def _find_sums(plan: _Plan) -> str | None:
    names = [n for n, m in plan.last.items() if m.isreg() and posixpath.basename(n) == CHECKSUM_MANIFEST]
    return min(names, key=lambda n: (n.count("/"), n)) if names else None


def _check_target(target: Path, real_target: str, infos: list[tarfile.TarInfo], selected: list[str],
                  existing: str, label: str) -> dict[str, str]:
    """Per member: ``write``, ``replace`` or ``skip``; raises on links escaping or conflicts."""
    unsafe: list[str] = []
    conflicts: list[str] = []
    actions: dict[str, str] = {}
    checked: dict[str, bool] = {}
    for m, name in zip(infos, selected, strict=True):
        for anc in _ancestors(name):
            if anc in checked:
                continue
            p = target / anc
            ok = True
            if p.is_symlink():
                real = os.path.realpath(p)
                if not _under(real, real_target):
                    unsafe.append(f"{anc!r} is a symbolic link to {real}, outside the target")
                    ok = False
                elif not os.path.isdir(real):
                    conflicts.append(f"{anc!r} exists and is not a directory")
                    ok = False
            elif p.exists() and not p.is_dir():
                conflicts.append(f"{anc!r} exists and is not a directory")
                ok = False
            checked[anc] = ok
        dest = target / name
        if not os.path.lexists(dest):
            actions[name] = "write"
        elif m.isdir():
            if dest.is_symlink() and not _under(os.path.realpath(dest), real_target):
                unsafe.append(f"{name!r} is a symbolic link to {os.path.realpath(dest)}, outside the target")
            elif not dest.is_dir():
                conflicts.append(f"{name!r} exists and is not a directory")
            actions[name] = "exists"
        elif dest.is_dir() and not dest.is_symlink():
            conflicts.append(f"{name!r} is an existing directory; the archive has a file there")
        elif existing == "fail":
            conflicts.append(f"{name!r} already exists")
        else:
            actions[name] = "replace" if existing == "overwrite" else "skip"
    if unsafe:
        raise UnsafeTarget(f"{label}: refused, nothing extracted: " + "; ".join(unsafe[:20]))
    if conflicts:
        more = f" (and {len(conflicts) - 20} more)" if len(conflicts) > 20 else ""
        raise ExistingFiles(f"{label}: refused, nothing extracted: " + "; ".join(conflicts[:20]) + more)
    return actions


class _Writer:
    def __init__(self, tar: tarfile.TarFile, label: str, target: Path, real_target: str, max_bytes: int,
                 sums: dict[str, str], backup_dir: Path | None):
        self.tar, self.label, self.real_target, self.max_bytes = tar, label, real_target, max_bytes
        self.sums, self.backup_dir = sums, backup_dir
        self.result = ExtractResult(archive=label, target=target, backup_dir=backup_dir)
        self.dir_times: list[tuple[str, float]] = []

    def run(self, infos: list[tarfile.TarInfo], names: list[str], actions: dict[str, str]) -> ExtractResult:
        for m, name in zip(infos, names, strict=True):
            action = actions[name]
            if action == "skip":
                self.result.skipped.append(name)
            elif m.isdir():
                path = self._ensure_dir(name)
                if action == "write":  # leave the modes and times of existing directories alone
                    os.chmod(path, (m.mode & 0o777) | 0o700)
                    self.dir_times.append((path, m.mtime))
                self.result.directories += 1
            elif m.issym():
                self._install(name, action, lambda tmp, m=m: os.symlink(m.linkname, tmp), m)
                self.result.links += 1
            else:  # regular file or hard link (written as a copy of the linked file's data)
                self._write_file(m, name, action)
        for path, mtime in reversed(self.dir_times):  # after their contents changed them
            os.utime(path, (mtime, mtime))
        return self.result

    # -- paths ---------------------------------------------------------------------------
    def _ensure_dir(self, rel: str) -> str:
        """The real path of directory ``rel`` in the target, created as needed, never
        leaving the target through a symbolic link (checked again as we go)."""
        cur = self.real_target
        if rel in ("", "."):
            return cur
        for comp in rel.split("/"):
            nxt = os.path.join(cur, comp)
            if os.path.islink(nxt):
                real = os.path.realpath(nxt)
                if not _under(real, self.real_target):
                    raise UnsafeTarget(f"{self.label}: {nxt} became a symbolic link outside the target; stopped")
                nxt = real
            elif not os.path.lexists(nxt):
                os.mkdir(nxt, 0o755)
            if not os.path.isdir(nxt):
                raise ExistingFiles(f"{self.label}: {nxt} is not a directory; stopped")
            cur = nxt
        return cur

    def _install(self, name: str, action: str, make, m: tarfile.TarInfo) -> str:
        parent = self._ensure_dir(posixpath.dirname(name))
        dest = os.path.join(parent, posixpath.basename(name))
        tmp = os.path.join(parent, f".{posixpath.basename(name)}.restore-{os.urandom(6).hex()}")
        try:
            make(tmp)
            self._put_in_place(name, action, tmp, dest)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        os.utime(dest, (m.mtime, m.mtime), follow_symlinks=False)
        return dest

    def _put_in_place(self, name: str, action: str, tmp: str, dest: str) -> None:
        if action == "replace" and os.path.lexists(dest):
            kept = self.backup_dir / name
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(dest, kept)  # a rename on the same file system: the original inode is kept
            self.result.replaced.append((name, kept))
        os.replace(tmp, dest)  # rename replaces a symbolic link itself, never its target

    def _write_file(self, m: tarfile.TarInfo, name: str, action: str) -> None:
        src = self.tar.extractfile(m)
        parent = self._ensure_dir(posixpath.dirname(name))
        dest = os.path.join(parent, posixpath.basename(name))
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{posixpath.basename(name)}.restore-")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = src.read(CHUNK) if src else b""
                    if not chunk:
                        break
                    self.result.bytes_written += len(chunk)
                    if self.result.bytes_written > self.max_bytes:
                        raise LimitExceeded(f"{self.label}: more than {self.max_bytes} bytes extracted; stopped")
                    digest.update(chunk)
                    out.write(chunk)
                os.fchmod(out.fileno(), m.mode & 0o777)
            actual = digest.hexdigest()
            expected = self.sums.get(name)
            if expected is not None and expected != actual:
                self.result.mismatched.append(ChecksumMismatch(name, expected, actual))
                return  # never install a file that does not match its checksum
            self._put_in_place(name, action, tmp, dest)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        os.utime(dest, (m.mtime, m.mtime))
        self.result.written.append(name)
        if expected is not None:
            self.result.verified.append(name)
