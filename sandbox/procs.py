"""Processes of the sandbox: pid files checked against the program, process groups stopped whole."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(Path(pid_file).read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def proc_info(pid: int) -> tuple[str, str] | None:
    """(state letter, command line) of ``pid``, or None when there is no such process."""
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            return None
        return stat.rsplit(")", 1)[1].split()[0], cmd
    out = subprocess.run(["ps", "-o", "stat=,args=", "-p", str(pid)], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    state, _, cmd = out.stdout.strip().partition(" ")
    return state[:1], cmd


def pid_alive(pid: int, expect: str | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, if given, its command line contains ``expect``.

    ``expect`` guards against a recycled pid: a stale pid file may name some other program.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    info = proc_info(pid)
    if info is None or info[0] in ("Z", "X"):
        return False
    return expect is None or expect in info[1]


def running_pid(pid_file: Path, expect: str | None = None) -> int | None:
    """The live process recorded in ``pid_file``; a stale file is removed."""
    pid = read_pid(pid_file)
    if pid is not None and pid_alive(pid, expect):
        return pid
    with contextlib.suppress(FileNotFoundError):
        Path(pid_file).unlink()
    return None


def write_pid(pid_file: Path, pid: int) -> None:
    Path(pid_file).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{pid_file}.tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pid_file)


def start_detached(argv: list[str], *, pid_file: Path, log_path: Path, env: dict[str, str], cwd: Path) -> int:
    """Start ``argv`` in a session of its own (``make down`` stops the whole group), stdin closed,
    output appended to ``log_path``; record its pid in ``pid_file`` and return it."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    write_pid(pid_file, proc.pid)
    return proc.pid


def _group_alive(pgid: int) -> bool:
    """Some member of process group ``pgid`` still runs (zombies awaiting their reaper do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc").is_dir():
        return True
    return any((info := proc_info(p)) is not None and info[0] not in ("Z", "X") for p in group_members(pgid))


def dead_children(pid: int) -> list[int]:
    """Children of ``pid`` that exited and were not reaped (zombies): a supervisor such as
    ``airflow standalone`` whose scheduler died keeps running without it. Empty without /proc."""
    dead = []
    for d in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if int(fields[1]) == pid and fields[0] in ("Z", "X"):
                dead.append(int(d.name))
    return dead


def group_members(pgid: int) -> list[int]:
    members = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if int(fields[2]) == pgid:
                members.append(int(d.name))
    return members


def stop_group(pgid: int, *, first: int = signal.SIGTERM, timeout: float = 20.0) -> bool:
    """Stop the process group ``pgid``: ``first`` signal, then SIGTERM, then SIGKILL. True when it is gone."""
    for sig, wait in ((first, timeout), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if not _group_alive(pgid):
            return True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(-pgid, os.WNOHANG)  # reap our own children (tests)
            if not _group_alive(pgid):
                return True
            time.sleep(0.2)
    return not _group_alive(pgid)


__all__ = ["read_pid", "pid_alive", "running_pid", "write_pid", "stop_group", "group_members"]
