"""Making and damaging custom-format dumps for the tests (and the verify benchmark).

The bundled pg_dump writes neither zstd nor lz4, so :func:`recompress` turns a real
``pg_dump -Fc -Z 0`` dump into the dump a zstd- or lz4-capable pg_dump would write:
each data block's bytes become one zstd frame / LZ4 frame, cut into 4 KiB chunks, the
header names the compression, and the TOC's data offsets point at the moved blocks.
This is written independently of backupkit's reader: block positions come from
pg_restore itself (``pg_restore -v`` prints ``-- Data Pos: N`` for every entry).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from backupkit.pgbin import pg_bin

COMPRESSION_CODES = {"none": 0, "gzip": 1, "lz4": 2, "zstd": 3}
CHUNK = 4096


def data_positions(dump: Path) -> dict[int, int]:
    """dump id -> offset of its data block, as pg_restore reports them."""
    out = subprocess.run([pg_bin("pg_restore"), "-v", "-f", "-", str(dump)], capture_output=True, check=True).stdout
    found = {}
    for m in re.finditer(rb"-- TOC entry (\d+) \(class \d+ OID \d+\)\n(?:--.*\n)*?-- Data Pos: (\d+)", out):
        if int(m.group(2)):
            found[int(m.group(1))] = int(m.group(2))
    return found


def _int(value: int, size: int = 4) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(size, "little")


def _read_int(data: bytes, pos: int, size: int = 4) -> tuple[int, int]:
    value = int.from_bytes(data[pos + 1:pos + 1 + size], "little")
    return (-value if data[pos] else value), pos + 1 + size


def _chunks(data: bytes, pos: int) -> tuple[bytes, int]:
    """Concatenated chunk payloads of one stream starting at ``pos``; position after its end marker."""
    out = bytearray()
    while True:
        n, pos = _read_int(data, pos)
        if n == 0:
            return bytes(out), pos
        out += data[pos:pos + n]
        pos += n


def _compress(raw: bytes, compression: str) -> bytes:
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(raw)
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.compress(raw)
    raise ValueError(compression)


def _emit(frame: bytes) -> bytes:
    body = b"".join(_int(len(frame[i:i + CHUNK])) + frame[i:i + CHUNK] for i in range(0, len(frame), CHUNK))
    return body + _int(0)


def recompress(z0_dump: Path, out: Path, compression: str) -> tuple[Path, dict[int, int]]:
    """Write ``out``: the ``-Z 0`` dump with every data stream as one ``compression`` frame.

    Returns the path and the new block offsets (dump id -> offset)."""
    data = z0_dump.read_bytes()
    assert data[11] == 0, "needs an uncompressed (-Z 0) custom dump"
    positions = data_positions(z0_dump)
    start = min(positions.values())
    head = bytearray(data[:start])
    head[11] = COMPRESSION_CODES[compression]
    blocks, pos, new_pos = bytearray(), start, {}
    while pos < len(data):
        kind, dump_id = data[pos], _read_int(data, pos + 1)[0]
        new_pos[dump_id] = start + len(blocks)
        blocks += data[pos:pos + 6]
        pos += 6
        if kind == 1:
            raw, pos = _chunks(data, pos)
            blocks += _emit(_compress(raw, compression))
            continue
        while True:  # large objects: oid, stream; zero oid ends
            oid, nxt = _read_int(data, pos)
            blocks += data[pos:nxt]
            pos = nxt
            if oid == 0:
                break
            raw, pos = _chunks(data, pos)
            blocks += _emit(_compress(raw, compression))
    for dump_id, old in positions.items():
        field = b"\x02" + old.to_bytes(8, "little")
        assert head.count(field) == 1, f"offset field of entry {dump_id} not unique"
        at = head.index(field)
        head[at:at + 9] = b"\x02" + new_pos[dump_id].to_bytes(8, "little")
    out.write_bytes(bytes(head) + bytes(blocks))
    return out, new_pos


def block_spans(dump: Path, positions: dict[int, int] | None = None) -> list[tuple[int, int, int]]:
    """(dump id, first chunk header, end of block) of each data block in file order, for aimed damage."""
    data = dump.read_bytes()
    spans = []
    for dump_id, start in sorted((positions or data_positions(dump)).items(), key=lambda kv: kv[1]):
        pos = start + 6
        if data[start] == 1:
            _, end = _chunks(data, pos)
        else:
            end = pos
            while True:
                oid, end = _read_int(data, end)
                if oid == 0:
                    break
                _, end = _chunks(data, end)
        spans.append((dump_id, pos, end))
    return spans


def pg_restore_ok(dump: Path) -> bool:
    """The oracle: does ``pg_restore -f /dev/null`` accept the file?"""
    proc = subprocess.run([pg_bin("pg_restore"), "-f", "/dev/null", str(dump)], capture_output=True, timeout=120)
    return proc.returncode == 0
