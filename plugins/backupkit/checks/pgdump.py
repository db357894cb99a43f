"""Checks of pg_dump output, read the way a restore reads it.

* custom (``-Fc``): :mod:`backupkit.checks.pgcustom` reads header, TOC and every data
  block to its exact end on worker threads, in the same read that hashes the file;
  ``pg_restore --list`` (it reads only the TOC, ~0.03 s) runs alongside as a second
  opinion; ``--deep`` adds ``pg_restore -f /dev/null`` (zstd and lz4 dumps are fed to it
  transcoded, since the bundled pg_restore has neither).
* plain SQL (``.sql``, ``.sql.gz``, ``.sql.zst``, ``.sql.lz4``): inflated on a thread while
  :mod:`backupkit.checks.plainsql` reads the statements.
* tar (``-Ft``, also gzip-compressed) and directory (``-Fd``): ``pg_restore -f /dev/null``,
  which decodes every data member; the tar layer is read alongside.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

from backupkit.checks.archive import scan_tar
from backupkit.checks.pgcustom import CustomScan, scan_custom
from backupkit.checks.plainsql import SqlScan, read_sql
from backupkit.checks.stream import CHUNK, GZIP_ERRORS, StreamProblem, Tap, decoded_pieces, gzip_problem, read_to_end
from backupkit.pgbin import pg_bin
from backupkit.model import CheckResult

STDERR_KEEP = 64 * 1024  # pg_restore stderr kept (the last bytes)
# After its input ends pg_restore has at most a pipe buffer left to decode.
END_OF_INPUT_GRACE = 120.0
LIST_TIMEOUT = 60.0
MAX_PROBLEMS = 10  # problems of one artifact listed one by one


def exit_description(program: str, rc: int) -> str:
    """``pg_restore exited 1`` or ``pg_restore killed by signal 11 (SIGSEGV)``."""
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = "unknown signal"
        return f"{program} killed by signal {-rc} ({name})"
    return f"{program} exited {rc}"


def _file_argument(path: Path) -> str:
    """An absolute path: a name starting with ``-`` must never reach pg_restore as an option."""
    return os.path.abspath(path)


class PgRestore:
    """``pg_restore -f /dev/null`` (or ``--list``) on ``archive``, or on what is fed to stdin."""

    def __init__(self, archive: Path | None = None, *, list_only: bool = False):
        cmd = [pg_bin("pg_restore"), "--list" if list_only else "-f", *([] if list_only else [os.devnull])]
        if archive is not None:
            cmd.append(_file_argument(archive))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if archive is None else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE if list_only else subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self._feeding = archive is None
        if self._feeding:
            try:  # a 1 MiB pipe lets pg_restore decode one chunk while we hash the next
                fcntl.fcntl(self.proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, CHUNK)
            except (AttributeError, OSError):
                pass
        self._stderr, self.stdout = bytearray(), bytearray()
        self._readers = [threading.Thread(target=self._collect, args=(self.proc.stderr, self._stderr), daemon=True)]
        if list_only:
            self._readers.append(threading.Thread(target=self._collect, args=(self.proc.stdout, self.stdout),
                                                  daemon=True))
        for r in self._readers:
            r.start()

    @staticmethod
    def _collect(pipe, into: bytearray) -> None:
        fd = pipe.fileno()
        while data := os.read(fd, 65536):
            into += data
            del into[:-STDERR_KEEP * 16]

    def feed(self, data) -> None:
        if not self._feeding:
            return
        try:
            self.proc.stdin.write(data)
        except BrokenPipeError:  # pg_restore stopped reading; its exit status says why
            self._feeding = False

    def _close_stdin(self) -> None:
        self._feeding = False
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def wait(self, timeout: float | None) -> tuple[int | None, str]:
        """(exit status or None when killed for taking too long, first error line)."""
        self._close_stdin()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None, ""
        for r in self._readers:
            r.join()
        lines = bytes(self._stderr[-STDERR_KEEP:]).decode("utf-8", "replace").splitlines()
        first = next((ln for ln in lines if "error" in ln), lines[0] if lines else "no message")
        return rc, first

    def result(self, artifact: str, timeout: float | None = END_OF_INPUT_GRACE,
               check: str = "pg_restore") -> CheckResult:
        rc, first = self.wait(timeout)
        if rc is None:
            return CheckResult(artifact, check, False,
                               f"pg_restore still running {timeout:.0f}s after the end of its input; killed")
        if rc == 0:
            return CheckResult(artifact, check, True, "every data block decoded")
        return CheckResult(artifact, check, False, f"{exit_description('pg_restore', rc)}: {first}")

    def kill(self) -> None:
        self._close_stdin()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "PgRestore":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        for r in self._readers:
            r.join()
        self.proc.stderr.close()
        if self.proc.stdout:
            self.proc.stdout.close()


# -- custom format -----------------------------------------------------------------------------
def _describe(scan: CustomScan) -> str:
    h = scan.header
    what = "uncompressed" if h.compression == "none" else f"{h.compression}-compressed"
    return (f"custom dump {h.version} by pg_dump {h.pg_dump_version} of {h.database!r}, {what} data; "
            f"{scan.toc_entries} TOC entries, {scan.blocks} data blocks decoded to their end "
            f"({scan.decoded_bytes} bytes), file ends where the last block ends")


def _listing_result(listing: PgRestore, scan: CustomScan, artifact: str) -> CheckResult:
    rc, first = listing.wait(LIST_TIMEOUT)
    if rc is None:
        return CheckResult(artifact, "pg_restore_list", False, f"pg_restore --list took over {LIST_TIMEOUT:.0f}s; killed")
    if rc != 0:
        return CheckResult(artifact, "pg_restore_list", False, f"{exit_description('pg_restore --list', rc)}: {first}")
    m = re.search(rb"TOC Entries: (\d+)", bytes(listing.stdout))
    if m and scan.header is not None and not scan.problems and int(m.group(1)) != scan.toc_entries:
        return CheckResult(artifact, "pg_restore_list", False,
                           f"pg_restore lists {int(m.group(1))} TOC entries, this reader read {scan.toc_entries}")
    return CheckResult(artifact, "pg_restore_list", True, "pg_restore reads the same table of contents")


def check_pg_custom(tap: Tap, artifact: str, path: Path, *, workers: int = 1,
                    deep: bool = False) -> tuple[list[CheckResult], CustomScan]:
    """Read the whole dump with the custom-format reader; pg_restore --list alongside."""
    with PgRestore(path, list_only=True) as listing:
        scan = scan_custom(tap, workers)
        tap.drain()
        results = _custom_results(scan, artifact)
        results.append(_listing_result(listing, scan, artifact))
    if deep and not scan.problems:
        results.append(deep_custom(path, artifact, scan.header.compression))
    return results, scan


def _custom_results(scan: CustomScan, artifact: str) -> list[CheckResult]:
    if scan.problems:
        listed = [CheckResult(artifact, "custom_dump", False, p) for p in scan.problems[:MAX_PROBLEMS]]
        if len(scan.problems) > MAX_PROBLEMS:
            listed.append(CheckResult(artifact, "custom_dump", False,
                                      f"... and {len(scan.problems) - MAX_PROBLEMS} more problems"))
        return listed
    results = [CheckResult(artifact, "custom_dump", True, _describe(scan))]
    if scan.data_entries == 0:
        results.append(CheckResult(artifact, "data_present", True,
                                   "WARNING: schema-only dump: it holds no table data (pg_dump -s?)"))
    return results


def deep_custom(path: Path, artifact: str, compression: str) -> CheckResult:
    """``pg_restore -f /dev/null`` reads the dump too (transcoded when it cannot decode the blocks)."""
    if compression not in ("lz4", "zstd"):
        with PgRestore(path) as restore:
            return restore.result(artifact, timeout=None)
    from backupkit.checks.pgtranscode import transcode_custom

    with PgRestore() as restore, open(path, "rb") as src:
        try:
            transcode_custom(src, restore.feed)
        except (ValueError, OSError) as exc:
            return CheckResult(artifact, "pg_restore", False, f"could not transcode for pg_restore: {exc}")
        result = restore.result(artifact)
    if result.ok:
        return CheckResult(artifact, "pg_restore", True, f"every data block decoded ({compression} blocks "
                                                         f"transcoded to uncompressed for the bundled pg_restore)")
    return result


# -- tar and directory ---------------------------------------------------------------------------
class _Forward:
    """A read-only stream that hands every byte it returns to ``sink`` (pg_restore's stdin)."""

    def __init__(self, stream, sink):
        self._stream, self._sink = stream, sink

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n if n is not None and n >= 0 else CHUNK)
        if data:
            self._sink(data)
        return data


def check_pg_tar(tap: Tap, artifact: str, *, gzipped: bool = False) -> list[CheckResult]:
    """The tar layer is read alongside pg_restore: pg_restore never finishes on a tar cut
    inside a member (it spins at end of input), so a truncated tar is caught first."""
    with PgRestore() as restore:
        if not gzipped:
            tap.add_sink(restore.feed)
            results = scan_tar(tap, artifact, safety=False)
        else:
            stream = _Forward(gzip.GzipFile(fileobj=tap, mode="rb"), restore.feed)
            try:
                results = scan_tar(stream, artifact, safety=False)
                read_to_end(stream)
            except GZIP_ERRORS as exc:
                return [CheckResult(artifact, "gzip", False, gzip_problem(exc))]
            results.insert(0, CheckResult(artifact, "gzip", True, "gzip stream complete, CRC ok"))
        if not all(r.ok for r in results):
            return results
        tap.drain()
        return [*results, restore.result(artifact)]


def check_pg_directory(path: Path, artifact: str) -> list[CheckResult]:
    with PgRestore(path) as restore:
        return [restore.result(artifact, timeout=None)]


# -- plain SQL -------------------------------------------------------------------------------------
def check_sql(tap: Tap, artifact: str, compression: str | None) -> tuple[list[CheckResult], SqlScan | None]:
    """``<compression>`` (whole stream) and ``sql_dump`` results, and the scan (row counts)."""
    try:
        scan = read_sql(decoded_pieces(tap, compression))
    except StreamProblem as exc:
        return [CheckResult(artifact, compression or "read", False, str(exc))], None
    results = []
    if compression:
        results.append(CheckResult(artifact, compression, True, f"{compression} stream complete, checksums ok"
                                   if compression == "gzip" else f"{compression} stream complete"))
    if scan.problems:
        results += [CheckResult(artifact, "sql_dump", False, p) for p in scan.problems]
        return results, scan
    tables = len(scan.copy_rows)
    results.append(CheckResult(artifact, "sql_dump", True,
                               f"{scan.statements} statements, {tables} COPY blocks ({sum(scan.copy_rows.values())} "
                               f"rows), only pg_dump's meta-commands, ends with pg_dump's completion line"))
    if not tables:
        results.append(CheckResult(artifact, "data_present", True,
                                   "WARNING: schema-only dump: it holds no table data (pg_dump -s?)"))
    return results, scan
