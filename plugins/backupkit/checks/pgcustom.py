"""pg_dump's custom format (``-Fc``) read the way pg_restore reads it, and to its last byte.

The layout, from PostgreSQL 18's pg_backup_archiver.c (``ReadHead``, ``ReadToc``,
``ReadInt``, ``ReadStr``, ``ReadOffset``) and pg_backup_custom.c (``_ReadExtraToc``,
``_PrintTocData``, ``_CustomReadFunc``, ``_LoadLOs``):

* header: ``PGDMP``, version bytes (1, minor, revision), integer size, offset size,
  format (1 = custom), compression (since 1.15 a byte: 0 none, 1 gzip, 2 lz4, 3 zstd;
  before, an integer level), creation time (7 integers), database name, server version,
  pg_dump version;
* table of contents: an entry count, then per entry its dump id, a has-data flag, table
  oid, oid, tag, description, section, definition, drop statement, COPY statement,
  namespace, tablespace, table access method (1.14), relkind (1.16), owner, the WITH OIDS
  flag, dependencies (strings up to a NULL), and the data offset (a flag byte: 1 not set,
  2 set, 3 no data; then ``offSize`` bytes, least significant first);
* data: for each entry with data, a block: type (1 table data, 3 large objects), the dump
  id, then chunks (an integer length and that many bytes) up to a zero length; a large
  object block holds (oid, chunks) pairs up to a zero oid. Nothing follows the last block.

Integers are a sign byte and ``intSize`` little-endian bytes; strings an integer length
(-1 for NULL) and the bytes. What this reader holds against a file is written down in
docs/dump-rules.md; every departure is a verdict that names the offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backupkit.checks.blocks import BlockFeeder, BlockPool
from backupkit.checks.copytext import text_check, walk_copy_chunks
from backupkit.checks.stream import Tap

COMPRESSIONS = {0: "none", 1: "gzip", 2: "lz4", 3: "zstd"}
SUPPORTED_MINOR = range(12, 17)  # 1.12 (PostgreSQL 9.0) .. 1.16 (PostgreSQL 17 and 18)
MAX_TOC_ENTRIES = 5_000_000  # ids are kept in memory: ~60 bytes each
KEEP_NAME = 1024  # bytes of a tag, description or namespace kept (the rest is skipped)
KEEP_COPY = 1 << 20  # a COPY statement kept to count its columns
BLK_DATA, BLK_BLOBS = 1, 3
OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA = 1, 2, 3
SECTIONS = range(1, 5)  # none, pre-data, data, post-data
MAX_LISTED = 5  # missing blocks named one by one


class DumpProblem(Exception):
    """The archive is not what pg_dump writes; the message is the verdict."""


class _Truncated(DumpProblem):
    pass


@dataclass
class Header:
    version: str
    int_size: int
    off_size: int
    compression: str
    database: str
    server_version: str
    pg_dump_version: str


@dataclass
class DataEntry:
    dump_id: int
    desc: str
    name: str  # "public.bookings" as pg_restore --list shows it
    columns: int | None  # from the COPY statement; None without one
    flag: int
    offset: int

    def label(self) -> str:
        return f"entry {self.dump_id} ({self.desc} {self.name})".rstrip()


@dataclass
class CustomScan:
    """What the reader found: the header, counts, and every problem (empty: a whole dump)."""

    header: Header | None = None
    toc_entries: int = 0
    data_entries: int = 0
    blocks: int = 0
    decoded_bytes: int = 0
    end_offset: int = 0  # where the last data block ends
    problems: list[str] = field(default_factory=list)
    trailing_bytes: int = 0
    copy_rows: dict[str, int] = field(default_factory=dict)  # table -> rows of its TABLE DATA


class _Cursor:
    """Sequential reads over a :class:`Tap`, tracking the file offset; no seeks."""

    def __init__(self, tap: Tap):
        self.tap, self.buf, self.pos, self.base = tap, b"", 0, 0
        self.int_size = 4

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def _more(self, n: int, what: str) -> None:
        while len(self.buf) - self.pos < n:
            block = self.tap.read_block()
            if not block:
                raise _Truncated(f"file ends inside {what} at offset {self.offset + len(self.buf) - self.pos}")
            rest = self.buf[self.pos:]
            self.base += self.pos
            self.buf, self.pos = (rest + block if rest else block), 0

    def at_end(self) -> bool:
        if self.pos < len(self.buf):
            return False
        block = self.tap.read_block()
        if not block:
            return True
        self.base += self.pos
        self.buf, self.pos = block, 0
        return False

    def byte(self, what: str) -> int:
        self._more(1, what)
        self.pos += 1
        return self.buf[self.pos - 1]

    def bytes(self, n: int, what: str) -> bytes:
        self._more(n, what)
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def int(self, what: str) -> int:
        n = self.int_size + 1
        self._more(n, what)
        sign, start = self.buf[self.pos], self.pos + 1
        self.pos += n
        if sign > 1:
            raise DumpProblem(f"corrupt integer in {what} at offset {self.offset - n} (sign byte {sign})")
        value = int.from_bytes(self.buf[start:self.pos], "little")
        return -value if sign else value

    def skip(self, n: int, what: str) -> None:
        while n:
            if self.pos >= len(self.buf):
                self._more(1, what)
            take = min(n, len(self.buf) - self.pos)
            self.pos += take
            n -= take

    def string(self, what: str, keep: int = 0) -> bytes | None:
        n = self.int(what)
        if n == -1:
            return None
        if n < -1:
            raise DumpProblem(f"corrupt string length {n} in {what} at offset {self.offset}")
        kept = self.bytes(min(n, keep), what) if keep else b""
        self.skip(n - len(kept), what)
        return kept

    def chunks(self, feed, what: str) -> int:
        """Walk length-prefixed chunks up to the zero length, feeding each payload."""
        hdr, total = self.int_size + 1, 0
        while True:
            buf, pos, end = self.buf, self.pos, len(self.buf)
            view = memoryview(buf)
            while pos + hdr <= end:  # the common case, without a call per field
                sign, n = buf[pos], int.from_bytes(view[pos + 1:pos + hdr], "little")
                if sign:
                    self.pos = pos
                    raise DumpProblem(f"negative chunk length in {what} at offset {self.offset}")
                pos += hdr
                if n == 0:
                    self.pos = pos
                    return total
                total += n
                if pos + n > end:
                    self.pos = pos
                    self._payload(n, feed, what)
                    break
                feed(view[pos:pos + n])
                pos += n
            else:
                self.pos = pos
                n = self.int(what)
                if n < 0:
                    raise DumpProblem(f"negative chunk length in {what} at offset {self.offset}")
                if n == 0:
                    return total
                total += n
                self._payload(n, feed, what)

    def chunk(self, feed, what: str) -> int:
        """One chunk: its payload fed, its length returned (0: the end marker)."""
        self._more(self.int_size + 1, what)
        if self.buf[self.pos]:  # as chunks() says it, whatever the sign byte
            raise DumpProblem(f"negative chunk length in {what} at offset {self.offset}")
        n = self.int(what)
        if n:
            self._payload(n, feed, what)
        return n

    def _payload(self, n: int, feed, what: str) -> None:
        while n:
            if self.pos >= len(self.buf):
                self._more(1, what)
            take = min(n, len(self.buf) - self.pos)
            feed(memoryview(self.buf)[self.pos:self.pos + take])
            self.pos += take
            n -= take


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", "replace")


def read_header(cur: _Cursor) -> Header:
    if cur.bytes(5, "the header") != b"PGDMP":
        raise DumpProblem("not a custom-format dump (no PGDMP magic)")
    major, minor, rev = cur.byte("the header"), cur.byte("the header"), cur.byte("the header")
    if major != 1 or minor not in SUPPORTED_MINOR:
        newer = major > 1 or minor > SUPPORTED_MINOR[-1]
        raise DumpProblem(f"archive version {major}.{minor}: {'newer' if newer else 'older'} than this reader "
                          f"knows (1.{SUPPORTED_MINOR[0]} to 1.{SUPPORTED_MINOR[-1]}, PostgreSQL 9.0 to 18)")
    int_size, off_size = cur.byte("the header"), cur.byte("the header")
    if int_size not in (4, 8) or off_size not in (4, 8):
        raise DumpProblem(f"implausible header: integer size {int_size}, offset size {off_size} (pg_dump writes 4 and 8)")
    cur.int_size = int_size
    fmt = cur.byte("the header")
    if fmt != 1:
        raise DumpProblem(f"header says format {fmt}, not custom (1)")
    if minor >= 15:
        code = cur.byte("the header")
        if code not in COMPRESSIONS:
            raise DumpProblem(f"unknown compression method {code} in the header")
        compression = COMPRESSIONS[code]
    else:
        compression = "gzip" if cur.int("the header") != 0 else "none"
    for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        cur.int("the header")
    names = [_text(cur.string("the header", KEEP_NAME)) for _ in range(3)]
    return Header(f"1.{minor}.{rev}", int_size, off_size, compression, *names)


def _columns(copy_stmt: bytes | None) -> int | None:
    """Columns of ``COPY name (a, "b,c") FROM stdin;``: pg_dump's own statement, or None."""
    text = _text(copy_stmt).strip()
    if not text:
        return None
    if not (text.startswith("COPY ") and text.endswith("FROM stdin;")):
        raise DumpProblem(f"COPY statement is not pg_dump's: {text[:80]!r}")
    body = text[5:-len("FROM stdin;")].rstrip()
    if not body.endswith(")"):
        return 0  # a table without columns: "COPY public.t  FROM stdin;"
    quoted, start, count = False, None, 1
    for i, ch in enumerate(body):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(" and start is None:
            start = i
        elif not quoted and ch == "," and start is not None:
            count += 1
    if start is None:
        raise DumpProblem(f"COPY statement without a column list: {text[:80]!r}")
    return count if body[start + 1:-1].strip() else 0


def read_toc(cur: _Cursor, header: Header, scan: CustomScan,
             offset_fields: list[int] | None = None) -> dict[int, DataEntry]:
    """The entries that have data, by dump id; ``offset_fields`` collects where each data
    entry's offset field starts (the transcoder rewrites them)."""
    minor = int(header.version.split(".")[1])
    count = cur.int("the TOC")
    if not 0 <= count <= MAX_TOC_ENTRIES:
        raise DumpProblem(f"TOC claims {count} entries (this reader accepts 0 to {MAX_TOC_ENTRIES})")
    seen: set[int] = set()
    data: dict[int, DataEntry] = {}
    for i in range(count):
        what = f"TOC entry {i + 1} of {count}"
        dump_id = cur.int(what)
        if dump_id <= 0:
            raise DumpProblem(f"{what}: dump id {dump_id} out of range (corrupt TOC)")
        if dump_id in seen:
            raise DumpProblem(f"{what}: dump id {dump_id} appears twice (corrupt TOC)")
        seen.add(dump_id)
        had_data = cur.int(what)
        if had_data not in (0, 1):
            raise DumpProblem(f"{what}: has-data flag {had_data} (corrupt TOC)")
        cur.string(what), cur.string(what)  # table oid, oid
        tag = _text(cur.string(what, KEEP_NAME))
        desc = _text(cur.string(what, KEEP_NAME))
        section = cur.int(what)
        if section not in SECTIONS:
            raise DumpProblem(f"{what} ({desc} {tag}): section {section} out of range (corrupt TOC)")
        defn = cur.string(what, KEEP_NAME if desc in ("ENCODING", "STDSTRINGS") else 0)
        cur.string(what)  # drop statement
        copy_stmt = cur.string(what, KEEP_COPY)
        namespace = _text(cur.string(what, KEEP_NAME))
        cur.string(what)  # tablespace
        if minor >= 14:
            cur.string(what)  # table access method
        if minor >= 16:
            cur.int(what)  # relkind
        cur.string(what)  # owner
        cur.string(what)  # WITH OIDS ("false")
        while (dep := cur.string(what, 16)) is not None:
            if not dep.strip().isdigit():
                raise DumpProblem(f"{what} ({desc} {tag}): dependency {dep!r} is not a dump id (corrupt TOC)")
        if offset_fields is not None and had_data:
            offset_fields.append(cur.offset)
        flag = cur.byte(what)
        offset = int.from_bytes(cur.bytes(header.off_size, what), "little")
        if flag not in (OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA):
            raise DumpProblem(f"{what} ({desc} {tag}): data offset flag {flag} (corrupt TOC)")
        if (flag == OFFSET_NO_DATA) == bool(had_data):
            raise DumpProblem(f"{what} ({desc} {tag}): has-data flag {had_data} but offset flag {flag} (corrupt TOC)")
        _special(desc, defn)
        if had_data:
            name = f"{namespace}.{tag}" if namespace else tag
            columns = _columns(copy_stmt) if desc == "TABLE DATA" else None
            data[dump_id] = DataEntry(dump_id, desc, name, columns, flag, offset)
    scan.toc_entries, scan.data_entries = count, len(data)
    return data


def _special(desc: str, defn: bytes | None) -> None:
    """The entries pg_restore interprets while reading the TOC must be readable the same way."""
    text = _text(defn)
    if desc == "ENCODING" and text.count("'") < 2:
        raise DumpProblem(f"invalid ENCODING entry: {text[:80]!r}")
    if desc == "STDSTRINGS" and not ("'on'" in text or "'off'" in text):
        raise DumpProblem(f"invalid STDSTRINGS entry: {text[:80]!r}")


def _trailing(cur: _Cursor, toc_entries: int) -> tuple[int, str]:
    """How many bytes follow the last data block, and what they look like."""
    start = cur.offset
    first = bytes(cur.buf[cur.pos:cur.pos + 16])
    zeros, magic, carry = True, False, b""
    while not cur.at_end():
        rest = cur.buf[cur.pos:]
        zeros = zeros and rest.count(0) == len(rest)
        magic = magic or b"PGDMP" in carry + rest[:8] or b"PGDMP" in rest
        carry = rest[-4:]
        cur.pos = len(cur.buf)
    n = cur.offset - start
    toc_copy = first[:1 + cur.int_size] == bytes([0]) + toc_entries.to_bytes(cur.int_size, "little")
    if first.startswith(b"PGDMP") or (magic and toc_copy):
        how = "; a copy of the TOC comes first (pg_dump wrote to a file opened with >>)" if toc_copy else ""
        return n, f"a second custom dump is appended after the end of this one (pg_dump -Fc >> file?){how}"
    if toc_copy:
        return n, "a second copy of the TOC: pg_dump wrote to a file opened for appending (>>); dump to a new file"
    if magic:
        return n, "another custom dump starts inside them (files concatenated?)"
    if zeros:
        return n, "they are all zero bytes"
    return n, f"they start {first[:8].hex(' ')}"


def _walk_blocks(cur: _Cursor, header: Header, entries: dict[int, DataEntry], pool: BlockPool,
                 scan: CustomScan) -> None:
    seen: set[int] = set()
    while not cur.at_end():
        start = cur.offset
        if len(seen) == len(entries):
            n, what = _trailing(cur, scan.toc_entries)
            scan.trailing_bytes = n
            raise DumpProblem(f"{n} bytes follow the end of the last data block at offset {start}: {what}")
        kind = cur.byte(f"the data block header at offset {start}")
        if kind not in (BLK_DATA, BLK_BLOBS):
            raise DumpProblem(f"unknown data block type {kind} at offset {start} (corrupt or misplaced block)")
        dump_id = cur.int(f"the data block header at offset {start}")
        entry = entries.get(dump_id)
        if entry is None:
            raise DumpProblem(f"data block at offset {start} belongs to dump id {dump_id}, which has no data in the TOC")
        if dump_id in seen:
            raise DumpProblem(f"second data block for {entry.label()} at offset {start}")
        if entry.flag == OFFSET_SET and entry.offset != start:
            raise DumpProblem(f"the TOC places the data of {entry.label()} at offset {entry.offset}; "
                              f"its block starts at {start}")
        if (kind == BLK_BLOBS) != (entry.desc == "BLOBS"):
            raise DumpProblem(f"data block at offset {start} of type {kind} for {entry.label()}")
        seen.add(dump_id)
        scan.blocks += 1
        if kind == BLK_DATA:
            _stream(cur, pool, entry.label(), header.compression,
                    text_check(entry.desc, entry.columns, header.compression),
                    entry.name if entry.desc == "TABLE DATA" else None)
        else:
            while (oid := cur.int(f"the large objects of {entry.label()}")) != 0:
                if oid < 0:
                    raise DumpProblem(f"negative large object oid in {entry.label()} at offset {cur.offset}")
                _stream(cur, pool, f"large object {oid} of {entry.label()}", header.compression, None)
        scan.end_offset = cur.offset
    missing = [e for i, e in entries.items() if i not in seen]
    if missing:
        names = ", ".join(e.label() for e in missing[:MAX_LISTED])
        more = f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise DumpProblem(f"the file ends at offset {cur.offset} without the data of {names}{more} "
                          f"(truncated at a block boundary?)")


def _stream(cur: _Cursor, pool: BlockPool, label: str, compression: str, text, table: str | None = None) -> None:
    if compression == "none" and text is not None:  # COPY rows, one chunk each: counted here, in bulk
        job = pool.inline(label, text, table)
        try:
            walk_copy_chunks(cur, job, label)
        except DumpProblem:
            job.abandon()
            raise
        job.close()
        return
    feeder: BlockFeeder = pool.open(label, compression, text, table)
    try:
        cur.chunks(feeder.feed, label)
    except DumpProblem:
        feeder.abandon()
        raise
    feeder.close()


def scan_custom(tap: Tap, workers: int = 1) -> CustomScan:
    """Read a custom dump from ``tap`` to its end, decoding every data block on ``workers`` threads."""
    scan = CustomScan()
    cur = _Cursor(tap)
    pool = BlockPool(workers)
    try:
        scan.header = read_header(cur)
        entries = read_toc(cur, scan.header, scan)
        _walk_blocks(cur, scan.header, entries, pool, scan)
    except DumpProblem as exc:
        scan.problems.append(str(exc))
    finally:
        block_problems = pool.close()
        scan.decoded_bytes = pool.decoded
        scan.copy_rows = pool.copy_rows()
    scan.problems += [f"{label}: {problem}" for label, problem in block_problems]
    return scan
