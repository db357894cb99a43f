"""What an artifact is, decided from its first bytes; the file name is only a hint.

A nightly job that starts writing plain SQL into ``*.dump`` (or a custom dump renamed to
``.sql.gz``) must be checked as what it is, and the mismatch named, not trusted.
"""

from __future__ import annotations

import zlib
from pathlib import Path

HEAD = 64 * 1024  # bytes peeked for detection
KINDS = ("pg_custom", "pg_tar", "pg_directory", "sql_gzip", "sql", "tar_gzip", "tar", "empty", "unknown")

_HINTS = ((".tar.gz", "tar_gzip"), (".tgz", "tar_gzip"), (".sql.gz", "sql_gzip"), (".sql", "sql"),
          (".dump", "pg_custom"), (".backup", "pg_custom"), (".tar", "tar"))


def name_hint(name: str) -> str | None:
    """The kind a file name suggests, if any (used in messages only)."""
    lower = name.lower()
    return next((kind for suffix, kind in _HINTS if lower.endswith(suffix)), None)


def _is_tar(block: bytes) -> bool:
    return len(block) >= 262 and block[257:262] == b"ustar"


def _is_sql(text: bytes) -> bool:
    return text.startswith((b"--", b"\\restrict")) or b"PostgreSQL database dump" in text


def detect_head(head: bytes) -> tuple[str, str]:
    """(kind, detail) for a file starting with ``head``; detail explains ``unknown``."""
    if not head:
        return "empty", "file is empty (0 bytes)"
    if head.startswith(b"PGDMP"):
        return "pg_custom", ""
    if _is_tar(head):
        # pg_dump -Ft writes its table of contents as the first member.
        return ("pg_tar" if head[:100].rstrip(b"\0") == b"toc.dat" else "tar"), ""
    if head.startswith(b"\x1f\x8b"):
        try:
            start = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 4096)
        except zlib.error as exc:
            return "unknown", f"gzip stream corrupt at its start: {exc}"
        if not start:
            return "unknown", "gzip stream ends before any content"
        if _is_tar(start):
            return "tar_gzip", ""
        if _is_sql(start):
            return "sql_gzip", ""
        return "unknown", f"gzip-compressed, but neither SQL text nor a tar archive (starts {start[:8].hex(' ')})"
    if _is_sql(head):
        return "sql", ""
    return "unknown", f"not a pg_dump archive, gzip, tar or SQL text (starts {head[:8].hex(' ')})"


def detect_dir(path: Path) -> tuple[str, str]:
    if (path / "toc.dat").is_file():
        return "pg_directory", ""
    return "unknown", "a directory without toc.dat (not a pg_dump directory-format dump)"
