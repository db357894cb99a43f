"""Page headers and records of WAL segments, checked as PostgreSQL's xlogreader does.

Every rule here is one that ``pg_waldump`` (xlogreader.c) applies, in the same order
per record: page header (magic, flags, address, long header fields, timeline), record
header (length, resource manager, previous-record link), the pages a record continues
on (continuation flag and remaining length), the CRC-32C over the record, then the
block references (DecodeXLogRecord). A few rules are stricter and say so in
docs/wal.md: the system identifier must be the archive's, page timelines must agree
with the timeline history, and an archived (non-partial) segment must be full of WAL.

Speed: each window of pages is turned into one "logical" buffer (page headers cut
out), so a record is one contiguous slice wherever it crosses pages and its CRC is one
C call. Records that continue past the window go through :class:`_Pending`, which keeps
at most ``KEEP_WHOLE`` bytes of any record. Memory is bounded by the window, not by the
segment size or by lengths read from the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache

from crc32c import crc32c

from backupkit.wal.naming import XLOG_BLCKSZ, format_lsn
from backupkit.wal.records import RECORD, RECORD_HEADER, Bad, check_record_header, decode_blocks

PAGE_MAGICS = {0xD110: 15, 0xD113: 16, 0xD116: 17, 0xD118: 18}
SHORT_HEADER, LONG_HEADER = 24, 40
CONTRECORD, LONG, OVERWRITE_CONTRECORD, ALL_FLAGS = 0x1, 0x2, 0x8, 0xF
RM_XLOG, RM_XACT = 0, 1
XLOG_CHECKPOINT_SHUTDOWN, XLOG_SWITCH, XLOG_END_OF_RECOVERY = 0x00, 0x40, 0x90
XACT_END_OPS = (0x00, 0x20, 0x30, 0x40)  # commit, abort, commit prepared, abort prepared
WINDOW = 8 << 20
KEEP_WHOLE = 4 << 20
PREFIX = 8192
INF = 1 << 64

PAGE_HEADER = struct.Struct("<HHIQI")
LONG_FIELDS = struct.Struct("<QII")


@dataclass
class SegmentScan:
    """What one segment holds, as the verifier needs it (picklable, small)."""

    name: str
    segno: int
    partial: bool = False
    problem: str | None = None        # "corrupt" or "timeline_fork"
    detail: str = ""
    skipped_to: int | None = None     # where the first record was expected, after the continuation
    first_lsn: int | None = None      # first record that starts in this segment
    first_prev: int | None = None     # ... and its previous-record link
    last_lsn: int | None = None       # last whole record starting here
    end_lsn: int | None = None        # its end, MAXALIGNed (after a switch record: the segment's end)
    switched: bool = False            # ends with a switch record: the next segment starts afresh
    junction: str | None = None       # the record continuing into the next segment does not fit it
    records: int = 0
    commit_time: int | None = None    # of the last commit/abort record (us since 2000-01-01 UTC)
    switches: list[tuple[int, int, int]] = field(default_factory=list)  # (lsn, timeline, previous)


@dataclass(frozen=True)
class Context:
    """What every segment of one timeline must agree with."""

    segment_size: int
    magic: int
    sysid: int
    tli: int
    switch_lsn: int = 0               # where this timeline begins (0: timeline 1 or unknown)
    ancestors: frozenset[int] = frozenset()


class _Pending:
    """A record that continues past the window it starts in: bytes fed in order until whole."""

    __slots__ = ("lsn", "tot", "got", "buf", "crc", "scan", "expected_prev", "header_checked")

    def __init__(self, lsn: int, tot: int, scan: SegmentScan, expected_prev: int | None):
        self.lsn, self.tot, self.got, self.scan = lsn, tot, 0, scan
        self.expected_prev = expected_prev
        self.buf = bytearray()
        self.crc = 0
        self.header_checked = False

    @property
    def remaining(self) -> int:
        return self.tot - self.got

    def feed(self, piece) -> None:
        start = self.got
        self.got += len(piece)
        if self.tot <= KEEP_WHOLE:
            self.buf += piece
        else:  # keep a prefix for the headers; the CRC runs over the rest as it comes
            if start < PREFIX:
                self.buf += piece[:PREFIX - start]
            skip = max(0, RECORD_HEADER - start)
            if skip < len(piece):
                self.crc = crc32c(piece[skip:], self.crc)
        if not self.header_checked and len(self.buf) >= RECORD_HEADER:
            tot, _xid, prev, _info, rmid, _crc = RECORD.unpack_from(self.buf, 0)
            check_record_header(tot, rmid, prev, self.lsn, self.expected_prev)
            self.header_checked = True


@lru_cache(maxsize=1)
def _buffers(window: int) -> tuple[memoryview, bytearray]:
    """The read and logical buffers, allocated once per process: fresh multi-megabyte buffers
    per window cost more in page faults than the copying itself. Walkers of one process run
    one after the other (a worker reads its chunks in turn), so they can share them."""
    return memoryview(bytearray(window)), bytearray(window)


class Walker:
    """Reads the consecutive segments of one timeline in order, a window at a time.

    ``begin`` starts a segment, ``window`` feeds it (page-aligned bytes in order) and
    returns False once the rest of the segment does not matter (a switch record, an
    error). A record that continues into the next segment stays pending and is finished
    by that segment's first pages. Every segment is otherwise read on its own, as
    pg_waldump does when it starts at a segment: the continuation at its start is
    skipped and its first record's previous-record link is only checked to point
    backwards; whether consecutive segments join up is the caller's check
    (:func:`joins`), so that a segment read by another process is judged the same way.
    """

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.pending: _Pending | None = None
        self.scan: SegmentScan | None = None
        self.read_buffer, self._logical = _buffers(min(WINDOW, ctx.segment_size))

    def begin(self, name: str, segno: int, *, partial: bool = False, finish_only: bool = False) -> SegmentScan:
        """Start a segment; ``finish_only``: read it only to finish the pending record."""
        if self.pending is not None and (self.scan is None or segno != self.scan.segno + 1):
            self.pending = None  # not the successor of the segment the record started in
        self.scan = SegmentScan(name, segno, partial)
        self.seg_start = segno * self.ctx.segment_size
        self.offset = 0
        self.finish_only = finish_only
        self.done = finish_only and self.pending is None
        self.skipping = self.pending is None
        self.last_lsn: int | None = None
        self.page_tli = 0
        return self.scan

    def window(self, mv) -> bool:
        """Check the next ``len(mv)`` bytes of the segment; False when the rest can be skipped."""
        if self.done:
            return False
        nbytes = len(mv) - len(mv) % XLOG_BLCKSZ
        try:
            self._window(mv, nbytes)
        except Bad as bad:
            self._fail(bad)
        self.offset += nbytes
        return not self.done

    def abandon_pending(self) -> None:
        """The next segment is missing or unreadable: the record in progress cannot be judged."""
        self.pending = None

    def _fail(self, bad: Bad) -> None:
        scan = self.scan
        if not scan.partial:  # a partial segment's WAL simply ends where it stops being valid
            scan.problem, scan.detail = bad.kind, str(bad)
        self.done = True
        self.pending = None

    # -- pages -----------------------------------------------------------------------
    def _pages(self, mv, nbytes: int) -> "_WindowState":
        """Check the window's page headers and copy their payloads, in order, into one buffer."""
        bounds, deltas, infos, rems = [], [], [], []
        out = self._logical
        logical = 0
        page_lsn = self.seg_start + self.offset
        bad = None
        unpack = PAGE_HEADER.unpack_from
        magic_ok, tli_ok, seg_start = self.ctx.magic, self.ctx.tli, self.seg_start
        for off in range(0, nbytes, XLOG_BLCKSZ):
            magic, info, tli, addr, rem = unpack(mv, off)
            if magic == magic_ok and not info & ~0x5 and addr == page_lsn and tli == tli_ok and page_lsn != seg_start:
                header = SHORT_HEADER  # the common page: short header, this timeline
                self.page_tli = tli
            else:
                try:
                    header = self._check_page(mv, off, page_lsn, magic, info, tli, addr)
                except Bad as exc:
                    bad = exc
                    break
            out[logical:logical + XLOG_BLCKSZ - header] = mv[off + header:off + XLOG_BLCKSZ]
            bounds.append(logical)
            deltas.append(page_lsn + header - logical)
            infos.append(info)
            rems.append(rem)
            logical += XLOG_BLCKSZ - header
            page_lsn += XLOG_BLCKSZ
        return _WindowState(memoryview(out)[:logical], bounds, deltas, infos, rems, bad)

    def _check_page(self, mv, off: int, page_lsn: int, magic: int, info: int, tli: int, addr: int) -> int:
        ctx, name = self.ctx, self.scan.name
        where = f"LSN {format_lsn(page_lsn)}, offset {page_lsn - self.seg_start}"
        if magic != ctx.magic:
            raise Bad(f"invalid magic number {magic:04X} in WAL segment {name}, {where}")
        if info & ~ALL_FLAGS:
            raise Bad(f"invalid info bits {info:04X} in WAL segment {name}, {where}")
        header = SHORT_HEADER
        if info & LONG:
            sysid, seg_size, blcksz = LONG_FIELDS.unpack_from(mv, off + 24)
            if sysid != ctx.sysid:
                raise Bad(f"WAL segment {name} is from a different database system: system identifier "
                           f"{sysid}, the archive's is {ctx.sysid}")
            if seg_size != ctx.segment_size:
                raise Bad(f"WAL segment {name}: incorrect segment size {seg_size} in page header")
            if blcksz != XLOG_BLCKSZ:
                raise Bad(f"WAL segment {name}: incorrect XLOG_BLCKSZ {blcksz} in page header")
            header = LONG_HEADER
        elif page_lsn == self.seg_start:
            raise Bad(f"invalid info bits {info:04X} in WAL segment {name}, {where}")
        if addr != page_lsn:
            raise Bad(f"unexpected pageaddr {format_lsn(addr)} in WAL segment {name}, {where}")
        if tli != ctx.tli:
            self._check_page_tli(tli, page_lsn, name, where)
        self.page_tli = tli
        return header

    def _check_page_tli(self, tli: int, page_lsn: int, name: str, where: str) -> None:
        ctx = self.ctx
        if tli < self.page_tli:
            raise Bad(f"out-of-sequence timeline ID {tli} (after {self.page_tli}) in WAL segment {name}, {where}")
        if tli > ctx.tli or (ctx.ancestors and tli not in ctx.ancestors):
            raise Bad(f"page of timeline {tli} in WAL segment {name} of timeline {ctx.tli}, {where}")
        if ctx.switch_lsn and page_lsn >= ctx.switch_lsn:
            raise Bad(f"page of timeline {tli} at {format_lsn(page_lsn)} in WAL segment {name}, after "
                       f"timeline {ctx.tli} began at {format_lsn(ctx.switch_lsn)}: this segment was written "
                       f"by a server whose timeline {ctx.tli} began elsewhere", kind="timeline_fork")

    # -- one window ------------------------------------------------------------------
    def _window(self, mv, nbytes: int) -> None:
        st = self._pages(mv, nbytes)
        if self.pending is not None:
            finished = self._continue_pending(st)
            if self.finish_only and (finished or self.done):
                self.done = True
            if not finished or self.done:
                return
        if self.skipping and not self._skip_continuation(st):
            return
        self._records(st)

    def _skip_continuation(self, st: "_WindowState") -> bool:
        """Skip to the first record that starts in the segment (XLogFindNextRecord)."""
        while st.b < len(st.bounds):
            b = st.b
            if not st.infos[b] & CONTRECORD:
                st.pos = st.bounds[b]
                break
            rem = (st.rems[b] + 7) & ~7
            if rem < st.page_len(b):
                st.pos = st.bounds[b] + rem
                st.b = b + 1
                break
            st.b = b + 1
        else:
            if st.bad is not None:
                raise st.bad
            return False
        self.skipping = False
        self.scan.skipped_to = st.lsn_at(st.pos)
        return True

    def _continue_pending(self, st: "_WindowState") -> bool:
        """Feed the record in progress from this window; True when it is done with."""
        p = self.pending
        while st.b < len(st.bounds):
            b = st.b
            info, rem = st.infos[b], st.rems[b]
            if info & OVERWRITE_CONTRECORD:  # the record was abandoned by a crash; WAL goes on here
                self.pending = None
                st.pos = st.bounds[b]
                self.skipping = False
                return True
            if not info & CONTRECORD or rem != p.remaining:
                where = format_lsn(st.lsn_at(st.bounds[b]))
                detail = (f"there is no contrecord flag at {where}" if not info & CONTRECORD else
                          f"invalid contrecord length {rem} (expected {p.remaining}) at {where}")
                if p.scan is self.scan or b or self.offset:
                    raise Bad(detail)
                # This segment's first page does not continue the previous segment: the caller
                # judges that with both neighbours (another history, or damage); start afresh.
                p.scan.junction = f"record at {format_lsn(p.lsn)} continues into {self.scan.name}: {detail}"
                self.pending = None
                self.skipping = True
                return True
            take = min(p.remaining, st.page_len(b))
            try:
                p.feed(st.lmv[st.bounds[b]:st.bounds[b] + take])
            except Bad as bad:  # a header split across segments belongs to the previous one
                if p.scan is self.scan:
                    raise
                p.scan.problem, p.scan.detail = bad.kind, str(bad)
                self.pending = None
                self.skipping = True
                return True
            st.b = b + 1
            if p.remaining == 0:
                st.pos = st.bounds[b] + ((take + 7) & ~7)
                self.pending = None
                self.skipping = False
                if p.scan is not self.scan and st.pos < len(st.lmv):
                    self.scan.skipped_to = st.lsn_at(st.pos)
                self._finish_pending(p)
                return True
        if st.bad is not None:
            raise st.bad
        return False

    def _finish_pending(self, p: _Pending) -> None:
        buf = p.buf
        tot, _xid, prev, info, rmid, crc = RECORD.unpack_from(buf, 0)
        try:
            if p.tot <= KEEP_WHOLE:
                mv = memoryview(buf)
                value = crc32c(mv[:20], crc32c(mv[RECORD_HEADER:tot]))
            else:
                value = crc32c(bytes(buf[:20]), p.crc)
            if value != crc:
                raise Bad(f"incorrect resource manager data checksum in record at {format_lsn(p.lsn)}")
            main_len = decode_blocks(buf, RECORD_HEADER, tot, len(buf), p.lsn)
        except Bad as bad:
            if p.scan is self.scan:
                raise
            p.scan.problem, p.scan.detail = bad.kind, str(bad)  # it belongs to the previous segment
            return
        whole = p.tot <= KEEP_WHOLE
        self._book(p.scan, p.lsn, prev, p.lsn + self._span(p.lsn, tot), rmid if whole else 255, info, buf,
                   tot - main_len, main_len)
        if p.scan is self.scan:
            self.last_lsn = p.lsn

    def _span(self, lsn: int, tot: int) -> int:
        """How many bytes of WAL (page headers included) a record of ``tot`` bytes at ``lsn`` covers."""
        pos, left = lsn, tot
        while True:
            room = XLOG_BLCKSZ - pos % XLOG_BLCKSZ
            if left <= room:
                return pos + left - lsn
            left -= room
            pos += room
            pos += LONG_HEADER if pos % self.ctx.segment_size == 0 else SHORT_HEADER

    # -- records in one window -------------------------------------------------------
    def _records(self, st: "_WindowState") -> None:
        """The hot loop: every record that starts in this window (constants inlined: 24 is the
        record header, 21 and 128 bound the resource manager IDs, 1 is RM_XACT)."""
        lmv, bounds, deltas, infos, rems = st.lmv, st.bounds, st.deltas, st.infos, st.rems
        end, nb = len(lmv), len(bounds)
        pos, b = st.pos, st.b
        next_b = bounds[b] if b < nb else INF
        delta = deltas[b - 1] if b > 0 else (deltas[0] if nb else 0)
        scan, unpack, last = self.scan, RECORD.unpack_from, self.last_lsn
        crc_of, decode, special = crc32c, decode_blocks, self._special
        count, last_end, first = 0, scan.end_lsn, scan.first_lsn
        try:
            while True:
                while next_b <= pos:  # a record starts right after this page's header
                    if infos[b] & CONTRECORD:
                        raise Bad(f"contrecord is requested by {format_lsn(deltas[b] + next_b)}")
                    delta = deltas[b]
                    b += 1
                    next_b = bounds[b] if b < nb else INF
                if pos >= end:
                    if st.bad is not None:
                        raise st.bad
                    return
                lsn = pos + delta
                if pos + 24 <= end:
                    tot, _xid, prev, info, rmid, crc = unpack(lmv, pos)
                    if tot < 24 or 21 < rmid < 128 or (prev != last if last is not None else prev >= lsn):
                        check_record_header(tot, rmid, prev, lsn, last)  # raises, naming the reason
                else:  # the header continues in the next window: checked when it is whole
                    tot = int.from_bytes(lmv[pos:pos + 4], "little")
                    if tot < 24:
                        check_record_header(tot, 0, 0, lsn, None)
                rec_end = pos + tot
                overwritten = False
                while next_b < rec_end:  # pages this record continues on
                    if infos[b] & OVERWRITE_CONTRECORD:
                        overwritten = True
                        break
                    if not infos[b] & CONTRECORD:
                        raise Bad(f"there is no contrecord flag at {format_lsn(deltas[b] + next_b)}")
                    if rems[b] != rec_end - next_b:
                        raise Bad(f"invalid contrecord length {rems[b]} (expected {rec_end - next_b}) at "
                                   f"{format_lsn(deltas[b] + next_b)}")
                    delta = deltas[b]
                    b += 1
                    next_b = bounds[b] if b < nb else INF
                if overwritten:  # abandoned by a crash; WAL resumes on that page
                    pos = next_b
                    continue
                if rec_end > end:  # continues in the next window (every page of this one checked)
                    if st.bad is not None:
                        raise st.bad
                    self.pending = _Pending(lsn, tot, scan, last)
                    self.pending.feed(lmv[pos:end])
                    return
                if crc_of(lmv[pos:pos + 20], crc_of(lmv[pos + 24:rec_end])) != crc:
                    raise Bad(f"incorrect resource manager data checksum in record at {format_lsn(lsn)}")
                # The two commonest shapes, accepted here exactly as decode_blocks would: only
                # main data (255, length), or block 0 with its relation and data, no image,
                # then main data. Anything else goes through decode_blocks.
                r = pos + 24
                first_id = lmv[r] if r < rec_end else -1
                if first_id == 255 and r + 2 <= rec_end and rec_end - r - 2 == lmv[r + 1]:
                    main_len = lmv[r + 1]
                elif (first_id == 0 and r + 22 <= rec_end and lmv[r + 1] & 0xB0 == 0x20 and lmv[r + 20] == 255
                      and (lmv[r + 2] or lmv[r + 3])
                      and rec_end - r - 22 == (lmv[r + 2] | lmv[r + 3] << 8) + lmv[r + 21]):
                    main_len = lmv[r + 21]
                else:
                    main_len = decode(lmv, r, rec_end, rec_end, lsn)
                if first is None:
                    first = scan.first_lsn = lsn
                    scan.first_prev = prev
                last, last_end = lsn, rec_end + delta
                count += 1
                if rmid <= 1 and (rmid or info & 0xF0 in (0x00, 0x40, 0x90)) and special(
                        scan, lsn, rmid, info, lmv, rec_end - main_len, main_len, last_end):
                    return
                pos = (rec_end + 7) & ~7
        finally:
            self.last_lsn = last
            scan.records += count
            if count:
                scan.last_lsn, scan.end_lsn = last, self._end(scan, last_end)

    def _book(self, scan: SegmentScan, lsn: int, prev: int, end_lsn: int, rmid: int, info: int, data,
              main_off: int, main_len: int) -> None:
        """A whole record that was pending."""
        if scan.first_lsn is None:
            scan.first_lsn, scan.first_prev = lsn, prev
        scan.records += 1
        # A switch record that ends in this segment makes the rest of it unused too.
        if rmid <= RM_XACT:
            self._special(scan, lsn, rmid, info, data, main_off, main_len, end_lsn)
        scan.last_lsn, scan.end_lsn = lsn, self._end(scan, end_lsn)

    def _end(self, scan: SegmentScan, end_lsn: int) -> int:
        """Where reading goes on after the last record, as xlogreader's EndRecPtr: MAXALIGNed,
        and after a switch record the end of the segment."""
        if scan.switched:
            seg = self.ctx.segment_size
            return -(-end_lsn // seg) * seg
        return (end_lsn + 7) & ~7

    def _special(self, scan: SegmentScan, lsn: int, rmid: int, info: int, data, off: int, main_len: int,
                 end_lsn: int) -> bool:
        """Commit times, timeline changes and switches; True for a switch (rest of segment unused)."""
        if rmid == RM_XACT:
            if info & 0x70 in XACT_END_OPS and main_len >= 8:
                scan.commit_time = int.from_bytes(data[off:off + 8], "little", signed=True)
            return False
        op = info & 0xF0
        if op in (XLOG_CHECKPOINT_SHUTDOWN, XLOG_END_OF_RECOVERY) and main_len >= 16:
            this, prev = struct.unpack_from("<II", data, off + 8)
            if this != prev:
                scan.switches.append((lsn, this, prev))
        elif op == XLOG_SWITCH:
            scan.switched = True
            self.done = True
            return True
        return False


def expected_next(scan: SegmentScan, segment_size: int) -> int | None:
    """Where the record after ``scan``'s last one must start (None if it has none)."""
    if scan.end_lsn is None:
        return None
    if scan.switched:  # end_lsn is already the end of the segment
        return scan.end_lsn + LONG_HEADER
    pos = scan.end_lsn
    if pos % XLOG_BLCKSZ == 0:
        pos += LONG_HEADER if pos % segment_size == 0 else SHORT_HEADER
    return pos


def joins(before: SegmentScan, after: SegmentScan, segment_size: int) -> str | None:
    """Why ``after`` does not continue ``before`` (consecutive, both read), or None if it does."""
    if before.problem or after.problem:
        return None  # their own damage explains it
    if before.junction:
        return before.junction
    nxt = expected_next(before, segment_size)
    if nxt is None:
        return None
    if after.skipped_to is not None and nxt != after.skipped_to and nxt < (after.segno + 1) * segment_size:
        return (f"{after.name} starts its first record at {format_lsn(after.skipped_to)}, but the WAL of "
                f"{before.name} continues at {format_lsn(nxt)}")
    if after.first_lsn == nxt and after.first_prev != before.last_lsn:
        return (f"record at {format_lsn(nxt)} in {after.name} has prev-link {format_lsn(after.first_prev)}, "
                f"but the last record of {before.name} is at {format_lsn(before.last_lsn)}")
    return None


class _WindowState:
    """One window's logical buffer, its page boundaries and the reading position."""

    __slots__ = ("lmv", "bounds", "deltas", "infos", "rems", "bad", "pos", "b")

    def __init__(self, lmv, bounds, deltas, infos, rems, bad):
        self.lmv, self.bounds, self.deltas, self.infos, self.rems, self.bad = lmv, bounds, deltas, infos, rems, bad
        self.pos, self.b = 0, 0

    def page_len(self, b: int) -> int:
        nxt = self.bounds[b + 1] if b + 1 < len(self.bounds) else len(self.lmv)
        return nxt - self.bounds[b]

    def lsn_at(self, pos: int) -> int:
        lo, hi = 0, len(self.bounds) - 1
        while lo < hi:  # the last page starting at or before pos
            mid = (lo + hi + 1) // 2
            if self.bounds[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return pos + self.deltas[lo] if self.deltas else pos


__all__ = ["Context", "SegmentScan", "Walker", "PAGE_MAGICS", "expected_next", "joins", "WINDOW"]
