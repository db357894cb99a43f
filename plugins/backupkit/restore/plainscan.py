"""The psql meta-command lines of a plain dump: refused before anything runs, the dump's own restrict pair dropped.

psql runs a plain dump line by line and obeys any backslash command in it: ``\\! id`` runs a
shell command as the restoring user, ``\\o FILE`` writes files, ``\\connect live_db`` moves the
rest of the dump into another database. A plain restore here is guarded twice:

1. this scan reads the whole dump before psql starts (:func:`scan_plain`) and again as it
   feeds psql (:func:`guarded`), and refuses the restore on the first **meta-command line**
   (a line outside COPY data whose first non-blank character is a backslash) other than the
   dump's own ``\\restrict KEY`` (before its first statement) and ``\\unrestrict KEY`` (the
   same key). ``\\connect``/``\\c`` and ``\\!`` are named as such; every other one is "a
   meta-command pg_dump does not write". The dump's restrict pair is not passed on: the
   restorer's own restriction is already in force and psql refuses a nested ``\\restrict``.
2. psql itself runs under ``\\restrict`` with a key the restorer draws for the run, sent
   before the dump's first byte (:mod:`backupkit.restore.database`): from then on psql
   refuses *every* backslash command, including one in the middle of a line, which a line
   scan cannot judge without lexing SQL.

COPY data (``COPY ... FROM stdin;`` up to the ``\\.`` line) is passed through unexamined, as
psql does: its end is found with a C-speed search, so a gigabyte of rows costs little. This is
the minimal scan the restore needs; ``checks/plainsql.py`` (dump verification, when it lands)
holds plain dumps to the full rule (docs/dump-rules.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

MAX_META_LINE = 4096  # pg_dump's meta lines are short; a longer one is refused, not buffered
TAIL = 64  # of a long SQL line, what is kept to see whether it ends a COPY statement
_COPY_START = re.compile(rb"^COPY\s.*\sFROM\s+stdin;\s*$", re.S)
_COPY_END = re.compile(rb"\n\\\.\r?\n")
_RESTRICT = re.compile(rb"^\\(restrict|unrestrict)[ \t]+([A-Za-z0-9]{1,256})[ \t]*$")
_NAME = re.compile(rb"^\\([A-Za-z]+|!|\S)")
WHY = {"!": "runs a shell command", "c": "connects to another database", "connect": "connects to another database"}


class MetaCommandRefused(ValueError):
    """The dump holds a meta-command line that must not run; the message names it and its line."""


class _Guard:
    """One pass over a dump: inside COPY data or not, the dump's restrict key, the line being read.

    ``pending`` is an incomplete line held until its end arrives; ``bol`` says whether it
    starts at the beginning of a line (a long SQL line or a COPY row is passed on as it comes,
    keeping only a tail).
    """

    def __init__(self) -> None:
        self.line = 0
        self.in_copy = False
        self.key: bytes | None = None
        self.statements = False  # a non-comment SQL line was seen
        self.pending = b""
        self.bol = True

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        data, self.pending = self.pending + chunk, b""
        pos = 0
        while pos < len(data):
            if self.in_copy:
                m = _COPY_END.search((b"\n" if self.bol else b"x") + data[pos:])
                if m is None:  # pass the rows on, keep a tail that may begin the end marker
                    keep = max(pos, len(data) - 3)
                    self.bol = data[keep - 1:keep] == b"\n" if keep > pos else self.bol
                    self.line += data.count(b"\n", pos, keep)
                    yield data[pos:keep]
                    self.pending = data[keep:]
                    return
                end = pos + m.end() - 1
                self.line += data.count(b"\n", pos, end)
                yield data[pos:end]
                pos, self.in_copy, self.bol = end, False, True
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                yield from self._partial(data, pos)
                return
            out = self._line(data[pos:end + 1])
            pos, self.bol = end + 1, True
            if out:
                yield out

    def _partial(self, data: bytes, pos: int) -> Iterator[bytes]:
        rest = data[pos:]
        meta = self.bol and rest.lstrip(b" \t").startswith(b"\\")
        if meta and len(rest) > MAX_META_LINE:
            raise MetaCommandRefused(f"line {self.line + 1}: a meta-command line longer than {MAX_META_LINE} bytes")
        if meta or len(rest) <= MAX_META_LINE:
            self.pending = rest
            return
        if self.bol:
            self._sql_start(rest)
        yield rest[:-TAIL]
        self.pending, self.bol = rest[-TAIL:], False

    def _sql_start(self, text: bytes) -> None:
        stripped = text.lstrip(b" \t")
        if stripped and not stripped.startswith(b"--"):
            self.statements = True

    def _line(self, line: bytes) -> bytes:
        self.line += 1
        text = line.rstrip(b"\n").rstrip(b"\r")
        if not self.bol:  # the end of a long SQL line: only whether it opens COPY data matters
            self.in_copy = text.rstrip().endswith(b"FROM stdin;")
            return line
        stripped = text.lstrip(b" \t")
        if stripped.startswith(b"\\"):
            return self._meta(stripped)
        self._sql_start(text)
        self.in_copy = bool(_COPY_START.match(text))
        return line

    def _meta(self, text: bytes) -> bytes:
        if len(text) > MAX_META_LINE:
            raise MetaCommandRefused(f"line {self.line}: a meta-command line longer than {MAX_META_LINE} bytes")
        m = _RESTRICT.match(text.rstrip(b" \t"))
        if m and m.group(1) == b"restrict" and self.key is None and not self.statements:
            self.key = m.group(2)
            return b""
        if m and m.group(1) == b"unrestrict" and self.key is not None and m.group(2) == self.key:
            return b""
        name = _NAME.match(text)
        cmd = name.group(1).decode("ascii", "replace") if name else "?"
        shown = text[:80].decode("utf-8", "replace")
        why = WHY.get(cmd, "is a psql meta-command pg_dump does not write")
        raise MetaCommandRefused(f"line {self.line}: \\{cmd} {why} ({shown!r}); nothing was restored")

    def close(self) -> Iterator[bytes]:
        if not self.pending:
            return
        rest, self.pending = self.pending, b""
        if self.in_copy:
            yield rest
            return
        out = self._line(rest)
        if out:
            yield out


def guarded(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """The dump's bytes as psql may receive them; raises :class:`MetaCommandRefused`."""
    guard = _Guard()
    for piece in pieces:
        yield from guard.feed(piece)
    yield from guard.close()


def scan_plain(pieces: Iterable[bytes]) -> int:
    """Read a whole dump through the guard before anything runs; returns the bytes it would pass on."""
    return sum(len(b) for b in guarded(pieces))


__all__ = ["MetaCommandRefused", "guarded", "scan_plain", "MAX_META_LINE"]
