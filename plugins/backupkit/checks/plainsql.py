"""A reader of plain-format dumps that accepts only what pg_dump writes.

psql runs a plain dump statement by statement, and runs any backslash command it meets
outside a quoted string. So the reader lexes the SQL the way psql does (single-quoted,
``E''``, double-quoted and dollar-quoted strings, ``--`` and nested ``/* */`` comments,
parentheses, ``BEGIN ... END`` bodies of SQL functions) and holds the file to the rule in
docs/dump-rules.md: pg_dump's header comment first; SQL statements, comments and COPY
blocks; ``\\restrict KEY`` before the first statement and ``\\unrestrict KEY`` after the
completion comment, the only backslash commands; every ``COPY`` is pg_dump's
``COPY name (columns) FROM stdin;`` followed by rows of that many columns and a ``\\.``
line; then pg_dump's completion comment and nothing after it.

Work is linear and memory flat: COPY data (most of a dump) is checked with C-speed
searches and counts over each piece; only statements are lexed token by token, and only
the first :data:`KEEP_STATEMENT` bytes of a statement are kept.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from typing import Iterable

COMPLETION_LINE = b"-- PostgreSQL database dump complete"
TEXT_DUMP_HEADER = b"--\n-- PostgreSQL database dump\n--\n"
DUMPALL_HEADER = b"--\n-- PostgreSQL database cluster dump\n--\n"
KEEP_STATEMENT = 1 << 20  # bytes of a statement looked at (a COPY statement's columns)
MAX_WINDOW = 256 << 20  # one statement, or one line, held at most: memory stays bounded
MAX_META_LINE = 4096
_COPY = re.compile(rb"COPY\s+(?P<table>(?:[A-Za-z0-9_$\x80-\xff]+|\"(?:[^\"]|\"\")+\")"
                   rb"(?:\.(?:[A-Za-z0-9_$\x80-\xff]+|\"(?:[^\"]|\"\")+\"))?)\s*"
                   rb"(?:\((?P<cols>.*)\))?\s*FROM\s+stdin;\Z", re.S)
_RESTRICT_KEY = re.compile(rb"[A-Za-z0-9]{1,256}\Z")
_DOLLAR = re.compile(rb"\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$")
_IDENT_CHAR = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$") | frozenset(range(0x80, 0x100))
_STMT_SPECIAL = re.compile(rb"['\"$;()\\]|--|/\*")
_BODY_WORDS = re.compile(rb"(?<![A-Za-z0-9_$\x80-\xff])(?:BEGIN|CASE|END)(?![A-Za-z0-9_$\x80-\xff])", re.I)
# psqlscan.l tracks BEGIN ... END only in CREATE [OR REPLACE] FUNCTION|PROCEDURE, outside parentheses
_FUNCTION_START = re.compile(rb"CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)(?![A-Za-z0-9_$\x80-\xff])", re.I)
_STD_STRINGS_OFF = re.compile(rb"SET\s+standard_conforming_strings\s*=\s*'?off'?\s*;", re.I)
META_WHY = {
    "!": "runs a shell command", "o": "writes query output to a file", "out": "writes query output to a file",
    "w": "writes the query buffer to a file", "write": "writes the query buffer to a file",
    "copy": "reads or writes files on the restoring machine", "c": "connects to another database",
    "connect": "connects to another database (pg_dump writes it only with --create; restores here load one "
               "chosen database)",
    "i": "runs another file", "include": "runs another file", "ir": "runs another file",
    "include_relative": "runs another file", "gexec": "runs query results as SQL", "set": "sets psql variables",
    "gset": "sets psql variables from query results", "g": "sends the query buffer", "setenv": "changes the environment",
    "cd": "changes directory", "lo_import": "reads a file into the database", "lo_export": "writes a file",
}


class SqlProblem(Exception):
    """The text is not what pg_dump writes; the message is the verdict."""


@dataclass
class SqlScan:
    """What the reader found; ``problems`` empty means a whole, pg_dump-shaped dump."""

    bytes: int = 0
    lines: int = 0
    statements: int = 0
    copy_rows: dict[str, int] = field(default_factory=dict)  # table -> rows
    restrict_key: str | None = None
    complete: bool = False
    problems: list[str] = field(default_factory=list)


def _columns(cols: bytes | None) -> int:
    if cols is None or not cols.strip():
        return 0
    count, quoted = 1, False
    for ch in cols:
        if ch == 0x22:
            quoted = not quoted
        elif ch == 0x2C and not quoted:
            count += 1
    return count


class _Reader:
    def __init__(self, pieces: Iterable[bytes]):
        self.pieces = iter(pieces)
        self.buf, self.pos, self.base = b"", 0, 0
        self.eof = False
        self.scan = SqlScan()
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.std_strings = True
        self.after_end = False  # the completion line was read
        self.unrestricted = False
        self.seen_statement = False

    # -- input ---------------------------------------------------------------------------
    def _compact(self) -> None:
        """Drop what was consumed; called only where no index into the window is held."""
        if self.pos:
            self.base += self.pos
            self.buf, self.pos = self.buf[self.pos:], 0

    def _more(self) -> bool:
        """Append the next piece to the window; False at the end of the SQL."""
        if len(self.buf) - self.pos > MAX_WINDOW:
            raise SqlProblem(f"a statement at {self._where()} is larger than {MAX_WINDOW >> 20} MiB "
                             f"(pg_dump writes table data as COPY rows, which are read line by line)")
        for piece in self.pieces:
            if not piece:
                continue
            if b"\0" in piece:
                at = self.base + len(self.buf) + piece.index(b"\0")
                raise SqlProblem(f"NUL byte at byte {at} of the SQL (no SQL text or COPY row contains one)")
            try:
                self.utf8.decode(piece)
            except UnicodeDecodeError as exc:
                raise SqlProblem(f"invalid UTF-8 near byte {self.base + len(self.buf) + exc.start} of the SQL "
                                 f"(pg_dump writes client_encoding UTF8)") from None
            self.scan.bytes += len(piece)
            self.buf += piece
            return True
        self.eof = True
        return False

    def _line(self) -> int:
        return self.scan.lines + 1

    def _advance(self, to: int) -> None:
        self.scan.lines += self.buf.count(b"\n", self.pos, to)
        self.pos = to

    def _where(self) -> str:
        return f"line {self._line()}"

    # -- top level -------------------------------------------------------------------------
    def run(self) -> SqlScan:
        self._header()
        while True:
            self._compact()
            while self.pos < len(self.buf) and self.buf[self.pos] in b" \t\r\n":
                self._advance(self.pos + 1)
            if self.pos >= len(self.buf):
                if not self._more():
                    break
                continue
            self._need(2)  # "--" may straddle two pieces
            if self.buf.startswith(b"--", self.pos):
                self._comment_line()
            elif self.buf[self.pos] == 0x5C:  # backslash
                self._meta()
            else:
                if self.after_end:
                    self._after_end()
                self._statement()
        try:
            self.utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            raise SqlProblem("the SQL ends inside a UTF-8 character") from None
        if not self.after_end:
            raise SqlProblem("SQL ends without pg_dump's completion line (cut short?)")
        if self.scan.restrict_key and not self.unrestricted:
            raise SqlProblem("\\restrict is never lifted: pg_dump writes \\unrestrict after the completion line")
        self.scan.complete = True
        return self.scan

    def _need(self, n: int) -> bool:
        while len(self.buf) - self.pos < n:
            if not self._more():
                return False
        return True

    def _header(self) -> None:
        self._need(len(DUMPALL_HEADER))
        head = self.buf[self.pos:self.pos + len(DUMPALL_HEADER)]
        if head.startswith(DUMPALL_HEADER):
            raise SqlProblem("pg_dumpall output (a cluster dump): not supported; it \\connects to several "
                             "databases and restores here load one. Back up each database with pg_dump")
        if not head.startswith(TEXT_DUMP_HEADER):
            raise SqlProblem(f"does not start with pg_dump's header comment (starts {bytes(head[:40])!r})")

    def _line_end(self) -> int:
        """Index of the newline ending the current line (the window grows to hold it), or -1 at EOF."""
        start = self.pos
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                return i
            start = len(self.buf)
            if not self._more():
                return -1

    def _comment_line(self) -> None:
        end = self._line_end()
        stop = len(self.buf) if end < 0 else end
        text = self.buf[self.pos:stop].rstrip(b"\r")
        if text == b"-- PostgreSQL database dump" and self._line() != 2:
            raise SqlProblem(f"a second dump starts at {self._where()} after the end of the first "
                             f"(two dumps concatenated?)")
        if text == COMPLETION_LINE:
            if self.after_end:
                raise SqlProblem(f"a second completion line at {self._where()} (two dumps concatenated?)")
            self.after_end = True
        if self.unrestricted:
            self._after_end()
        self._advance(stop if end < 0 else end + 1)

    def _after_end(self) -> None:
        self._need(len(TEXT_DUMP_HEADER))
        if self.buf.startswith(TEXT_DUMP_HEADER, self.pos):
            raise SqlProblem(f"a second dump starts at {self._where()} after the end of the first "
                             f"(two dumps concatenated?)")
        snippet = bytes(self.buf[self.pos:self.pos + 60]).decode("utf-8", "replace")
        raise SqlProblem(f"content after the end of the dump at {self._where()}: {snippet!r}")

    def _meta(self) -> None:
        end = self._line_end()
        stop = len(self.buf) if end < 0 else end
        if stop - self.pos > MAX_META_LINE:
            stop = self.pos + MAX_META_LINE
        line = bytes(self.buf[self.pos:stop]).rstrip(b"\r")
        m = re.match(rb"\\([A-Za-z_]+|[^A-Za-z_\s])\s*(.*)", line, re.S)
        name = m.group(1).decode("utf-8", "replace") if m else ""
        arg = m.group(2).strip() if m else b""
        where = self._where()
        if name == "restrict":
            if self.scan.restrict_key is not None or self.seen_statement or self.after_end:
                raise SqlProblem(f"\\restrict at {where}: pg_dump writes it once, before the first statement")
            if not _RESTRICT_KEY.match(arg):
                raise SqlProblem(f"\\restrict at {where} with a key pg_dump would not write")
            self.scan.restrict_key = arg.decode()
        elif name == "unrestrict":
            if not self.after_end or self.unrestricted:
                raise SqlProblem(f"\\unrestrict at {where}: pg_dump writes it once, after the completion line "
                                 f"(pg_dump --create also writes it around \\connect: restores here load one "
                                 f"chosen database, dump without --create)")
            if self.scan.restrict_key is None or arg.decode("utf-8", "replace") != self.scan.restrict_key:
                raise SqlProblem(f"\\unrestrict at {where} does not match the \\restrict key")
            self.unrestricted = True
        else:
            why = META_WHY.get(name, "is a psql command")
            shown = line[:60].decode("utf-8", "replace")
            raise SqlProblem(f"psql meta-command \\{name} at {where} ({shown!r}): it {why}; pg_dump never "
                             f"writes it")
        self._advance(stop if end < 0 else end + 1)

    # -- statements --------------------------------------------------------------------------
    def _statement(self) -> None:
        start_line, start = self._line(), self.pos
        depth = begin = 0
        self._need(64)
        function = bool(_FUNCTION_START.match(self.buf, start))
        while True:
            m = _STMT_SPECIAL.search(self.buf, self.pos)
            stop = m.start() if m else self._safe_end()
            if function and depth == 0:  # psqlscan.l's begin_depth
                for w in _BODY_WORDS.finditer(self.buf, self.pos, stop):
                    word = w.group().upper()
                    if word == b"BEGIN" or (word == b"CASE" and begin):
                        begin += 1
                    elif word == b"END" and begin:
                        begin -= 1
            if m is None:
                self._advance(stop)
                if not self._more():
                    raise SqlProblem(f"the SQL ends inside the statement that starts at line {start_line}")
                continue
            self._advance(stop)
            tok = m.group()
            if tok == b";":
                self._advance(self.pos + 1)
                if depth == 0 and begin == 0:
                    self._end_statement(self.buf[start:min(self.pos, start + KEEP_STATEMENT)], start_line)
                    return
            elif tok == b"(":
                depth += 1
                self._advance(self.pos + 1)
            elif tok == b")":
                depth = max(0, depth - 1)
                self._advance(self.pos + 1)
            elif tok == b"\\":
                self._meta_in_statement(start_line)
            else:
                self._quoted(tok, start_line)

    def _safe_end(self) -> int:
        """Where scanning may stop at the end of the window: not inside a word (BEGIN, END)
        or a two-byte token (--, /*) that the next piece may complete."""
        end = len(self.buf)
        while end > self.pos and (self.buf[end - 1] in _IDENT_CHAR or self.buf[end - 1] in b"-/"):
            end -= 1
        return end

    def _meta_in_statement(self, start_line: int) -> None:
        nxt = self.buf[self.pos:self.pos + 20]
        name = re.match(rb"\\([A-Za-z_]*)", nxt).group(1).decode() or nxt[1:2].decode("utf-8", "replace")
        why = META_WHY.get(name, "is a psql command")
        raise SqlProblem(f"psql meta-command \\{name} inside the statement that starts at line {start_line} "
                         f"({self._where()}): it {why}; pg_dump never writes one outside a quoted string")

    def _find(self, needle: bytes, frm: int, what: str, start_line: int) -> int:
        while True:
            i = self.buf.find(needle, frm)
            if i >= 0:
                return i
            frm = max(frm, len(self.buf) - len(needle) + 1)
            if not self._more():
                raise SqlProblem(f"the SQL ends inside {what} in the statement that starts at line {start_line}")

    def _quoted(self, tok: bytes, start_line: int) -> None:
        """Skip a quoted string, identifier, dollar-quoted body or comment starting at pos."""
        p = self.pos
        if tok == b"'":
            escapes = not self.std_strings or (p > 0 and self.buf[p - 1] in b"Ee"
                                               and (p < 2 or self.buf[p - 2] not in _IDENT_CHAR))
            q = p + 1
            while True:
                i = self._find(b"'", q, "a quoted string", start_line)
                if escapes:
                    k = i - 1
                    while k > p and self.buf[k] == 0x5C:
                        k -= 1
                    if (i - 1 - k) % 2:  # an odd run of backslashes escapes the quote
                        q = i + 1
                        continue
                if not self._need_at(i + 1):
                    self._advance(i + 1)
                    return
                if self.buf[i + 1] == 0x27:  # '' inside a string
                    q = i + 2
                    continue
                self._advance(i + 1)
                return
        if tok == b'"':
            q = p + 1
            while True:
                i = self._find(b'"', q, "a quoted identifier", start_line)
                if self._need_at(i + 1) and self.buf[i + 1] == 0x22:
                    q = i + 2
                    continue
                self._advance(i + 1)
                return
        if tok == b"--":
            i = self._find(b"\n", p, "a comment", start_line)
            self._advance(i + 1)
            return
        if tok == b"/*":
            depth, q = 1, p + 2
            while depth:
                i = self._find(b"*/", q, "a comment", start_line)
                opened = self.buf.count(b"/*", q, i)
                depth += opened - 1
                q = i + 2
            self._advance(q)
            return
        # "$": a dollar quote unless it follows an identifier character or is a parameter ($1)
        self._need_at(p + 64)
        m = _DOLLAR.match(self.buf, p)
        if m is None or (p > 0 and self.buf[p - 1] in _IDENT_CHAR):
            self._advance(p + 1)
            return
        tag = m.group()
        i = self._find(tag, m.end(), "a dollar-quoted string", start_line)
        self._advance(i + len(tag))

    def _need_at(self, index: int) -> bool:
        while len(self.buf) <= index:
            if not self._more():
                return False
        return True

    def _end_statement(self, stmt: bytes, start_line: int) -> None:
        self.scan.statements += 1
        self.seen_statement = True
        text = stmt.strip()
        if _STD_STRINGS_OFF.match(text):
            self.std_strings = False
        if text[:4].upper() != b"COPY":
            return
        m = _COPY.match(text)
        if not m:
            raise SqlProblem(f"COPY statement at line {start_line} is not pg_dump's 'COPY table (columns) FROM "
                             f"stdin;': {text[:100].decode('utf-8', 'replace')!r}")
        table = m.group("table").decode("utf-8", "replace")
        # the rest of the COPY line, then the data
        end = self._line_end()
        if end < 0 or self.buf[self.pos:end].strip():
            raise SqlProblem(f"COPY statement at line {start_line} is not followed by a line break")
        self._advance(end + 1)
        rows = self._copy_data(table, _columns(m.group("cols")), start_line)
        self.scan.copy_rows[table] = self.scan.copy_rows.get(table, 0) + rows

    def _end_marker(self) -> int:
        """Index of the newline before a ``\\.`` line in the window, or -1.

        Backslashes are rare in COPY text, so they are found with a memchr-speed search and
        each is looked at; a search for the whole marker would be several times slower.
        """
        j = self.pos
        while (j := self.buf.find(b"\\", j + 1)) >= 0:
            if self.buf[j - 1] == 0x0A and self.buf.startswith(b"\\.\n", j):
                return j - 1
        return -1

    def _copy_data(self, table: str, columns: int, start_line: int) -> int:
        """Rows of one COPY block up to its \\. line; each row has ``columns`` fields."""
        rows = tabs = 0
        while True:
            if not self._need(3):
                raise SqlProblem(f"the SQL ends inside the COPY data of {table} (line {start_line}): no \\. line")
            if self.buf.startswith(b"\\.\n", self.pos):
                self._advance(self.pos + 3)
                break
            self._compact()
            i = self._end_marker()
            stop = i + 1 if i >= 0 else self.buf.rfind(b"\n", self.pos) + 1
            if stop > self.pos:
                n = self.buf.count(b"\n", self.pos, stop)
                rows += n
                tabs += self.buf.count(b"\t", self.pos, stop)
                self.scan.lines += n
                self.pos = stop
            if i >= 0:
                continue
            if not self._more():
                raise SqlProblem(f"the SQL ends inside the COPY data of {table} (line {start_line}): no \\. line")
        if columns and tabs != rows * (columns - 1):
            raise SqlProblem(f"COPY data of {table} (line {start_line}) has {tabs} column separators for "
                             f"{rows} rows of {columns} columns (expected {rows * (columns - 1)}): rows were "
                             f"cut or joined")
        if not columns and tabs:
            raise SqlProblem(f"COPY data of {table} (line {start_line}) has column separators but no columns")
        return rows


def read_sql(pieces: Iterable[bytes]) -> SqlScan:
    """Check the decoded SQL given as ``pieces`` (any sizes) against pg_dump's plain format."""
    reader = _Reader(pieces)
    try:
        return reader.run()
    except SqlProblem as exc:
        reader.scan.problems.append(str(exc))
        return reader.scan
