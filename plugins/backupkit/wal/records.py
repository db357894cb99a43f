"""Record-level rules of xlogreader.c, for one record held in memory: its header
(ValidXLogRecordHeader) and its block references (DecodeXLogRecord).

Each check raises :class:`Bad` with pg_waldump's own wording, so a verdict can be
compared with pg_waldump's output line for line.
"""

from __future__ import annotations

import struct

from backupkit.wal.naming import format_lsn

BLCKSZ = 8192          # data page size, for the full-page image checks (not recorded in WAL)
RECORD_HEADER = 24
RM_MAX_BUILTIN, RM_MIN_CUSTOM = 21, 128
RECORD = struct.Struct("<IIQBB2xI")   # xl_tot_len, xl_xid, xl_prev, xl_info, xl_rmid, pad, xl_crc


class Bad(Exception):
    """One verdict about the segment being read: its problem kind and pg-style detail."""

    def __init__(self, detail: str, kind: str = "corrupt"):
        super().__init__(detail)
        self.kind = kind


def _short(lsn: int) -> Bad:
    return Bad(f"record with invalid length at {format_lsn(lsn)}")


def decode_blocks(buf, r: int, stop: int, limit: int, lsn: int) -> int:
    """DecodeXLogRecord's checks of the block references in ``buf[r:stop]``; the main data length.

    ``limit`` is how much of the record is held (giant records keep only a prefix). Each
    field's length is checked before it is read, as COPY_HEADER_FIELD does; fields with no
    check between them are checked together.
    """
    hard = stop if stop <= limit else limit
    datatotal = main_len = 0
    max_block = -1
    have_rel = False
    while stop - r > datatotal:
        block_id = buf[r]
        if block_id <= 32:
            if block_id <= max_block:
                raise Bad(f"out-of-order block_id {block_id} at {format_lsn(lsn)}")
            max_block = block_id
            if r + 4 > hard:
                raise _short(lsn)
            flags, data_len = buf[r + 1], buf[r + 2] | buf[r + 3] << 8
            r += 4
            if flags & 0x20:
                if not data_len:
                    raise Bad(f"BKPBLOCK_HAS_DATA set, but no data included at {format_lsn(lsn)}")
            elif data_len:
                raise Bad(f"BKPBLOCK_HAS_DATA not set, but data length is {data_len} at {format_lsn(lsn)}")
            datatotal += data_len
            if flags & 0x10:
                if r + 5 > hard:
                    raise _short(lsn)
                image_len, hole_offset, image_info = buf[r] | buf[r + 1] << 8, buf[r + 2] | buf[r + 3] << 8, buf[r + 4]
                r += 5
                datatotal += image_len
                _check_image(buf, r, hard, image_len, hole_offset, image_info, lsn)
                if image_info & 0x1C and image_info & 0x01:
                    r += 2
            if flags & 0x80:
                if not have_rel:
                    raise Bad(f"BKPBLOCK_SAME_REL set but no previous rel at {format_lsn(lsn)}")
                if r + 4 > hard:
                    raise _short(lsn)
                r += 4
            else:
                if r + 16 > hard:
                    raise _short(lsn)
                r += 16
                have_rel = True
        elif block_id == 255:
            if r + 2 > hard:
                raise _short(lsn)
            main_len = buf[r + 1]
            datatotal += main_len
            r += 2
            break
        elif block_id == 254:
            if r + 5 > hard:
                raise _short(lsn)
            main_len = int.from_bytes(buf[r + 1:r + 5], "little")
            datatotal += main_len
            r += 5
            break
        elif block_id == 253 or block_id == 252:
            r += 3 if block_id == 253 else 5
            if r > hard:
                raise _short(lsn)
        else:
            raise Bad(f"invalid block_id {block_id} at {format_lsn(lsn)}")
    if stop - r != datatotal:
        raise _short(lsn)
    return main_len


def _check_image(buf, r: int, hard: int, image_len: int, hole_offset: int, image_info: int, lsn: int) -> None:
    """The cross-checks of a full-page image's header (after its first three fields)."""
    compressed, has_hole = image_info & 0x1C, image_info & 0x01
    if compressed:
        hole_len = 0
        if has_hole:
            if r + 2 > hard:
                raise _short(lsn)
            hole_len = buf[r] | buf[r + 1] << 8
    else:
        hole_len = BLCKSZ - image_len
    if has_hole and (hole_offset == 0 or hole_len == 0 or image_len == BLCKSZ):
        raise Bad(f"BKPIMAGE_HAS_HOLE set, but hole offset {hole_offset} length {hole_len} "
                   f"block image length {image_len} at {format_lsn(lsn)}")
    if not has_hole and (hole_offset or hole_len):
        raise Bad(f"BKPIMAGE_HAS_HOLE not set, but hole offset {hole_offset} length {hole_len} at {format_lsn(lsn)}")
    if compressed and image_len == BLCKSZ:
        raise Bad(f"BKPIMAGE_COMPRESSED set, but block image length {image_len} at {format_lsn(lsn)}")
    if not has_hole and not compressed and image_len != BLCKSZ:
        raise Bad("neither BKPIMAGE_HAS_HOLE nor BKPIMAGE_COMPRESSED set, but block image "
                   f"length is {image_len} at {format_lsn(lsn)}")


def check_record_header(tot: int, rmid: int, prev: int, lsn: int, expected_prev: int | None) -> None:
    """ValidXLogRecordHeader: ``expected_prev`` None means random access (only ``prev < lsn``)."""
    if tot < RECORD_HEADER:
        raise Bad(f"invalid record length at {format_lsn(lsn)}: expected at least {RECORD_HEADER}, got {tot}")
    if RM_MAX_BUILTIN < rmid < RM_MIN_CUSTOM:
        raise Bad(f"invalid resource manager ID {rmid} at {format_lsn(lsn)}")
    if expected_prev is None:
        if not prev < lsn:
            raise Bad(f"record with incorrect prev-link {format_lsn(prev)} at {format_lsn(lsn)}")
    elif prev != expected_prev:
        raise Bad(f"record with incorrect prev-link {format_lsn(prev)} at {format_lsn(lsn)}")


__all__ = ["Bad", "decode_blocks", "check_record_header", "RECORD", "RECORD_HEADER", "BLCKSZ"]
