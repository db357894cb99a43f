"""Read a tar stream (optionally gzip-compressed) member by member, with bounded work.

One reader serves ``backupctl verify`` and the file restore, so both see the same members.
It is ours rather than :mod:`tarfile` because tarfile reads a PAX or GNU long-name header
into memory whatever its size, parses PAX records in quadratic time on crafted input, seeks
through a declared member size even past the end of the stream, and spins forever on an
out-of-order sparse map. Every limit here is applied while reading, and every problem is an
:class:`ArchiveError` whose message names the member and the reason. The rules are written
down in ``docs/archive-rules.md`` ("Reading").
"""

from __future__ import annotations

import gzip
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from backupkit.checks.stream import GZIP_ERRORS, gzip_problem

BLOCK = 512
CHUNK = 1 << 20
_ZERO_BLOCK = bytes(BLOCK)
_ZEROS = bytes(CHUNK)

FILE, HARDLINK, SYMLINK, DIRECTORY = "file", "hard link", "symbolic link", "directory"
CHARDEV, BLOCKDEV, FIFO = "character device", "block device", "fifo"
_KINDS = {b"0": FILE, b"\0": FILE, b"7": FILE, b"1": HARDLINK, b"2": SYMLINK, b"3": CHARDEV,
          b"4": BLOCKDEV, b"5": DIRECTORY, b"6": FIFO}
_EXTENDED = {b"L": "GNU long-name", b"K": "GNU long-link", b"x": "PAX extended"}
_GLOBAL_REFUSED = ("path", "linkpath", "size", "GNU.sparse.")
_PAX_ONCE = ("path", "linkpath", "size", "mtime", "GNU.sparse.name", "GNU.sparse.size", "GNU.sparse.realsize",
             "GNU.sparse.map", "GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.numblocks")
_PAX_TIME = re.compile(rb"-?[0-9]{1,20}(\.[0-9]{0,20})?")


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on the work one archive may cause; exceeding one is a ``tar_limits`` problem."""

    max_decompressed_bytes: int = 64 << 30  # the whole tar stream after gzip
    max_trailing_bytes: int = 1 << 20  # zero padding after the end-of-archive marker
    max_header_bytes: int = 1 << 20  # one PAX / GNU long-name / sparse-map header; all global headers
    max_members: int = 1_000_000


DEFAULT_LIMITS = ArchiveLimits()


class ArchiveError(Exception):
    """Reading stopped: ``check`` is ``gzip``, ``tar_read`` (damage) or ``tar_limits``."""

    def __init__(self, check: str, detail: str):
        super().__init__(detail)
        self.check, self.detail = check, detail


@dataclass(slots=True)
class Member:
    index: int  # position in the archive, from 0
    name: str  # as stored (after long-name and PAX records), not normalised
    kind: str  # FILE, HARDLINK, ... or "unsupported type 'X'"
    linkname: str
    size: int  # bytes of content (a sparse file's real size)
    mode: int
    mtime: float
    offset: int  # of its first header block in the tar stream
    stored: int = 0  # data bytes that follow in the archive (after a sparse map)
    sparse: tuple[tuple[int, int], ...] | None = None  # (offset, length) of each stored extent


def _damaged(detail: str) -> ArchiveError:
    return ArchiveError("tar_read", detail)


class _Source:
    """The tar stream, counted: no read goes more than one byte past ``limit``, so a
    decompression bomb is stopped at the limit, not after it has been inflated."""

    def __init__(self, raw: BinaryIO, gzipped: bool, limit: int):
        self._f = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        self.limit, self.pos, self.ended = limit, 0, False

    def read(self, n: int) -> bytes:
        if self.ended:
            return b""
        try:
            data = self._f.read(min(n, self.limit + 1 - self.pos))
        except GZIP_ERRORS as exc:
            raise ArchiveError("gzip", gzip_problem(exc)) from None
        except OSError as exc:
            raise _damaged(f"cannot read the archive: {exc}") from None
        self.pos += len(data)
        if self.pos > self.limit:
            raise ArchiveError("tar_limits", f"more than {self.limit} bytes after decompression; stopped reading "
                                             "(raise the limit only for an archive known to be this large)")
        if not data:
            self.ended = True
        return data

    def read_exact(self, n: int) -> bytes:
        """``n`` bytes, or fewer only when the stream ends."""
        parts, got = [], 0
        while got < n and not self.ended:
            data = self.read(min(n - got, CHUNK))
            parts.append(data)
            got += len(data)
        return b"".join(parts)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes, what: str, offset: int) -> int:
    """An octal field (spaces and NULs around the digits), or GNU base-256 (first byte 0x80/0xff)."""
    if field[0] in (0x80, 0xFF):
        n = int.from_bytes(field[1:], "big")
        return n - (1 << (8 * (len(field) - 1))) if field[0] == 0xFF else n
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if digits and not all(0x30 <= c <= 0x37 for c in digits):
        raise _damaged(f"damaged tar header at offset {offset}: {what} field is not a number")
    return int(digits or b"0", 8)


def _checksum_ok(block: bytes, offset: int) -> bool:
    stored = _number(block[148:156], "checksum", offset)
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    signed = sum(struct.unpack("512b", block)) - sum(struct.unpack("8b", block[148:156])) + 8 * 0x20
    return stored in (unsigned, signed)


def _pax_records(data: bytes, where: str) -> list[tuple[str, bytes]]:
    """``"<length> <keyword>=<value>\\n"`` records tiling ``data`` exactly (one linear pass)."""
    out, pos = [], 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        length_text = data[pos:space] if space > pos else b""
        if not length_text.isdigit():
            raise _damaged(f"damaged PAX header {where}: record at byte {pos} has no length")
        end = pos + int(length_text)
        if end <= space + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise _damaged(f"damaged PAX header {where}: record at byte {pos} has a wrong length")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq or not key:
            raise _damaged(f"damaged PAX header {where}: record at byte {pos} has no keyword")
        out.append((key.decode("utf-8", "surrogateescape"), value))
        pos = end
    return out


def _pax_int(value: bytes, key: str, where: str) -> int:
    if not value.isdigit() or len(value) > 20:
        raise _damaged(f"damaged PAX header {where}: {key} {value[:40]!r} is not a number")
    return int(value)


class TarReader:
    """Members of the tar stream in ``raw``, in archive order; :meth:`data` streams the
    content of the member just returned; :meth:`finish` checks what follows the end."""

    def __init__(self, raw: BinaryIO, *, gzipped: bool, limits: ArchiveLimits = DEFAULT_LIMITS):
        self.limits = limits
        self._src = _Source(raw, gzipped, limits.max_decompressed_bytes)
        self._pending = 0  # data bytes of the current member (block-padded) not yet consumed
        self._current: Member | None = None
        self._global_bytes = 0
        self.count = 0
        self.last_name: str | None = None
        self.end_offset: int | None = None

    @property
    def bytes_read(self) -> int:
        return self._src.pos

    def __iter__(self) -> Iterator[Member]:
        while (m := self._next()) is not None:
            yield m

    # -- headers -------------------------------------------------------------------------
    def _where(self) -> str:
        return f"after member {self.last_name!r}" if self.last_name is not None else "at the start"

    def _skip(self, n: int) -> None:
        while n > 0:
            got = len(self._src.read(min(n, CHUNK)))
            if not got:
                raise _damaged(f"tar archive truncated inside member {self.last_name!r}")
            n -= got

    def _next(self) -> Member | None:
        self._skip(self._pending)
        self._pending, self._current = 0, None
        ext: dict[bytes, bytes] = {}
        first = self._src.pos  # a member's offset is that of its first (extended) header
        while True:
            offset = self._src.pos
            block = self._src.read_exact(BLOCK)
            if not block and not ext:
                where = f"after member {self.last_name!r}" if self.last_name is not None else "before any member"
                raise _damaged(f"tar archive truncated {where} (no end-of-archive marker)")
            if len(block) < BLOCK:
                raise _damaged(f"tar archive truncated inside a header {self._where()}")
            if block == _ZERO_BLOCK:
                if ext:
                    raise _damaged(f"damaged tar archive: an extended header {self._where()} has no member")
                self.end_offset = offset
                return None
            if not _checksum_ok(block, offset):
                if self.last_name is None and not ext:
                    raise _damaged("not a readable tar archive: bad header checksum at offset 0")
                raise _damaged(f"damaged tar header {self._where()} (offset {offset})")
            kind = block[156:157]
            if kind in _EXTENDED:
                if kind in ext:
                    raise _damaged(f"damaged tar archive: two {_EXTENDED[kind]} headers in a row at offset {offset}")
                ext[kind] = self._read_extended(block, offset)
            elif kind == b"g":
                if ext:
                    raise _damaged(f"damaged tar archive: a global header at offset {offset} follows an extended header")
                self._read_global(block, offset)
                first = self._src.pos
            else:
                return self._member(block, kind, ext, first)

    def _header_data(self, block: bytes, offset: int, what: str, cap: int) -> bytes:
        size = _number(block[124:136], "size", offset)
        if size > cap:
            raise ArchiveError("tar_limits", f"{what} header at offset {offset} {self._where()} holds {size} bytes, "
                                             f"more than the limit of {cap} (header sizes are capped)")
        if size < 0:
            raise _damaged(f"damaged tar header at offset {offset}: negative size")
        data = self._src.read_exact(size)
        if len(data) < size:
            raise _damaged(f"tar archive truncated inside a {what} header {self._where()}")
        self._skip(-size % BLOCK)
        return data

    def _read_extended(self, block: bytes, offset: int) -> bytes:
        return self._header_data(block, offset, _EXTENDED[block[156:157]], self.limits.max_header_bytes)

    def _read_global(self, block: bytes, offset: int) -> None:
        cap = self.limits.max_header_bytes - self._global_bytes  # one budget for all global headers
        data = self._header_data(block, offset, "PAX global", cap)
        self._global_bytes += len(data)
        for key, _ in _pax_records(data, f"at offset {offset}"):
            if key.startswith(_GLOBAL_REFUSED):
                raise _damaged(f"PAX global header at offset {offset} sets {key!r}, which is not supported")

    def _member(self, block: bytes, kind: bytes, ext: dict[bytes, bytes], offset: int) -> Member:
        self.count += 1
        if self.count > self.limits.max_members:
            raise ArchiveError("tar_limits", f"more than {self.limits.max_members} members; stopped reading")
        name, linkname = _text(block[0:100]), _text(block[157:257])
        if block[257:265] == b"ustar\x0000" and block[345] != 0:
            name = _text(block[345:500]) + "/" + name
        m = Member(index=self.count - 1, name=name, kind=_KINDS.get(kind, f"unsupported type {kind!r}"),
                   linkname=linkname, size=_number(block[124:136], "size", offset),
                   mode=_number(block[100:108], "mode", offset), mtime=_number(block[136:148], "mtime", offset),
                   offset=offset)
        if b"L" in ext:
            m.name = _text(ext[b"L"])
        if b"K" in ext:
            m.linkname = _text(ext[b"K"])
        pax = _pax_records(ext[b"x"], f"at offset {offset}") if b"x" in ext else []
        sparse_version = self._apply_pax(m, pax, has_long=(b"L" in ext, b"K" in ext))
        if m.size < 0:
            raise _damaged(f"damaged tar header of {m.name!r} (offset {offset}): negative size")
        m.stored = m.size
        if kind == b"S":
            self._old_gnu_sparse(m, block)
        elif sparse_version:
            self._pax_sparse(m, pax, sparse_version)
        if m.kind != FILE and not m.kind.startswith("unsupported") and m.stored:
            raise _damaged(f"damaged tar header of {m.name!r} (offset {offset}): a {m.kind} with {m.stored} bytes of data")
        if self._src.pos + m.stored > self.limits.max_decompressed_bytes:
            raise ArchiveError("tar_limits", f"member {m.name!r} declares {m.stored} bytes, beyond the limit of "
                                             f"{self.limits.max_decompressed_bytes} decompressed bytes")
        self._pending = m.stored + (-m.stored % BLOCK)
        self._current, self.last_name = m, m.name
        return m

    def _apply_pax(self, m: Member, pax: list[tuple[str, bytes]], has_long: tuple[bool, bool]) -> str | None:
        where = f"of {m.name!r} (offset {m.offset})"
        seen: set[str] = set()
        values: dict[str, bytes] = {}
        for key, value in pax:
            if key in _PAX_ONCE:
                if key in seen:
                    raise _damaged(f"damaged PAX header {where}: {key!r} given twice")
                seen.add(key)
            values[key] = value
        if "path" in values:
            if has_long[0]:
                raise _damaged(f"damaged tar archive: member at offset {m.offset} has both a GNU long name and a PAX path")
            m.name = values["path"].decode("utf-8", "surrogateescape")
        if "linkpath" in values:
            if has_long[1]:
                raise _damaged(f"damaged tar archive: member at offset {m.offset} has both a GNU long link and a PAX linkpath")
            m.linkname = values["linkpath"].decode("utf-8", "surrogateescape")
        if "size" in values:
            m.size = _pax_int(values["size"], "size", where)
        if "mtime" in values:
            if not _PAX_TIME.fullmatch(values["mtime"]):
                raise _damaged(f"damaged PAX header {where}: mtime {values['mtime'][:40]!r} is not a time")
            m.mtime = float(values["mtime"])
        if "GNU.sparse.name" in values:
            m.name = values["GNU.sparse.name"].decode("utf-8", "surrogateescape")
        if values.get("GNU.sparse.major") == b"1" and values.get("GNU.sparse.minor") == b"0":
            return "1.0"
        if "GNU.sparse.map" in values:
            return "0.1"
        if "GNU.sparse.size" in values:
            return "0.0"
        if any(k.startswith("GNU.sparse.") for k in values):
            raise _damaged(f"damaged PAX header {where}: an unknown GNU sparse format")
        return None

    # -- sparse files --------------------------------------------------------------------
    def _old_gnu_sparse(self, m: Member, block: bytes) -> None:
        where = f"of {m.name!r} (offset {m.offset})"
        entries = self._sparse_entries(block[386:482], where)
        extended, blocks = block[482] != 0, 0
        while extended:
            blocks += 1
            if blocks * BLOCK > self.limits.max_header_bytes:
                raise ArchiveError("tar_limits", f"sparse map {where} longer than {self.limits.max_header_bytes} bytes")
            ext = self._src.read_exact(BLOCK)
            if len(ext) < BLOCK:
                raise _damaged(f"tar archive truncated inside the sparse map {where}")
            entries += self._sparse_entries(ext[:504], where)
            extended = ext[504] != 0
        m.kind = FILE
        self._set_sparse(m, entries, _number(block[483:495], "real size", m.offset), m.size, where)

    def _sparse_entries(self, area: bytes, where: str) -> list[tuple[int, int]]:
        out = []
        for pos in range(0, len(area) - 23, 24):
            if area[pos] == 0:
                break
            out.append((_number(area[pos:pos + 12], "sparse offset", 0),
                        _number(area[pos + 12:pos + 24], "sparse length", 0)))
        return out

    def _pax_sparse(self, m: Member, pax: list[tuple[str, bytes]], version: str) -> None:
        where = f"of {m.name!r} (offset {m.offset})"
        values = dict(pax)
        if version == "1.0":
            realsize = _pax_int(values.get("GNU.sparse.realsize", b""), "GNU.sparse.realsize", where)
            numbers, used = self._sparse_map_10(m, where)
            entries = list(zip(numbers[::2], numbers[1::2]))
            self._set_sparse(m, entries, realsize, m.size - used, where)
            return
        realsize = _pax_int(values["GNU.sparse.size"], "GNU.sparse.size", where)
        if version == "0.1":
            parts = values["GNU.sparse.map"].split(b",") if values["GNU.sparse.map"] else []
            numbers = [_pax_int(p, "GNU.sparse.map", where) for p in parts]
            if len(numbers) % 2:
                raise _damaged(f"damaged sparse map {where}: an odd number of values")
            entries = list(zip(numbers[::2], numbers[1::2]))
        else:
            offsets = [_pax_int(v, k, where) for k, v in pax if k == "GNU.sparse.offset"]
            lengths = [_pax_int(v, k, where) for k, v in pax if k == "GNU.sparse.numbytes"]
            if len(offsets) != len(lengths):
                raise _damaged(f"damaged sparse map {where}: {len(offsets)} offsets, {len(lengths)} lengths")
            entries = list(zip(offsets, lengths))
        self._set_sparse(m, entries, realsize, m.size, where)

    def _sparse_map_10(self, m: Member, where: str) -> tuple[list[int], int]:
        """The map at the start of a 1.0 sparse member's data: decimal numbers, one a line."""
        buf, used, numbers, count = b"", 0, [], None
        while count is None or len(numbers) < 2 * count:
            if b"\n" not in buf:
                if used + BLOCK > min(m.size, self.limits.max_header_bytes):
                    raise _damaged(f"damaged sparse map {where}: longer than the member or "
                                   f"{self.limits.max_header_bytes} bytes")
                block = self._src.read_exact(BLOCK)
                if len(block) < BLOCK:
                    raise _damaged(f"tar archive truncated inside the sparse map {where}")
                buf, used = buf + block, used + BLOCK
                continue
            line, buf = buf.split(b"\n", 1)
            value = _pax_int(line, "sparse map entry", where)
            if count is None:
                count = value
            else:
                numbers.append(value)
        if buf.strip(b"\0"):
            raise _damaged(f"damaged sparse map {where}: data after the map in its blocks")
        return numbers, used

    def _set_sparse(self, m: Member, entries: list[tuple[int, int]], realsize: int, stored: int, where: str) -> None:
        end = 0
        for off, length in entries:
            if off < end or off + length > realsize:
                raise _damaged(f"damaged sparse map {where}: extent ({off}, {length}) overlaps or lies beyond "
                               f"the file's {realsize} bytes")
            end = off + length
        if sum(length for _, length in entries) != stored:
            raise _damaged(f"damaged sparse map {where}: extents hold "
                           f"{sum(length for _, length in entries)} bytes, the archive {stored}")
        m.size, m.stored, m.sparse = realsize, stored, tuple(entries)

    # -- content -------------------------------------------------------------------------
    def data(self, m: Member) -> Iterator[bytes]:
        """The content of ``m`` (the member just returned) in chunks; holes come as zeros."""
        if m is not self._current:
            raise RuntimeError("data() of a member other than the current one")
        self._current = None
        pos = 0
        for off, length in m.sparse or ((0, m.stored),):
            yield from self._zeros(off - pos)
            yield from self._stored(length)
            pos = off + length
        yield from self._zeros(m.size - pos)

    def _stored(self, n: int) -> Iterator[bytes]:
        while n > 0:
            chunk = self._src.read(min(n, CHUNK))
            if not chunk:
                raise _damaged(f"tar archive truncated inside member {self.last_name!r}")
            n -= len(chunk)
            self._pending -= len(chunk)
            yield chunk

    @staticmethod
    def _zeros(n: int) -> Iterator[bytes]:
        while n > 0:
            yield _ZEROS[:min(n, CHUNK)]
            n -= CHUNK

    # -- the end ---------------------------------------------------------------------------
    def finish(self) -> None:
        """After the end-of-archive marker: only zeros, at most ``max_trailing_bytes``, then
        the end of the stream (where gzip checks its CRC and length)."""
        limit, trailing = self.limits.max_trailing_bytes, 0
        while chunk := self._src.read(min(CHUNK, limit + 1 - trailing)):
            if chunk.count(0) != len(chunk):
                raise _damaged(f"data after the end-of-archive marker at offset {self.end_offset} "
                               "(a second archive appended? tar -x would not read it)")
            trailing += len(chunk)
            if trailing > limit:
                raise ArchiveError("tar_limits", f"more than {limit} bytes of padding after the end-of-archive "
                                                 f"marker at offset {self.end_offset}; stopped reading")
