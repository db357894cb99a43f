"""A ``backup_manifest`` read as a stream: its files, WAL ranges and own checksum, memory bounded.

Rules (docs/wal.md, "Base backups in S3"): the manifest is one JSON object whose members are
read one at a time; ``Files`` is streamed entry by entry (each handed to the caller, none
kept here), so memory is a window of :data:`MAX_ITEM` bytes whatever the manifest's size. The
whole stream is refused past ``limit`` bytes while it is read. It must be UTF-8, version 1 or
2, list ``Files`` (``Path`` or hex ``Encoded-Path``, integer ``Size`` >= 0) and carry a
``Manifest-Checksum``: the SHA-256 of every byte up to and including the newline before the
last line (pg_verifybackup's rule), which must match.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from backupkit.wal.backups import BackupError

MAX_ITEM = 1 << 20        # one Files entry, or any other member's value, and one line
_HEX = re.compile(r"^[0-9a-fA-F]*$")
_WS = " \t\r\n"
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ManifestSummary:
    files: int
    total_bytes: int
    ranges: list
    sysid: int | None


class _LastLineExcluded:
    """SHA-256 of a stream without its last line, fed in chunks (the manifest checksum's rule)."""

    def __init__(self) -> None:
        self.sha, self.held, self.newlines = hashlib.sha256(), b"", 0

    def feed(self, chunk: bytes) -> None:
        self.newlines += chunk.count(b"\n")
        data = self.held + chunk
        last = data.rfind(b"\n")
        before = data.rfind(b"\n", 0, last) if last > 0 else -1
        if before >= 0:
            self.sha.update(data[:before + 1])
            data = data[before + 1:]
        if len(data) > 2 * MAX_ITEM:
            raise ValueError(f"a line longer than {MAX_ITEM} bytes")
        self.held = data

    def digest(self) -> str:
        if self.newlines < 2 or not self.held.endswith(b"\n"):
            raise ValueError("expected at least 2 lines, the last one ending in a newline")
        return self.sha.hexdigest()


class _Stream:
    """Decoded text with a look-ahead of at least :data:`MAX_ITEM` characters (or to the end)."""

    def __init__(self, chunks: Iterable[bytes], where: str, limit: int):
        self.chunks, self.where, self.limit = iter(chunks), where, limit
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.hasher = _LastLineExcluded()
        self.buf, self.pos, self.read, self.eof = "", 0, 0, False

    def fail(self, why: str) -> BackupError:
        return BackupError(f"{self.where}: {why}")

    def fill(self) -> None:
        while not self.eof and len(self.buf) - self.pos < MAX_ITEM:
            chunk = next(self.chunks, None)
            if chunk is None:
                self.eof = True
                chunk = b""
            self.read += len(chunk)
            if self.read > self.limit:
                raise self.fail(f"larger than {self.limit} bytes: refused (the limit of a manifest read in the "
                                f"daily check)")
            try:
                self.hasher.feed(chunk)
                text = self.decoder.decode(chunk, final=self.eof)
            except UnicodeDecodeError:
                raise self.fail("not UTF-8: not a backup manifest") from None
            except ValueError as exc:
                raise self.fail(f"{exc}: not a manifest pg_basebackup writes") from None
            if self.pos > MAX_ITEM:
                self.buf, self.pos = self.buf[self.pos:], 0
            self.buf += text

    def skip_ws(self) -> str:
        """The next character that is not white space ('' at the end)."""
        while True:
            self.fill()
            while self.pos < len(self.buf) and self.buf[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def expect(self, chars: str) -> str:
        c = self.skip_ws()
        if not c or c not in chars:
            raise self.fail(f"not a JSON backup manifest (expected {' or '.join(chars)}, found "
                            f"{c[:1]!r} after {self.read} bytes read)")
        self.pos += 1
        return c

    def value(self):
        self.skip_ws()
        try:
            value, end = _DECODER.raw_decode(self.buf, self.pos)
        except (ValueError, RecursionError):
            raise self.fail("not a JSON backup manifest (a value that does not parse, or longer than "
                            f"{MAX_ITEM} bytes)") from None
        self.pos = end
        return value


def _file_entry(entry, s: _Stream) -> tuple[str, int]:
    if not isinstance(entry, dict) or type(entry.get("Size")) is not int or entry["Size"] < 0:
        raise s.fail("Files must list entries with a non-negative integer Size")
    path = entry.get("Path")
    if path is None and isinstance(entry.get("Encoded-Path"), str) and _HEX.match(entry["Encoded-Path"]) \
            and len(entry["Encoded-Path"]) % 2 == 0:
        path = bytes.fromhex(entry["Encoded-Path"]).decode("utf-8", "surrogateescape")
    if not isinstance(path, str) or not path:
        raise s.fail("a Files entry without a Path")
    return path, entry["Size"]


def read_manifest(chunks: Iterable[bytes], where: str, limit: int,
                  on_file: Callable[[str, int], None]) -> ManifestSummary:
    """Stream a manifest (see the module doc); ``on_file(path, size)`` per Files entry, in order."""
    s = _Stream(chunks, where, limit)
    members: dict[str, object] = {}
    files = total = 0
    s.expect("{")
    while True:
        key = s.value()
        if not isinstance(key, str) or key in members:
            raise s.fail("not a JSON backup manifest (a key that is not a string, or given twice)")
        s.expect(":")
        if key == "Files":
            members[key] = None
            s.expect("[")
            if s.skip_ws() == "]":
                s.pos += 1
            else:
                while True:
                    path, size = _file_entry(s.value(), s)
                    on_file(path, size)
                    files, total = files + 1, total + size
                    if s.expect(",]") == "]":
                        break
        else:
            members[key] = s.value()
        if s.expect(",}") == "}":
            break
    if s.skip_ws():
        raise s.fail("not a JSON backup manifest (text after its end)")
    return _summary(s, members, files, total)


def _summary(s: _Stream, members: dict, files: int, total: int) -> ManifestSummary:
    if members.get("PostgreSQL-Backup-Manifest-Version") not in (1, 2):
        raise s.fail("PostgreSQL-Backup-Manifest-Version must be 1 or 2")
    if "Files" not in members:
        raise s.fail("no Files: not a backup manifest")
    stated = members.get("Manifest-Checksum")
    if not isinstance(stated, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", stated):
        raise s.fail("no valid Manifest-Checksum")
    try:
        actual = s.hasher.digest()
    except ValueError as exc:
        raise s.fail(f"{exc}: not a manifest pg_basebackup writes") from None
    if actual != stated.lower():
        raise s.fail(f"manifest checksum mismatch (the manifest says {stated.lower()[:16]}..., its bytes "
                     f"hash to {actual[:16]}...)")
    sysid = members.get("System-Identifier")
    ranges = members.get("WAL-Ranges")
    return ManifestSummary(files, total, ranges if isinstance(ranges, list) else [],
                           sysid if type(sysid) is int else None)


__all__ = ["read_manifest", "ManifestSummary", "MAX_ITEM"]
