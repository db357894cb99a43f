"""ERROR and WARNING lines the backup jobs logged since the last run.

Each log file's position is remembered as (device, inode, byte offset). A log rotated
away (new inode) or truncated (now shorter than the offset) is read from its start. The
first run reads each file from the start. Files are read line by line (a line longer
than :data:`MAX_LINE` is taken in pieces) so memory stays flat whatever the log size; a
last line still being written (no newline yet) is left for the next run.

Reporting: an ERROR line is a problem (``ok=False``); a WARNING line is reported with
``ok=True`` and a detail starting ``WARNING:`` so it shows in the run's results without
failing it. At most :data:`MAX_LINES_PER_FILE` lines of each kind per file are reported,
then one summary line with the count of the rest.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

from backupkit.config import LogSource
from backupkit.model import CheckResult

MAX_LINES_PER_FILE = 20
MAX_LINE = 64 * 1024
MAX_DETAIL = 300
# Upper-case level words as the backup scripts write them ("... - ERROR: ..."), and the
# lower-case "error:" / "warning:" prefixes of pg_dump, tar and the AWS CLI.
ERROR_RE = re.compile(r"\b(?:ERROR|FATAL|CRITICAL|PANIC)\b|\berror:")
WARNING_RE = re.compile(r"\bWARN(?:ING)?\b|\bwarning:")



LOGS = "logs"  # the "source" part of every log result's artifact name


def log_artifact(name: str) -> str:
    """The artifact name of the results about backup log ``name``: ``logs/NAME``."""
    return f"{LOGS}/{name}"


def log_of(artifact: str) -> str | None:
    """The log name of a log result's artifact, None for any other artifact."""
    head, sep, name = artifact.partition("/")
    return name if head == LOGS and sep else None

def _classify(line: str) -> str | None:
    if ERROR_RE.search(line):
        return "ERROR"
    if WARNING_RE.search(line):
        return "WARNING"
    return None


def _scan_one(log: LogSource, prev: dict | None) -> tuple[list[CheckResult], dict | None]:
    art = log_artifact(log.name)
    try:
        st = os.stat(log.path)
    except FileNotFoundError:
        return [CheckResult(art, "log", False, f"log file missing: {log.path}")], prev
    except OSError as exc:
        return [CheckResult(art, "log", False, f"log file unreadable: {log.path}: {exc}")], prev

    start, why = 0, "first run: read from the start"
    if prev and prev.get("path") == str(log.path):
        same_file = prev.get("inode") == st.st_ino and prev.get("dev") == st.st_dev
        if not same_file:
            why = "rotated (new file): read from the start"
        elif st.st_size < int(prev.get("offset", 0)):
            why = "truncated: read from the start"
        else:
            start, why = int(prev.get("offset", 0)), ""

    found: dict[str, list[tuple[int, str]]] = {"ERROR": [], "WARNING": []}
    counts = {"ERROR": 0, "WARNING": 0}
    offset = start
    lineno = int(prev.get("lines", 0)) if start and prev else 0
    try:
        with open(log.path, "rb") as f:
            f.seek(start)
            while True:
                raw = f.readline(MAX_LINE)
                if not raw:
                    break
                if not raw.endswith(b"\n") and len(raw) < MAX_LINE:
                    break  # a line still being written: leave it for the next run
                offset += len(raw)
                lineno += 1
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                level = _classify(line)
                if level:
                    counts[level] += 1
                    if len(found[level]) < MAX_LINES_PER_FILE:
                        found[level].append((lineno, line))
    except OSError as exc:
        return [CheckResult(art, "log", False, f"log file unreadable: {log.path}: {exc}")], prev

    new_offset = {"path": str(log.path), "dev": st.st_dev, "inode": st.st_ino, "offset": offset, "lines": lineno}
    results: list[CheckResult] = []
    for level, ok in (("ERROR", False), ("WARNING", True)):
        for n, line in found[level]:
            where = f"line {n}: "
            text = line.strip()
            if len(text) > MAX_DETAIL:
                text = text[:MAX_DETAIL] + "..."
            detail = f"{where}{text}" if level == "ERROR" else f"WARNING: {where}{text}"
            results.append(CheckResult(art, "log", ok, detail))
        rest = counts[level] - len(found[level])
        if rest:
            results.append(CheckResult(art, "log", ok, f"{'' if level == 'ERROR' else 'WARNING: '}... and "
                                       f"{rest} more {level} lines in {log.path}"))
    if not results:
        note = f"; {why}" if why else ""
        results.append(CheckResult(art, "log", True,
                                   f"no ERROR or WARNING lines in {offset - start} new bytes of {log.path}{note}"))
    return results, new_offset


def scan_logs(logs: Sequence[LogSource], offsets: dict[str, dict]) -> tuple[list[CheckResult], dict]:
    """Report the ERROR/WARNING lines added since ``offsets``; return them and the new offsets.

    ``offsets`` maps log name to ``{"path", "dev", "inode", "offset", "lines"}`` as returned by the
    previous call (an empty dict on the first run); it is not modified.
    """
    results: list[CheckResult] = []
    new_offsets: dict[str, dict] = {}
    for log in logs:
        res, off = _scan_one(log, offsets.get(log.name))
        results.extend(res)
        if off is not None:
            new_offsets[log.name] = off
    return results, new_offsets


__all__ = ["scan_logs", "ERROR_RE", "WARNING_RE", "MAX_LINES_PER_FILE"]
