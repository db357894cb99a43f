"""What an artifact is, decided from its first bytes; the name and configuration must agree.

Compression is recognised by its magic number before anything is read as text (an lz4
frame stores incompressible text verbatim, so ``PostgreSQL database dump`` may appear in
its first bytes), and the content inside is then recognised the same way. The kind decides
which reader checks the file; a name or configured format that says otherwise is a
problem of its own (:func:`mismatch`): a restore that trusts the name would use the wrong
tool.
"""

from __future__ import annotations

import zlib
from pathlib import Path

HEAD = 64 * 1024  # bytes peeked for detection
KINDS = ("pg_custom", "pg_tar", "pg_tar_gzip", "pg_directory", "sql", "sql_gzip", "sql_zstd", "sql_lz4",
         "tar_gzip", "tar", "empty", "unknown")
DESCRIPTIONS = {
    "pg_custom": "a custom-format pg_dump archive", "pg_tar": "a tar-format pg_dump archive",
    "pg_tar_gzip": "a gzip-compressed tar-format pg_dump archive", "pg_directory": "a directory-format pg_dump",
    "sql": "plain SQL", "sql_gzip": "gzip-compressed plain SQL", "sql_zstd": "zstd-compressed plain SQL",
    "sql_lz4": "lz4-compressed plain SQL", "tar_gzip": "a gzip-compressed tar archive", "tar": "a tar archive",
}
# A configured dump_format (config.Source) and the kinds of content that are that format.
FORMAT_KINDS = {"custom": {"pg_custom"}, "tar": {"pg_tar", "pg_tar_gzip"}, "directory": {"pg_directory"},
                "plain": {"sql", "sql_gzip", "sql_zstd", "sql_lz4"}, "files": {"tar", "tar_gzip"}}
# Name suffixes, longest first. A name is judged by family: the restore reads the content
# within a family (gzip or not, pg_dump -Ft or a file set), but a custom dump, plain SQL and
# a tar archive each need another tool.
_HINTS = ((".tar.gz", "tar_gzip"), (".tgz", "tar_gzip"), (".sql.gz", "sql_gzip"), (".sql.zst", "sql_zstd"),
          (".sql.lz4", "sql_lz4"), (".sql", "sql"), (".dump", "pg_custom"), (".backup", "pg_custom"),
          (".tar", "tar"))
FAMILIES = ({"pg_custom"}, {"sql", "sql_gzip", "sql_zstd", "sql_lz4"}, {"tar", "tar_gzip", "pg_tar", "pg_tar_gzip"},
            {"pg_directory"})

GZIP, ZSTD, LZ4 = b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18"
_OTHER_COMPRESSIONS = ((b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x89LZO", "lzop"), (b"\x5d\x00\x00", "lzma"))
TEXT_DUMP_HEADER = b"--\n-- PostgreSQL database dump\n--"
DUMPALL_HEADER = b"--\n-- PostgreSQL database cluster dump\n--"


def name_hint(name: str) -> str | None:
    """The kind a file name suggests, if any."""
    lower = name.lower()
    return next((kind for suffix, kind in _HINTS if lower.endswith(suffix)), None)


def mismatch(kind: str, name: str, configured: str | None = None) -> str | None:
    """Why content of ``kind`` contradicts its name or configured format, or None."""
    if kind in ("unknown", "empty"):
        return None
    what = DESCRIPTIONS.get(kind, kind)
    if configured and kind not in FORMAT_KINDS.get(configured, {kind}):
        return f"content is {what}, but the source is configured as {configured!r}"
    hint = name_hint(name)
    if hint and not any(hint in f and kind in f for f in FAMILIES):
        return f"content is {what}, but the name says {DESCRIPTIONS[hint]}: a restore that trusts the name would fail"
    return None


def _is_tar(block: bytes) -> bool:
    return len(block) >= 262 and block[257:262] == b"ustar"


def _is_sql(text: bytes) -> bool:
    """pg_dump's (or pg_dumpall's) first lines, or SQL text that starts like a script."""
    if text.startswith((TEXT_DUMP_HEADER, DUMPALL_HEADER)):
        return True
    return text.startswith((b"--", b"\\restrict ", b"SET ", b"BEGIN;", b"CREATE "))


def _inner(start: bytes, compression: str) -> tuple[str, str]:
    """Kind of what a compressed stream holds, from its first decoded bytes."""
    if not start:
        return "unknown", f"{compression} stream ends before any content"
    if start.startswith(b"PGDMP"):
        return "unknown", (f"a {compression}-compressed custom dump: pg_restore reads custom dumps uncompressed "
                           f"(pg_dump compresses their data blocks itself)")
    if _is_tar(start):
        if compression == "gzip":
            return ("pg_tar_gzip" if start[:100].rstrip(b"\0") == b"toc.dat" else "tar_gzip"), ""
        return "unknown", f"a {compression}-compressed tar archive (only gzip is supported for archives)"
    if _is_sql(start):
        return f"sql_{compression}", ""
    return "unknown", (f"{compression}-compressed, but neither SQL text nor a tar archive "
                       f"(starts {start[:8].hex(' ')})")


def _head_of(head: bytes, compression: str) -> bytes | str:
    """The first decoded bytes of a compressed head, or why they cannot be had."""
    try:
        if compression == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 4096)
        if compression == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().stream_reader(head).read(4096)
        import lz4.frame

        return lz4.frame.LZ4FrameDecompressor().decompress(head, max_length=4096)
    except Exception as exc:  # each library has its own error type
        return f"{compression} stream corrupt at its start: {exc}"


def detect_head(head: bytes) -> tuple[str, str]:
    """(kind, detail) for a file starting with ``head``; detail explains ``unknown``."""
    if not head:
        return "empty", "file is empty (0 bytes)"
    if head.startswith(b"PGDMP"):
        return "pg_custom", ""
    if _is_tar(head):
        # pg_dump -Ft writes its table of contents as the first member.
        return ("pg_tar" if head[:100].rstrip(b"\0") == b"toc.dat" else "tar"), ""
    for magic, name in ((GZIP, "gzip"), (ZSTD, "zstd"), (LZ4, "lz4")):
        if head.startswith(magic):
            start = _head_of(head, name)
            if isinstance(start, str):
                return "unknown", start
            return _inner(start, name)
    for magic, name in _OTHER_COMPRESSIONS:
        if head.startswith(magic):
            return "unknown", f"{name}-compressed: not a compression this project verifies or restores (use gzip, zstd or lz4)"
    if _is_sql(head):
        return "sql", ""
    return "unknown", f"not a pg_dump archive, compressed SQL, tar or SQL text (starts {head[:8].hex(' ')})"


def detect_dir(path: Path) -> tuple[str, str]:
    if (path / "toc.dat").is_file():
        return "pg_directory", ""
    for name in ("toc.dat.gz", "toc.dat.lz4", "toc.dat.zst"):
        if (path / name).is_file():
            return "unknown", f"a directory dump with a compressed {name}: not supported"
    return "unknown", "a directory without toc.dat (not a pg_dump directory-format dump)"
