"""Tar archives (file-set backups, and the container of pg_dump -Ft): read to the end and
flag members that would land outside the restore directory.

Reading uses tarfile's stream mode, so the archive is never seeked and never held in
memory; a file-set archive is restored by hand with ``tar -x``, so a member with ``..``,
an absolute path, an escaping link or a device node is a problem before anyone runs it.
"""

from __future__ import annotations

import gzip
import posixpath
import tarfile
from typing import BinaryIO

from backupkit.checks.stream import GZIP_ERRORS, gzip_problem, read_to_end
from backupkit.model import CheckResult

MAX_LISTED = 20  # unsafe members named one by one; the rest are counted


class _Header(tarfile.TarInfo):
    """A TarInfo that records the last header block read on its TarFile.

    In stream mode tarfile ends quietly when a header is missing, cut short or damaged,
    so a truncated archive looks complete. A whole archive ends with a zero block (the
    end-of-archive marker); remembering the last block read lets us tell the two apart.
    """

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> tarfile.TarInfo:
        buf = tf.fileobj.read(tarfile.BLOCKSIZE)
        tf.last_header = buf
        obj = cls.frombuf(buf, tf.encoding, tf.errors)
        obj.offset = tf.fileobj.tell() - tarfile.BLOCKSIZE
        return obj._proc_member(tf)


def _escapes(path: str) -> bool:
    norm = posixpath.normpath(path)
    return path.startswith("/") or norm == ".." or norm.startswith("../")


def unsafe_reason(m: tarfile.TarInfo) -> str | None:
    """Why extracting member ``m`` could write outside the target directory, if it could."""
    if m.name.startswith("/"):
        return "absolute path"
    if ".." in m.name.split("/"):
        return "parent reference"
    if m.issym() and _escapes(posixpath.join(posixpath.dirname(m.name), m.linkname)):
        return f"symlink to {m.linkname!r} points outside the archive"
    if m.islnk() and _escapes(m.linkname):
        return f"hard link to {m.linkname!r} points outside the archive"
    if m.isdev():
        return "device or fifo file"
    return None


def scan_tar(stream: BinaryIO, artifact: str, *, safety: bool = True) -> list[CheckResult]:
    """``tar_read`` (and ``tar_safety``) results for the tar archive in ``stream``.

    Errors of the layer below (gzip) propagate to the caller.
    """
    try:
        tf = tarfile.open(fileobj=stream, mode="r|", tarinfo=_Header)
    except tarfile.ReadError as exc:
        return [CheckResult(artifact, "tar_read", False, f"not a readable tar archive: {exc}")]
    members, size, unsafe, n_unsafe, last = 0, 0, [], 0, None
    try:
        while (m := tf.next()) is not None:
            tf.members.clear()  # stream mode needs no index of past members; keep memory flat
            members, size, last = members + 1, size + m.size, m.name
            reason = unsafe_reason(m) if safety else None
            if reason:
                n_unsafe += 1
                if n_unsafe <= MAX_LISTED:
                    unsafe.append(f"unsafe member {m.name!r}: {reason}")
        end = getattr(tf, "last_header", b"")
        if len(end) < tarfile.BLOCKSIZE:
            problem = f"tar archive truncated after member {last!r} (no end-of-archive marker)"
        elif end.count(0) != tarfile.BLOCKSIZE:
            problem = f"damaged tar header after member {last!r} (offset {tf.offset})"
        else:
            problem = None
    except tarfile.ReadError as exc:
        truncated = str(exc) == "unexpected end of data"
        problem = f"tar archive truncated inside member {last!r}" if truncated else f"tar archive damaged: {exc}"
    read = CheckResult(artifact, "tar_read", problem is None, problem or f"{members} members, {size} bytes of content")
    if not safety:
        return [read]
    if not unsafe:
        return [read, CheckResult(artifact, "tar_safety", True, "no absolute, '..', escaping-link or device members")]
    listed = [CheckResult(artifact, "tar_safety", False, u) for u in unsafe]
    if n_unsafe > MAX_LISTED:
        listed.append(CheckResult(artifact, "tar_safety", False, f"... and {n_unsafe - MAX_LISTED} more unsafe members"))
    return [read, *listed]


def check_tar(stream: BinaryIO, artifact: str, *, gzipped: bool) -> list[CheckResult]:
    """Checks of a file-set archive (``tar`` or ``tar_gzip``).

    We decompress with :mod:`gzip` rather than tarfile's ``r|gz``: only the former checks
    the CRC and length trailer, and we read to the end of the gzip stream for it.
    """
    if not gzipped:
        return scan_tar(stream, artifact)
    gz = gzip.GzipFile(fileobj=stream, mode="rb")
    try:
        results = scan_tar(gz, artifact)
        read_to_end(gz)
    except GZIP_ERRORS as exc:
        return [CheckResult(artifact, "gzip", False, gzip_problem(exc))]
    return [CheckResult(artifact, "gzip", True, "gzip stream complete, CRC ok"), *results]
