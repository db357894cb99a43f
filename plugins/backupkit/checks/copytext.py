"""The COPY text of a TABLE DATA block, held to what pg_dump writes, counted at memory speed.

What a block's decoded data must be (docs/dump-rules.md, custom format rule 5): rows
ending in a newline, no NUL byte (PostgreSQL text cannot hold one; bytea is escaped),
one ``\\.`` line and it comes last, followed by the two empty lines pg_dump adds; in an
uncompressed dump the raw tabs number exactly rows x (columns - 1).

The counts are what costs: a 1 GB dump holds about 3 GB of COPY text. ``bytes.count``
walks a byte at a time (~3.5 GB/s here); numpy's vectorised compare-and-count runs at
~13 GB/s, so pieces of :data:`VECTOR_MIN` bytes or more are counted with it.

Uncompressed blocks add a cost of their own: pg_dump ``-Z 0`` writes one chunk per COPY
row (compress_none.c hands each row to ``_CustomWriteFunc``), about 8 million 5-byte
chunk headers per GB, and a Python step per chunk takes longer than pg_restore's whole
read. :func:`walk_copy_chunks` finds and proves the chunk boundaries with array
operations instead (see its docstring), and walks anything it cannot prove chunk by chunk,
so the verdict is the same either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backupkit.checks.blocks import BlockProblem

if TYPE_CHECKING:  # pragma: no cover
    from backupkit.checks.blocks import InlineJob

COPY_END = b"\\.\n\n\n"  # what pg_dump writes after the last COPY row of a TABLE DATA block
END_LINE = b"\n\\.\n"  # an end-of-data line, with the newline before it
NUL_PROBLEM = "NUL byte in COPY data (PostgreSQL text cannot contain one)"
VECTOR_MIN = 64 << 10  # pieces at least this long are counted with numpy
WINDOW = 1 << 20  # at most this many bytes examined at once (they and the masks stay in the cache)
MAX_BULK_CHUNK = 1 << 16  # longer chunks are walked one by one (see walk_copy_chunks)
NL, TAB, BACKSLASH, DOT = 0x0A, 0x09, 0x5C, 0x2E

_np = None


def _numpy():
    """numpy, imported on first use (verification needs it, the DAG files' imports do not)."""
    global _np
    if _np is None:
        import numpy

        _np = numpy
    return _np


class Counter:
    """Byte counts over pieces of any size, numpy's for large ones, into a reused scratch
    buffer: fresh temporaries of megabytes cost more in page faults than the count."""

    STEP = 1 << 20  # counted a slice at a time: it and its scratch stay in the cache

    def __init__(self) -> None:
        self._scratch = None

    def mask(self, a, value: int):
        np = _numpy()
        if self._scratch is None or len(self._scratch) < len(a):
            self._scratch = np.empty(max(len(a), self.STEP), bool)
        return np.equal(a, value, out=self._scratch[:len(a)])

    def copy_counts(self, data, tabs: bool) -> tuple[bool, int, int, int]:
        """(a NUL byte seen, newlines, end-of-data lines wholly inside, tabs) of ``data``.

        End-of-data lines overlapping ones too (``\\n\\\\.\\n\\\\.\\n`` is two). Large pieces
        are counted a :data:`STEP` at a time with numpy, which also releases the GIL (the
        other workers' decoders run meanwhile); small ones with bytes methods.
        """
        if len(data) < VECTOR_MIN:
            count, i = 0, data.find(END_LINE)
            while i >= 0:
                count += 1
                i = data.find(END_LINE, i + 3)  # the newline ending one may begin the next
            return b"\0" in data, data.count(b"\n"), count, data.count(b"\t") if tabs else 0
        np = _numpy()
        a = np.frombuffer(data, np.uint8)
        nul, rows, ends, tab_count, listed = False, 0, 0, 0, True
        for i in range(0, len(a), self.STEP):
            step = a[i:i + self.STEP]
            nul = nul or int(np.count_nonzero(step)) != len(step)
            backslash = bool(self.mask(step, BACKSLASH).any())
            if backslash:  # rare in COPY text: only then the newlines' positions are needed
                newlines = np.flatnonzero(self.mask(step, NL)) + i
                rows, ends = rows + len(newlines), ends + end_lines_after(a, newlines)
                if not listed and a[i] == BACKSLASH and a[i - 1] == NL:  # begun by an unlisted step's last byte
                    ends += end_lines_after(a, np.array([i - 1]))
            else:
                rows += int(np.count_nonzero(self.mask(step, NL)))
            if tabs:
                tab_count += int(np.count_nonzero(self.mask(step, TAB)))
            listed = backslash
        return nul, rows, ends, tab_count


def end_lines_after(a, newlines) -> int:
    """How many of the newlines at these indices of ``a`` begin a ``\\n\\\\.\\n``."""
    np = _numpy()
    p = newlines[newlines + 3 < len(a)]
    return int(np.count_nonzero((a[p + 1] == BACKSLASH) & (a[p + 2] == DOT) & (a[p + 3] == NL)))


class CopyText:
    """Checks the decoded data of one TABLE DATA block against what pg_dump writes."""

    def __init__(self, columns: int | None):
        self.columns = columns  # None: do not count tabs
        self.recent = b"\n"  # the last bytes seen; starts with a virtual newline before row 1
        self.rows = self.tabs = self.size = 0
        self.ends = 0  # "\n\\.\n" seen: end-of-data lines
        self.counter = Counter()

    def update(self, data) -> None:
        if not data:
            return
        nul, rows, ends, tabs = self.counter.copy_counts(data, self.columns is not None)
        if nul:
            raise BlockProblem(NUL_PROBLEM)
        across = self.recent[-3:] + bytes(data[:3])  # a line split between two pieces
        self.ends += across.count(END_LINE) + ends
        self.rows, self.tabs, self.size = self.rows + rows, self.tabs + tabs, self.size + len(data)
        self.recent = (self.recent + bytes(data[-5:]))[-5:]

    def add_counted(self, size: int, rows: int, tabs: int, ends: int, tail: bytes, nul: bool) -> None:
        """Text counted elsewhere (:func:`walk_copy_chunks`), which began right after a newline."""
        if nul:
            raise BlockProblem(NUL_PROBLEM)
        self.rows, self.tabs, self.ends, self.size = self.rows + rows, self.tabs + tabs, self.ends + ends, \
            self.size + size
        self.recent = (self.recent + tail)[-5:]

    def finish(self) -> None:
        if self.size == 0:
            raise BlockProblem("empty TABLE DATA block (pg_dump writes at least the end-of-data line)")
        if self.recent != COPY_END:
            raise BlockProblem("COPY data does not end with pg_dump's end-of-data line (\\.)")
        if self.ends != 1:
            raise BlockProblem(f"COPY data has {self.ends} end-of-data lines (\\.); pg_dump writes one, last")
        rows = self.rows - 3  # the "\." line and the two empty lines after it
        if self.columns and self.tabs != rows * (self.columns - 1):
            raise BlockProblem(f"COPY data has {self.tabs} column separators for {rows} rows of "
                               f"{self.columns} columns (expected {rows * (self.columns - 1)})")


def text_check(desc: str, copy_columns: int | None, compression: str) -> CopyText | None:
    """The check for a block's decoded data: TABLE DATA written as COPY is checked, the rest not."""
    if desc != "TABLE DATA" or copy_columns is None:
        return None
    return CopyText(copy_columns if compression == "none" else None)


# -- uncompressed blocks: chunk boundaries proven in bulk -------------------------------------------
def walk_copy_chunks(cur, job: "InlineJob", what: str) -> int:
    """Walk an uncompressed block's chunks from ``cur`` to its end marker; payload bytes.

    A chunk is a zero sign byte, a 4-byte length and the payload. Every chunk but the
    first follows a payload, and a COPY row ends with a newline, so chunk starts are
    among the positions of ``\\n\\0``. In each window of :data:`WINDOW` bytes those
    candidates are found with numpy, the ones inside the header before them dropped,
    and the chain proven: each candidate's start + 5 + its length is the next
    candidate's start. A proven chunk's payload ends with a newline (the next start
    follows one) and holds no NUL byte exactly when the window's zeros are all header
    bytes; newlines and tabs are the window's minus the headers'. With lengths under
    :data:`MAX_BULK_CHUNK` a header holds no run of three non-zero bytes, so no
    ``\\n\\\\.\\n`` of the raw window crosses one; the ones across two chunks are those
    whose payload starts with ``\\.\\n``.

    What is not proven goes through ``cur.chunk`` one chunk at a time, exactly as a
    compressed block's chunks do: the chunk that crosses the reader's buffer, a payload
    not ending with a newline (and the next one, whose ``\\.`` line could begin in it),
    a length of 64 KiB or more, a damaged header.
    """
    total, counter = 0, Counter()
    while True:
        if job.bulk_ready():  # the window is what the reader holds: no copy to make it larger
            proven = _proven_chunks(cur.buf, cur.pos, counter)
            if proven is not None:
                size, end, counts = proven
                job.add_counted(size, *counts)
                total += size
                cur.pos = end
        n = cur.chunk(job.feed, what)
        total += n
        if n == 0:
            return total


def _proven_chunks(buf: bytes, pos: int, counter: Counter):
    """(payload bytes, end position, counts for CopyText.add_counted) of the proven chunks
    in the window from ``pos`` (a chunk start), or None when not even the first one is proven."""
    np = _numpy()
    w = np.frombuffer(buf, np.uint8, count=min(len(buf) - pos, WINDOW), offset=pos)
    n = len(w)
    if n < 6 or w[0] != 0:
        return None
    newlines = np.flatnonzero(counter.mask(w, NL))
    after = newlines[newlines + 5 < n] + 1  # where a whole header could follow a newline
    starts = np.concatenate(([0], after[w[after] == 0]))
    starts = starts[np.concatenate(([True], np.diff(starts) >= 5))]  # not inside the header before
    # every byte offset read as a little-endian uint32 (an unaligned, overlapping view: no copy)
    words = np.ndarray((n - 3,), dtype="<u4", buffer=buf, offset=pos, strides=(1,))
    lengths = words[starts + 1].astype(np.int64)
    good = (starts[:-1] + 5 + lengths[:-1] == starts[1:]) & (lengths[:-1] >= 1) & (lengths[:-1] < MAX_BULK_CHUNK)
    bad = np.flatnonzero(~good)
    m = int(bad[0]) if len(bad) else len(good)  # chunks 0..m-1 are proven
    if m == 0:
        return None
    heads, lens, end = starts[:m], lengths[:m], int(starts[m])
    region = w[:end]
    head_bytes = lens.astype("<u4").view(np.uint8)  # their length bytes; the sign bytes are m zeros
    zeros = end - int(np.count_nonzero(region)) - m - int(np.count_nonzero(head_bytes == 0))
    rows = int(np.searchsorted(newlines, end)) - int(np.count_nonzero(head_bytes == NL))
    tabs = int(np.count_nonzero(counter.mask(region, TAB))) - int(np.count_nonzero(head_bytes == TAB))
    ends = end_lines_after(region, newlines)  # inside payloads: no header byte can be part of one
    first = heads[lens >= 3] + 5  # payloads starting with "\.\n" after the newline ending the one before
    ends += int(np.count_nonzero((region[first] == BACKSLASH) & (region[first + 1] == DOT)
                                 & (region[first + 2] == NL)))
    return end - 5 * m, pos + end, (rows, tabs, ends, _tail(buf, pos, heads, lens), zeros > 0)


def _tail(buf: bytes, pos: int, heads, lens) -> bytes:
    """The last five payload bytes of the proven chunks (a chunk may hold fewer)."""
    tail, k = b"", len(heads) - 1
    while len(tail) < 5 and k >= 0:
        start = pos + int(heads[k]) + 5
        tail = buf[start:start + int(lens[k])] + tail
        k -= 1
    return tail[-5:]
