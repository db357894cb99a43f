"""The PITR fetcher (backupkit/wal/fetcher.py) and the restore_command's --socket side: real segments of the
session's archive served and checked; hostile requests, hostile answers and hostile object keys (fuzzed,
bounded) end in a verdict, never a traceback, a hang or a file written halfway."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupkit.restore.pitr import _controldata
from backupkit.restore.pitr_base import BaseBackupError, member_path
from backupkit.wal.archive import LocalArchive
from backupkit.wal.fetcher import WalFetcher, magic_for
from backupkit.wal.naming import classify
from backupkit.wal.restore_command import receive

MB = 1 << 20


@pytest.fixture(scope="module")
def identity(wal_archives):
    control = _controldata(wal_archives.base_plain)
    return int(control["Database system identifier"]), magic_for(18)


def _fetcher(archive: Path, tmp_path: Path, sysid: int, magic: int) -> WalFetcher:
    return WalFetcher(LocalArchive(archive), segment_size=MB, sysid=sysid, magic=magic, staging=tmp_path / "staging")


def _ask(fetcher: WalFetcher, name: str, cwd: Path) -> subprocess.CompletedProcess:
    (cwd / "pg_wal").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "backupkit.wal.restore_command", "--socket", str(fetcher.socket_path),
                           "--segment-size", str(MB), name, "pg_wal/RECOVERYXLOG"], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def _segments(archive: Path) -> list[Path]:
    return sorted(p for p in archive.iterdir() if (c := classify(p.name)) and c.kind == "segment" and not c.partial)


def test_a_real_segment_and_history_are_served_whole(wal_archives, identity, tmp_path):
    seg = _segments(wal_archives.tl2)[3]
    with _fetcher(wal_archives.tl2, tmp_path, *identity) as f:
        proc = _ask(f, seg.name, tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "pg_wal" / "RECOVERYXLOG").read_bytes() == seg.read_bytes()
        hist = _ask(f, "00000002.history", tmp_path)
        assert hist.returncode == 0, hist.stderr
        missing = _ask(f, "00000009.history", tmp_path)
        assert missing.returncode == 1 and "is not in" in missing.stderr
    assert f.served == [seg.name, "00000002.history"] and not f.problems
    assert not f.socket_path.exists() and not (tmp_path / "staging").exists()


def test_stop_ends_a_blocked_accept_without_a_timed_wakeup(wal_archives, identity, tmp_path):
    """accept() blocks with no timeout (no poll of a stop flag, no join(timeout): neither fires under a
    faked clock, tests/_faketime.py); stop() wakes it, and a request after the stop gets no answer."""
    f = _fetcher(wal_archives.tl1, tmp_path, *identity).start()
    assert f._sock.gettimeout() is None
    assert _ask(f, _segments(wal_archives.tl1)[0].name, tmp_path).returncode == 0
    thread = f._thread
    f.stop()
    assert not thread.is_alive()
    assert not f.socket_path.exists() and not (tmp_path / "staging").exists()
    late = _ask(f, _segments(wal_archives.tl1)[1].name, tmp_path)
    assert late.returncode == 1 and "Traceback" not in late.stderr


@pytest.mark.parametrize("damage", ["other_system", "page_header", "record_bytes", "short"])
def test_a_damaged_segment_is_refused_before_the_server_sees_it(wal_archives, identity, tmp_path, damage):
    archive = tmp_path / "archive"
    archive.mkdir()
    sysid, magic = identity
    seg = next(p for p in _segments(wal_archives.tl1)   # one full of WAL: its last page has a header
               if p.read_bytes()[MB - 8192:MB - 8190] == magic.to_bytes(2, "little"))
    data = bytearray(seg.read_bytes())
    if damage == "other_system":
        sysid += 1
    elif damage == "page_header":
        data[8192:8194] = b"\xff\xff"             # the second page's magic
    elif damage == "record_bytes":
        for i in range(MB // 2 + 100, MB // 2 + 116):   # mid-segment, inside records: a CRC or header fails
            data[i] ^= 0xFF
    else:
        data = data[:MB - 8192]
    (archive / seg.name).write_bytes(bytes(data))
    with _fetcher(archive, tmp_path, sysid, magic) as f:
        proc = _ask(f, seg.name, tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "pg_wal" / "RECOVERYXLOG").exists()
    [refusal] = f.problems
    assert refusal.name == seg.name
    want = {"other_system": "different database system", "page_header": "invalid magic number FFFF",
            "record_bytes": "", "short": "not a whole segment"}[damage]
    assert want in refusal.reason and refusal.reason in proc.stderr, refusal.reason


# -- hostile requests and answers (fuzzed) -------------------------------------------------------------
@pytest.fixture(scope="module")
def served(wal_archives, identity, tmp_path_factory):
    f = _fetcher(wal_archives.tl1, tmp_path_factory.mktemp("fetch"), *identity).start()
    yield f
    f.stop()


def _raw(path: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(1 << 16):
            out += chunk
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=80), st.text(max_size=70).map(lambda t: (t + "\n").encode())))
def test_fetcher_answers_every_request_with_one_verdict_line(served, request):
    answer = _raw(served.socket_path, request)
    line, _, body = answer.partition(b"\n")
    verdict = line.split(b" ", 1)[0]
    assert verdict in (b"OK", b"NO", b"BAD"), answer[:200]
    if verdict == b"OK":   # only a name the archive holds, exactly as many bytes as announced
        name = request[:-1].decode()
        assert classify(name) is not None and len(body) == int(line.split()[1])
    else:
        assert body == b""


class _Answer:
    """A one-shot fake fetcher: answers the next connection with ``data``."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.path = path

    def once(self, data: bytes) -> threading.Thread:
        def run():
            conn, _ = self.sock.accept()
            with conn:
                conn.recv(100)
                try:
                    conn.sendall(data)
                except OSError:
                    pass

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    d = tmp_path_factory.mktemp("fake")
    a = _Answer(d / "s")
    yield a, d
    a.sock.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=300),
                 st.tuples(st.sampled_from([b"OK", b"NO", b"BAD", b"ok"]), st.integers(-5, 2 * MB),
                           st.binary(max_size=64)).map(lambda t: t[0] + b" " + str(t[1]).encode() + b"\n" + t[2])))
def test_receive_writes_only_a_whole_answer(fake, answer):
    server, d = fake
    dest = d / "RECOVERYHISTORY"
    dest.unlink(missing_ok=True)
    t = server.once(answer)
    try:
        receive(str(server.path), "00000002.history", dest, MB, timeout=10)
    except (ValueError, FileNotFoundError, OSError):
        assert not dest.exists()
    else:
        line, _, body = answer.partition(b"\n")
        assert line.startswith(b"OK ") and dest.read_bytes() == body[:int(line[3:])]
    t.join(10)
    assert not list(d.glob(".*.part"))


@pytest.mark.parametrize("rel", ["", "../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\..\\b", "a/."])
def test_hostile_object_keys_of_a_base_backup_are_refused(tmp_path, rel):
    with pytest.raises(BaseBackupError, match="refusing object"):
        member_path(tmp_path, rel)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet="ab./\\\x00", max_size=12))
def test_object_keys_stay_below_the_download(tmp_path, rel):
    try:
        p = member_path(tmp_path, rel)
    except BaseBackupError:
        return
    assert p.resolve().is_relative_to(tmp_path.resolve()) and p != tmp_path
