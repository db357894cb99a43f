"""Local files beside a backup: companions (sidecar, manifest), digests, atomic writes.

Sidecar rule (``NAME.sha256``, as ``sha256sum`` writes it): UTF-8 text of at most 64 KiB,
one entry per non-blank line, each ``HEX`` or ``HEX  FILE`` / ``HEX *FILE`` where HEX is 64
hexadecimal digits. For a backup file, exactly one entry must describe it: an entry with
no file name, or whose file name's last path segment is the backup's own name; entries
naming other files make the sidecar malformed (a sidecar copied from another backup must
never pass). A directory dump's sidecar lists its files (``FILE`` relative to the
directory, as ``cd NAME && sha256sum *`` writes them).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path, PurePosixPath

SIDECAR_SUFFIX = ".sha256"
MANIFEST_SUFFIX = ".manifest.json"
COMPANIONS = (SIDECAR_SUFFIX, MANIFEST_SUFFIX)
SIDECAR_LIMIT = 64 << 10
CHUNK = 1 << 20
_ENTRY = re.compile(r"^(?P<hex>[0-9A-Fa-f]{64})(?:(?: \*| {2}| )(?P<name>.+))?$")


class SidecarError(ValueError):
    """A sidecar that cannot be trusted; the message names it and says why."""


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + MANIFEST_SUFFIX)


def parse_sidecar(text: str, *, where: str = "sidecar") -> list[tuple[str, str | None]]:
    """Every ``(hex digest, file name or None)`` entry of a sidecar's text (see the module doc)."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip("\r")
        if not line.strip():
            continue
        m = _ENTRY.match(line.strip())
        if not m:
            raise SidecarError(f"{where}: line {number}: not a SHA-256 sidecar entry "
                               f"(expected 64 hex digits, then the file name)")
        entries.append((m.group("hex").lower(), m.group("name")))
    if not entries:
        raise SidecarError(f"{where}: empty, not a SHA-256 sidecar (expected 64 hex digits)")
    return entries


def digest_for(entries: list[tuple[str, str | None]], name: str, *, where: str = "sidecar") -> str:
    """The one digest ``entries`` give for the file ``name``."""
    mine = [h for h, n in entries if n is None or PurePosixPath(n.replace("\\", "/")).name == name]
    others = sorted({n for _, n in entries if n is not None and PurePosixPath(n.replace("\\", "/")).name != name})
    if len(mine) == 1 and not others:
        return mine[0]
    if not mine:
        return _raise(f"{where}: names {', '.join(others[:3])}, not {name}")
    if len(mine) > 1:
        return _raise(f"{where}: {len(mine)} entries for {name}")
    return _raise(f"{where}: also names other files ({', '.join(others[:3])})")


def _raise(message: str) -> str:
    raise SidecarError(message)


def read_sidecar_text(path: Path) -> str | None:
    """The text of ``path``'s sidecar, None if there is none; bounded and decoded strictly."""
    side = sidecar_path(path)
    try:
        with open(side, "rb") as f:
            data = f.read(SIDECAR_LIMIT + 1)
    except FileNotFoundError:
        return None
    if len(data) > SIDECAR_LIMIT:
        raise SidecarError(f"{side.name}: larger than {SIDECAR_LIMIT} bytes, not a sidecar")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SidecarError(f"{side.name}: not UTF-8 text") from None


def read_sidecar(path: Path) -> str | None:
    """The hex SHA-256 that ``NAME.sha256`` records for the file ``NAME``, or None if absent.

    Raises :class:`SidecarError` (a ``ValueError``) when the sidecar breaks the rule.
    """
    text = read_sidecar_text(path)
    if text is None:
        return None
    where = sidecar_path(path).name
    return digest_for(parse_sidecar(text, where=where), path.name, where=where)


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex SHA-256, bytes read) of a file, in one streamed read."""
    h, read = hashlib.sha256(), 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            h.update(view[:n])
            read += n
    return h.hexdigest(), read


def tree_size(path: Path) -> int:
    """Bytes of a file, or of every file below a directory (links not followed)."""
    if path.is_dir() and not path.is_symlink():
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.stat().st_size


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` with O_APPEND (whole lines, so concurrent writers do not interleave) and fsync,
    on a fresh line: after a torn last line (a crash or a full disk mid-append), a newline first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:  # make the new directory entry durable too
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Write ``path`` so a reader sees the old or the new content, never half (fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


__all__ = ["SIDECAR_SUFFIX", "MANIFEST_SUFFIX", "COMPANIONS", "SidecarError", "sidecar_path", "manifest_path",
           "parse_sidecar", "digest_for", "read_sidecar_text", "read_sidecar", "sha256_file", "tree_size",
           "append_durably", "atomic_write"]
