"""Verify a plain PostgreSQL WAL archive: :func:`verify_archive` over a listing and a reader.

The questions (docs/wal.md has the rules): can every retained base backup be restored and
rolled forward to the newest archived WAL, on every timeline; is the archive still being
fed; and what is the recoverable window. Problems are ``{kind, segment, timeline,
detail}`` with one of :data:`KINDS`; nothing from the archive is trusted before it is
checked, and no input ends in a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from backupkit.wal.archive import ArchiveEntry, ArchiveReader, Unreadable, read_small
from backupkit.wal.backups import BackupError, BaseBackup, parse_label, with_label
from backupkit.wal.history import History, HistoryError, MAX_HISTORY_BYTES, fork_findings, parse_history
from backupkit.wal.inventory import Geometry, Inventory, Stored, sample_geometry, take_inventory
from backupkit.wal.naming import format_lsn, segment_name, segment_of
from backupkit.wal.scan import Context, SegmentScan, joins
from backupkit.wal.scanning import MAX_RECORD, Chunk, make_chunks, scan_chunks

KINDS = ("gap", "truncated", "corrupt", "missing_history", "timeline_fork", "stale", "base_backup_wal_missing")
PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
# Archive times (file mtime, S3 LastModified) and commit times come from other hosts' clocks than
# backupkit.clock.now(): this far ahead of now is skew between synchronised clocks; further ahead,
# the clocks disagree and freshness (or the RPO) cannot be judged, which is reported (docs/wal.md).
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Problem:
    kind: str
    segment: str | None
    timeline: int | None
    detail: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, "segment": self.segment, "timeline": self.timeline, "detail": self.detail}


@dataclass(frozen=True)
class Point:
    lsn: int
    time: datetime | None
    timeline: int

    def to_dict(self) -> dict:
        return {"lsn": format_lsn(self.lsn), "time": self.time.isoformat().replace("+00:00", "Z") if self.time else None,
                "timeline": self.timeline}


@dataclass(frozen=True)
class Window:
    start: Point | None   # the oldest usable base backup's end (None: no base backup known)
    end: Point            # the end of the last whole record recovery can replay

    def to_dict(self) -> dict:
        return {"from": self.start.to_dict() if self.start else None, "to": self.end.to_dict()}


@dataclass
class TimelineReport:
    timeline: int
    parent: int | None = None
    switch_lsn: int | None = None
    history: str | None = None
    segments: int = 0
    first_segment: str | None = None
    last_segment: str | None = None
    checked_from: str | None = None
    records: int = 0
    window: Window | None = None

    def to_dict(self) -> dict:
        return {"timeline": self.timeline, "parent": self.parent,
                "switch_lsn": format_lsn(self.switch_lsn) if self.switch_lsn is not None else None,
                "history": self.history, "segments": self.segments, "first_segment": self.first_segment,
                "last_segment": self.last_segment, "checked_from": self.checked_from, "records": self.records,
                "window": self.window.to_dict() if self.window else None}


@dataclass
class WalReport:
    location: str
    problems: list[Problem] = field(default_factory=list)
    timelines: list[TimelineReport] = field(default_factory=list)
    window: Window | None = None
    segment_size: int | None = None
    base_backups: list[BaseBackup] = field(default_factory=list)
    scans: dict[str, SegmentScan] = field(default_factory=dict)   # segment name -> its scan (read or remembered)
    read: set[str] = field(default_factory=set)                   # the segments read in this run

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        """The ``--json`` shape: exactly ``ok``, ``problems``, ``timelines``, ``window``."""
        return {"ok": self.ok, "problems": [p.to_dict() for p in self.problems],
                "timelines": [t.to_dict() for t in self.timelines],
                "window": self.window.to_dict() if self.window else {"from": None, "to": None}}


def pg_time(microseconds: int | None) -> datetime | None:
    """A TimestampTz (microseconds since 2000-01-01 UTC) as a datetime; None if out of range."""
    if microseconds is None:
        return None
    try:
        return PG_EPOCH + timedelta(microseconds=microseconds)
    except OverflowError:
        return None


class _Judge:
    """One verification: reads what it needs and collects problems in order."""

    def __init__(self, reader: ArchiveReader, entries: list[ArchiveEntry], geometry: Geometry, jobs: int,
                 known: Mapping[str, SegmentScan] | None = None):
        self.reader, self.geometry, self.jobs = reader, geometry, jobs
        self.known = dict(known or {})
        self.size = geometry.segment_size
        self.inv: Inventory = take_inventory(entries, self.size)
        self.problems: list[Problem] = []
        self.histories: dict[int, History] = {}
        self.scans: dict[tuple[int, int], SegmentScan] = {}
        self.read: set[str] = set()
        self.ranges: dict[int, _Range] = {}

    def add(self, kind: str, segment: str | None, timeline: int | None, detail: str) -> None:
        self.problems.append(Problem(kind, segment, timeline, detail))

    def name(self, tli: int, segno: int) -> str:
        return segment_name(tli, segno, self.size)

    def whole(self, tli: int, segno: int) -> Stored | None:
        """The stored full segment, if its size can be right (compressed ones are judged when read)."""
        s = self.inv.segments.get((tli, segno))
        return s if s is not None and (s.compression or s.size == self.size) else None

    # -- small files -------------------------------------------------------------------
    def read_histories(self) -> None:
        for tli, (name, compression) in sorted(self.inv.histories.items()):
            try:
                self.histories[tli] = parse_history(tli, read_small(self.reader, name, compression, MAX_HISTORY_BYTES))
            except (Unreadable, HistoryError) as exc:
                self.add("missing_history", None, tli, f"{name} cannot be used: {exc}")

    def read_labels(self) -> list[BaseBackup]:
        labels = []
        for name, c in self.inv.labels:
            try:
                label = parse_label(read_small(self.reader, name, c.compression, 64 << 10), name, c.tli)
            except (Unreadable, BackupError) as exc:
                self.add("corrupt", None, c.tli, f"backup label {exc}")
                continue
            expected = self.name(c.tli, segment_of(label.start_lsn, self.size))
            if c.base != expected or label.start_lsn % self.size != c.offset:
                self.add("corrupt", None, c.tli, f"backup label {name}: its name does not match its "
                                                 f"START WAL LOCATION {format_lsn(label.start_lsn)}")
                continue
            labels.append(label)
        return sorted(labels, key=lambda b: b.start_lsn)

    def retained(self, labels: list[BaseBackup]) -> list[BaseBackup]:
        """Without --base-backup: the labels whose start segment is still archived, and the newest.

        pg_archivecleanup leaves old labels behind, so a label whose WAL is gone stands
        for a base backup already deleted, unless it is the newest one.
        """
        kept = [b for b in labels if self.whole(b.start_tli, segment_of(b.start_lsn, self.size))]
        if labels and labels[-1] not in kept:
            kept.append(labels[-1])
        return kept

    # -- timelines ---------------------------------------------------------------------
    def check_timelines(self, backups: list[BaseBackup]) -> None:
        seg_tlis = self.inv.timelines()
        known = seg_tlis | set(self.histories) | set(self.inv.histories) | {b.start_tli for b in backups}
        low = min((b.start_tli for b in backups), default=min(seg_tlis, default=1))
        for tli in range(2, max(known, default=1) + 1):
            if tli in self.inv.histories:
                continue  # present (unreadable ones are reported already)
            first = self.inv.of_timeline(tli)
            if tli in seg_tlis:
                self.add("missing_history", first[0].name if first else None, tli,
                         f"timeline {tli} has segments but no {tli:08X}.history: recovery cannot follow it")
            elif tli > low:
                self.add("missing_history", None, tli,
                         f"no {tli:08X}.history: recovery_target_timeline=latest stops at timeline {tli - 1} "
                         f"and never follows the timelines above it")
        for tli, detail in fork_findings(self.histories):
            self.add("timeline_fork", None, tli, detail)

    def plan(self, backups: list[BaseBackup]) -> None:
        for tli in sorted(self.inv.timelines()):
            segs = self.inv.of_timeline(tli)
            h = self.histories.get(tli)
            partials = sorted(segno for (t, segno) in self.inv.partials if t == tli)
            first = segs[0].segno if segs else (partials[0] if partials else 0)
            begin = segment_of(h.switch_lsn, self.size) if h else first
            early = [s for s in segs if s.segno < begin]
            if early:
                self.add("timeline_fork", early[0].name, tli,
                         f"{len(early)} segment(s) of timeline {tli} lie before its switch point "
                         f"{format_lsn(h.switch_lsn)} ({self.name(tli, begin)}): another server numbered a "
                         f"timeline {tli} too")
            on_tli = [segment_of(b.start_lsn, self.size) for b in backups if b.start_tli == tli]
            reached = h is not None and any(
                b.start_tli in h.ancestors and b.start_lsn <= (h.switch_into(b.start_tli) or 0) for b in backups)
            from_backup = bool(on_tli) and not reached
            start = begin
            if from_backup:
                start = max(begin, min(on_tli)) if h else min(on_tli)
            newest = segs[-1].segno if segs else None
            tail = [p for p in partials if newest is None or p > newest]
            self.ranges[tli] = _Range(tli, begin, start, newest, from_backup,
                                      tail=self.inv.partials[(tli, tail[-1])] if tail else None)

    def context(self, tli: int) -> Context:
        h = self.histories.get(tli)
        g = self.geometry
        return Context(g.segment_size, g.magic, g.sysid, tli, h.switch_lsn if h else 0,
                       h.ancestors if h else frozenset())

    # -- segments ----------------------------------------------------------------------
    def scan(self) -> None:
        chunks = []
        for tli, rng in self.ranges.items():
            if rng.newest is None and rng.tail is None:
                continue
            run: list[Stored] = []
            for segno in range(rng.start, (rng.newest if rng.newest is not None else rng.start - 1) + 1):
                stored = self.inv.segments.get((tli, segno))
                if stored is not None and not stored.compression and stored.size != self.size:
                    self.add("truncated", stored.name, tli, f"{stored.name} is {stored.size} bytes, not a whole "
                                                            f"segment of {self.size}")
                    stored = None
                if stored is None:
                    chunks += self._chunks(tli, run) if run else []
                    run = []
                else:
                    run.append(stored)
            if rng.tail is not None:
                if run and run[-1].segno + 1 != rng.tail.segno:
                    chunks += self._chunks(tli, run)
                    run = []
                run.append(rng.tail)
            if run:
                chunks += self._chunks(tli, run)
        for scan in scan_chunks(self.reader, chunks, self.jobs):
            tli = int(scan.name[:8], 16)
            self.scans[(tli, scan.segno)] = scan
            self.read.add(scan.name)

    def _chunks(self, tli: int, run: list[Stored]) -> list[Chunk]:
        """Chunks of a run of consecutive segments, without those remembered from an earlier read.

        A remembered segment is still read when a segment after it must be: the record that
        crosses into a segment is checked by reading from the segment it starts in (back over
        segments that are continuation only). Each piece keeps the rest of the run as its
        tail, so a record continuing into a skipped segment is still finished and checked.
        """
        ctx = self.context(tli)
        if not self.known:
            return make_chunks(ctx, run, self.jobs)
        fresh = [s.partial or s.name not in self.known for s in run]
        need = list(fresh)
        for m in range(1, len(run)):
            j = m - 1
            if not fresh[m] or fresh[j]:
                continue
            need[j] = True
            while j > 0 and not fresh[j - 1] and self.known[run[j].name].last_lsn is None:
                j -= 1
                need[j] = True
        reach = MAX_RECORD // self.size + 1
        at = {s.segno: i for i, s in enumerate(run)}
        chunks, piece = [], []
        for i, stored in enumerate(run + [None]):
            if stored is not None and need[i]:
                piece.append(stored)
                continue
            if stored is not None:
                self.scans[(stored.tli, stored.segno)] = self.known[stored.name]
            for c in make_chunks(ctx, piece, self.jobs) if piece else ():
                after = at[c.items[-1].segno] + 1
                chunks.append(replace(c, tail=tuple(run[after:after + reach])))
            piece = []
        return chunks

    def judge_segments(self) -> None:
        for tli, rng in sorted(self.ranges.items()):
            if rng.newest is None:
                continue
            present = [s for s in range(rng.start, rng.newest + 1) if (tli, s) in self.inv.segments]
            report_from = present[0] if rng.from_backup and present else rng.start
            missing: list[int] = []
            for segno in range(rng.start, rng.newest + 1):
                if (tli, segno) not in self.inv.segments:
                    if segno >= report_from:
                        missing.append(segno)
                    continue
                self._report_gap(tli, missing)
                missing = []
                scan = self.scans.get((tli, segno))
                if scan is None:
                    continue  # wrong size: reported already
                if scan.problem:
                    self.add(scan.problem, scan.name, tli, scan.detail)
                before = self.scans.get((tli, segno - 1))
                if before is None and segno == rng.begin and rng.start == rng.begin and tli in self.histories:
                    before = self.scans.get((self.histories[tli].parent, segno - 1))
                if before is not None:
                    self._report_junction(tli, before, scan)
            self._report_gap(tli, missing)

    def _report_gap(self, tli: int, missing: list[int]) -> None:
        if not missing:
            return
        names = [self.name(tli, s) for s in (missing[0], missing[-1])]
        partial = [self.inv.partials[(tli, s)].name for s in missing if (tli, s) in self.inv.partials]
        what = f"{len(missing)} segment(s) missing: {names[0]}" + (f" to {names[1]}" if len(missing) > 1 else "")
        if partial:
            what += f" (only {partial[0]} is archived, and recovery does not read partial segments)"
        self.add("gap", names[0], tli, what + ": recovery stops before them")

    def _report_junction(self, tli: int, before: SegmentScan, after: SegmentScan) -> None:
        why = joins(before, after, self.size)
        if why:
            self.add("timeline_fork", after.name, tli,
                     f"{after.name} does not continue {before.name} ({why}): both are whole, valid WAL of this "
                     f"system, so two servers wrote this history (a split brain), or a segment was replaced "
                     f"by one of another history")

    def check_switch_records(self) -> None:
        seen = set()
        for (seg_tli, _), scan in sorted(self.scans.items()):
            for lsn, this, prev in scan.switches:
                if (lsn, this, prev) in seen:
                    continue
                seen.add((lsn, this, prev))
                h = self.histories.get(this)
                own = self.histories.get(seg_tli)
                if seg_tli != this and (own is None or this not in own.ancestors):
                    self.add("timeline_fork", scan.name, this, f"{scan.name} holds the start of timeline {this} "
                                                               f"(at {format_lsn(lsn)}), which is not in its history")
                elif h is not None and (h.parent, h.switch_lsn) != (prev, lsn):
                    self.add("timeline_fork", scan.name, this,
                             f"{scan.name} holds the start of timeline {this} from timeline {prev} at "
                             f"{format_lsn(lsn)}, but {this:08X}.history says it began from timeline {h.parent} "
                             f"at {format_lsn(h.switch_lsn)}: two servers created a timeline {this}")

    # -- base backups ------------------------------------------------------------------
    def check_backups(self, backups: list[BaseBackup]) -> None:
        for b in backups:
            start_seg = segment_of(b.start_lsn, self.size)
            if b.sysid is not None and b.sysid != self.geometry.sysid:
                self.add("base_backup_wal_missing", None, b.start_tli,
                         f"base backup {b.source} is of database system {b.sysid}; this archive's WAL is of "
                         f"{self.geometry.sysid}")
                continue
            if b.stop_lsn is None:
                self.add("base_backup_wal_missing", self.name(b.start_tli, start_seg), b.start_tli,
                         f"base backup {b.source}: its stop LSN is unknown (no backup_manifest, and no .backup "
                         f"label in the archive for start {format_lsn(b.start_lsn)}): which WAL it needs cannot be told")
                continue
            tlis = (b.stop_tli or b.start_tli, b.start_tli)
            for segno in range(start_seg, segment_of(b.stop_lsn, self.size) + 1):
                if not any(self.whole(t, segno) for t in tlis):
                    self.add("base_backup_wal_missing", self.name(tlis[0], segno), tlis[0],
                             f"base backup {b.source} needs the WAL from {format_lsn(b.start_lsn)} to "
                             f"{format_lsn(b.stop_lsn)}; {self.name(tlis[0], segno)} is not archived: "
                             f"the backup cannot be restored")
                    break

    # -- the window --------------------------------------------------------------------
    def path(self, tli: int, from_tli: int, from_segno: int):
        """(timeline, segment number) in the order recovery to ``tli`` reads them from a start point."""
        h = self.histories.get(tli)
        pieces = []
        begin = 0
        for ancestor, switch in (h.entries if h else ()):
            pieces.append((ancestor, begin, segment_of(switch, self.size)))
            begin = segment_of(switch, self.size)
        rng = self.ranges.get(tli)
        pieces.append((tli, begin, (rng.newest + 1) if rng and rng.newest is not None else begin))
        started = False
        for piece_tli, lo, hi in pieces:
            if piece_tli == from_tli:
                started, lo = True, max(lo, from_segno)
            if started:
                yield from ((piece_tli, segno) for segno in range(lo, hi))

    def replay(self, tli: int, from_tli: int, from_segno: int) -> Point | None:
        """How far recovery gets along ``path``: the end of the last whole record it can replay."""
        end = commit = None
        before = None
        for seg_tli, segno in self.path(tli, from_tli, from_segno):
            scan = self.scans.get((seg_tli, segno))
            if scan is None or (before is not None and joins(before, scan, self.size)):
                break
            if scan.problem in (None, "corrupt") and scan.end_lsn is not None:
                end = (scan.end_lsn, seg_tli)
                commit = scan.commit_time if scan.commit_time is not None else commit
            if scan.problem:
                break
            before = scan
        return Point(end[0], pg_time(commit), end[1]) if end else None

    def window(self, tli: int, backups: list[BaseBackup]) -> Window | None:
        h = self.histories.get(tli)
        if not backups:
            first = next(iter(self.path_start(tli)), None)
            end = self.replay(tli, *first) if first else None
            return Window(None, end) if end else None
        for b in sorted(backups, key=lambda b: b.start_lsn):
            stop_tli = b.stop_tli or b.start_tli
            usable = b.stop_lsn is not None and (stop_tli == tli or (
                h is not None and stop_tli in h.ancestors and b.stop_lsn <= (h.switch_into(stop_tli) or 0)))
            if not usable:
                continue
            end = self.replay(tli, b.start_tli, segment_of(b.start_lsn, self.size))
            if end is not None and end.lsn >= b.stop_lsn:
                return Window(Point(b.stop_lsn, b.ended_by, stop_tli), end)   # whole seconds: ended_by
        return None

    def path_start(self, tli: int):
        """Where recovery to ``tli`` would begin with no base backup known: the oldest checked segment."""
        h = self.histories.get(tli)
        first = h.entries[0][0] if h else tli
        rng = self.ranges.get(first)
        if rng is not None:
            yield first, rng.start

    def timeline_reports(self, backups: list[BaseBackup]) -> list[TimelineReport]:
        reports = []
        for tli, rng in sorted(self.ranges.items()):
            h = self.histories.get(tli)
            segs = self.inv.of_timeline(tli)
            reports.append(TimelineReport(
                tli, h.parent if h else None, h.switch_lsn if h else None,
                self.inv.histories[tli][0] if tli in self.inv.histories else None, len(segs),
                segs[0].name if segs else None, segs[-1].name if segs else None, self.name(tli, rng.start),
                sum(scan.records for (t, _), scan in self.scans.items() if t == tli and not scan.partial),
                self.window(tli, backups)))
        return reports

    def freshness(self, max_age: timedelta | None, now: datetime | None) -> None:
        newest = self.inv.newest
        if max_age is None or now is None or newest is None or newest.mtime is None:
            return
        ahead = newest.mtime - now
        if ahead > CLOCK_SKEW:
            self.add("stale", newest.name, newest.tli,
                     f"the newest segment, {newest.name}, was archived {_age(ahead)} in the future "
                     f"({newest.mtime.isoformat().replace('+00:00', 'Z')}): the archive's clock (file mtime or "
                     f"S3 LastModified) and this host's disagree by more than {_age(CLOCK_SKEW)}, so freshness "
                     f"cannot be judged; check both hosts' time synchronisation")
            return
        age = now - newest.mtime
        if age > max_age:
            self.add("stale", newest.name, newest.tli,
                     f"the newest segment, {newest.name}, was archived {_age(age)} ago "
                     f"({newest.mtime.isoformat().replace('+00:00', 'Z')}); the limit is {_age(max_age)}: "
                     f"is archive_command failing, or the server down?")


@dataclass(frozen=True)
class _Range:
    """The segments of one timeline the verifier checks."""

    tli: int
    begin: int            # where the timeline begins (its switch point's segment, or its oldest segment)
    start: int            # where checking starts (the oldest base backup on it, or begin)
    newest: int | None    # its newest whole segment
    from_backup: bool     # start comes from a base backup (segments missing before it are that backup's)
    tail: Stored | None   # a trailing .partial segment


_AGE = re.compile(r"^(?:(\d{1,5})d)?(?:(\d{1,6})h)?(?:(\d{1,8})min)?(?:(\d{1,9})s)?$")


def parse_age(text: str) -> timedelta:
    """A maximum age such as ``15min``, ``2h``, ``1d12h`` or ``90s`` (units d, h, min, s, in that
    order). ``m`` is refused: in this project's retention policies it means months."""
    m = _AGE.match(text.strip())
    if not text.strip() or not m or not any(m.groups()):
        hint = " (minutes are 'min')" if text.strip().endswith("m") else ""
        raise ValueError(f"expected a duration like 15min, 2h or 1d12h, got {text!r}{hint}")
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} d {hours % 24} h"


def verify_archive(entries, reader: ArchiveReader, *, base_backups: list[BaseBackup] = (),
                   backup_problems: list[tuple[str, str]] = (), max_age: timedelta | None = None,
                   now: datetime | None = None, jobs: int = 1,
                   known: Mapping[str, SegmentScan] | None = None) -> WalReport:
    """Check the archive listed by ``entries`` (read through ``reader``): see the module doc.

    ``base_backups`` are the retained ones (:func:`backupkit.wal.backups.read_base_backup`);
    without them the archive's own ``.backup`` labels stand for them. ``backup_problems``
    are (backup, detail) findings of the caller about them (pg_verifybackup). ``now``
    (from :func:`backupkit.clock.now`) and ``max_age`` make the freshness check. ``known``
    are scans of segments that passed an earlier read and are unchanged since
    (:mod:`backupkit.wal.memory`): they are reused instead of read again.
    """
    entries = list(entries)
    report = WalReport(reader.location)
    geometry, why = sample_geometry(entries, reader)
    if geometry is None:
        empty = "no WAL segment" in why
        report.problems.append(Problem("gap" if empty else "corrupt", None, None, why))
        if empty and max_age is not None:
            report.problems.append(Problem("stale", None, None, "nothing has been archived"))
        return report
    j = _Judge(reader, entries, geometry, jobs, known)
    for name, why in j.inv.misnamed:
        j.add("corrupt", None, None, f"{name}: {why}")
    j.read_histories()
    labels = j.read_labels()
    backups = [with_label(b, labels) for b in base_backups] if base_backups else j.retained(labels)
    for source, detail in backup_problems:
        j.add("corrupt", None, None, f"base backup {source}: {detail}")
    j.check_timelines(backups)
    j.plan(backups)
    j.scan()
    j.judge_segments()
    j.check_switch_records()
    j.check_backups(backups)
    report.timelines = j.timeline_reports(backups)
    latest = max((t for t in j.ranges if j.ranges[t].newest is not None), default=None)
    report.window = next((t.window for t in report.timelines if t.timeline == latest), None)
    j.freshness(max_age, now)
    report.problems = sorted(j.problems, key=lambda p: (p.timeline or 0, p.segment or "", p.kind))
    report.segment_size, report.base_backups = geometry.segment_size, backups
    report.scans, report.read = {scan.name: scan for scan in j.scans.values()}, j.read
    return report


__all__ = ["verify_archive", "CLOCK_SKEW", "WalReport", "Problem", "Point", "Window", "TimelineReport", "KINDS", "pg_time",
           "parse_age"]
