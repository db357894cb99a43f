"""verify_artifact on real pg_dump output and on damaged copies of it.

Every damaged copy is made from a real dump the way damage happens in practice (a copy
cut short, a flipped block, a re-compressed prefix, a hostile archive), and each test
asserts the check that must catch it and the reason it gives.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from backupkit.checks.stream import Tap
from backupkit.pgbin import pg_bin
from backupkit.verify import ArtifactReport, verify_artifact

KINDS = {"custom": "pg_custom", "tar": "pg_tar", "directory": "pg_directory", "plain_gz": "sql_gzip", "plain": "sql"}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def problems(report: ArtifactReport) -> list[tuple[str, str]]:
    return [(p.check, p.detail) for p in report.problems()]


def cut(src: Path, dst: Path, size: int) -> Path:
    dst.write_bytes(src.read_bytes()[:size])
    return dst


def damage_table_data(dump: Path, dst: Path, table: str) -> Path:
    """Copy a custom-format dump with bytes flipped inside ``table``'s data block.

    A custom dump is: header, table of contents, then one data block per table, each
    ``01 <dump id>`` followed by length-prefixed compressed chunks. Integers are a sign
    byte plus ``intSize`` little-endian bytes (intSize is header byte 8).
    """
    listing = subprocess.run([pg_bin("pg_restore"), "--list", str(dump)], capture_output=True, text=True,
                             check=True).stdout
    dump_id = int(re.search(rf"^(\d+);.*TABLE DATA public {table} ", listing, re.M).group(1))
    data = bytearray(dump.read_bytes())
    int_size = data[8]
    marker = b"\x01\x00" + dump_id.to_bytes(int_size, "little")
    assert data.count(marker) == 1, "data block header not unique"
    chunk = data.index(marker) + len(marker)  # first chunk: sign, length, compressed bytes
    length = int.from_bytes(data[chunk + 1:chunk + 1 + int_size], "little")
    assert length > 256
    mid = chunk + 1 + int_size + length // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    dst.write_bytes(data)
    return dst


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], *, gz: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        for info, content in members:
            info.size = len(content) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return path


def member(name: str, content: bytes = b"x", *, type: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type, link
    return info, content


SAFE_MEMBERS = [
    member("opt/trixtech/config/app.yaml", b"db: trixtech\n"),
    member("opt/trixtech/uploads/", type=tarfile.DIRTYPE),
    member("opt/trixtech/uploads/a.png", os.urandom(3000)),
    member("opt/trixtech/current", type=tarfile.SYMTYPE, link="config/app.yaml"),
    member("opt/trixtech/copy.yaml", type=tarfile.LNKTYPE, link="opt/trixtech/config/app.yaml"),
]


# -- no false alarms -----------------------------------------------------------------

@pytest.mark.parametrize("fmt", sorted(KINDS))
def test_every_good_dump_format_passes(dumps, fmt):
    report = verify_artifact(dumps[fmt])
    assert problems(report) == []
    assert report.kind == KINDS[fmt]
    expected_checks = {"custom": {"custom_dump", "pg_restore_list"}, "tar": {"tar_read", "pg_restore"},
                       "directory": {"pg_restore"}, "plain_gz": {"gzip", "sql_dump"}, "plain": {"sql_dump"}}[fmt]
    assert expected_checks <= {r.check for r in report.results}
    if fmt == "directory":
        assert report.sha256 is None
    else:
        assert report.sha256 == sha256_of(dumps[fmt])
        assert report.size == dumps[fmt].stat().st_size


@pytest.mark.parametrize("gz,kind", [(True, "tar_gzip"), (False, "tar")])
def test_good_file_set_archive_passes(tmp_path, gz, kind):
    path = make_tar(tmp_path / ("files.tar.gz" if gz else "files.tar"), SAFE_MEMBERS, gz=gz)
    report = verify_artifact(path)
    assert problems(report) == []
    assert report.kind == kind
    assert {r.check for r in report.results} >= {"tar_read", "tar_safety"}
    assert report.sha256 == sha256_of(path)


def test_report_serialises_with_its_results(dumps):
    d = json.loads(json.dumps(verify_artifact(dumps["custom"]).to_dict()))
    assert d["ok"] is True and d["kind"] == "pg_custom"
    assert {r["check"] for r in d["results"]} == {"not_empty", "format", "custom_dump", "pg_restore_list", "sha256"}


# -- custom and tar pg_dump archives ---------------------------------------------------

def test_truncated_custom_dump(dumps, tmp_path):
    src = dumps["custom"]
    path = cut(src, tmp_path / "cut.dump", int(src.stat().st_size * 0.6))
    report = verify_artifact(path)
    [(check, detail)] = problems(report)
    assert check == "custom_dump"
    assert detail.startswith("file ends inside entry ") and "TABLE DATA public." in detail
    assert report.sha256 == sha256_of(path)


def test_damaged_table_data_with_intact_toc(dumps, tmp_path):
    path = damage_table_data(dumps["custom"], tmp_path / "damaged.dump", "bookings")
    # Why we do not use --list: the table of contents is intact, so it still lists fine.
    listing = subprocess.run([pg_bin("pg_restore"), "--list", str(path)], capture_output=True, text=True)
    assert listing.returncode == 0 and "TABLE DATA public bookings" in listing.stdout
    [(check, detail)] = problems(verify_artifact(path))
    assert check == "custom_dump"
    assert "TABLE DATA public.bookings" in detail and "gzip data corrupt" in detail


def test_truncated_tar_format_dump(dumps, tmp_path):
    src = dumps["tar"]
    path = cut(src, tmp_path / "cut.tar", int(src.stat().st_size * 0.6))
    report = verify_artifact(path)  # pg_restore alone would spin forever on this input
    assert report.kind == "pg_tar"
    [(check, detail)] = problems(report)
    assert check == "tar_read"
    assert "truncated inside member" in detail
    assert report.sha256 == sha256_of(path)


def test_directory_dump_missing_data_file(dumps, tmp_path):
    path = Path(shutil.copytree(dumps["directory"], tmp_path / "damaged.dir"))
    biggest = max(path.glob("*.dat*"), key=lambda p: p.stat().st_size)
    biggest.unlink()
    [(check, detail)] = problems(verify_artifact(path))
    assert check == "pg_restore"
    assert biggest.name.split(".")[0] in detail


def test_directory_without_toc_is_unknown(tmp_path):
    (tmp_path / "notadump").mkdir()
    report = verify_artifact(tmp_path / "notadump")
    assert report.kind == "unknown"
    assert problems(report) == [("format", "unrecognised content: a directory without toc.dat "
                                           "(not a pg_dump directory-format dump)")]


# -- not a dump at all -------------------------------------------------------------------

def test_empty_file(tmp_path):
    path = tmp_path / "trixtech.dump"
    path.touch()
    report = verify_artifact(path)
    assert report.kind == "empty"
    assert problems(report) == [("not_empty", "file is empty (0 bytes)")]
    assert report.sha256 == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("content", [os.urandom(5000), b"hello, this is not a backup\n" * 10])
def test_non_dump_is_unknown(tmp_path, content):
    path = tmp_path / "trixtech.dump"
    path.write_bytes(b"\x00" + content)
    report = verify_artifact(path)
    assert report.kind == "unknown"
    [(check, detail)] = problems(report)
    assert check == "format"
    assert detail.startswith("unrecognised content: not a pg_dump archive")
    assert report.sha256 == sha256_of(path)


def test_content_decides_the_reader_and_must_agree_with_the_name(dumps, tmp_path):
    """A custom dump renamed .sql.gz is read as a custom dump, and the name is a problem:
    a restore that trusts the name would feed it to psql."""
    path = tmp_path / "trixtech.sql.gz"
    shutil.copy(dumps["custom"], path)
    report = verify_artifact(path)
    assert report.kind == "pg_custom"
    assert problems(report) == [("format", "content is a custom-format pg_dump archive, but the name says "
                                           "gzip-compressed plain SQL: a restore that trusts the name would fail")]
    assert {r.check for r in report.results if r.ok} >= {"custom_dump", "pg_restore_list"}
    renamed = Path(shutil.copy(dumps["plain_gz"], tmp_path / "trixtech.dump"))
    report = verify_artifact(renamed)
    assert report.kind == "sql_gzip" and [c for c, _ in problems(report)] == ["format"]


def test_configured_format_must_match(dumps, tmp_path):
    path = Path(shutil.copy(dumps["plain_gz"], tmp_path / "nightly.bin"))
    assert verify_artifact(path, configured_format="plain").ok
    [(check, detail)] = problems(verify_artifact(path, configured_format="custom"))
    assert (check, detail) == ("format", "content is gzip-compressed plain SQL, but the source is configured as 'custom'")


# -- plain SQL dumps -----------------------------------------------------------------------

def test_cut_gzip(dumps, tmp_path):
    src = dumps["plain_gz"]
    path = cut(src, tmp_path / "cut.sql.gz", int(src.stat().st_size * 0.6))
    report = verify_artifact(path)
    assert report.kind == "sql_gzip"
    assert problems(report) == [("gzip", "gzip stream truncated (it ends inside member 1)")]
    assert report.sha256 == sha256_of(path)


def test_gzip_crc_mismatch(dumps, tmp_path):
    data = bytearray(dumps["plain_gz"].read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    path = tmp_path / "crc.sql.gz"
    path.write_bytes(data)
    [(check, detail)] = problems(verify_artifact(path))
    assert check == "gzip"
    assert detail.startswith("gzip stream corrupt: ") and "checksum" in detail.lower()


def test_valid_gzip_of_sql_that_stops_early(dumps, tmp_path):
    sql = dumps["plain"].read_bytes()
    path = tmp_path / "early.sql.gz"
    path.write_bytes(gzip.compress(sql[: int(len(sql) * 0.7)]))
    [(check, detail)] = problems(verify_artifact(path))
    assert check == "sql_dump" and detail.startswith("the SQL ends inside")


def test_sql_appended_after_completion_line(dumps, tmp_path):
    path = tmp_path / "appended.sql"
    path.write_bytes(dumps["plain"].read_bytes() + b"\nDROP TABLE bookings;\n")
    [(check, detail)] = problems(verify_artifact(path))
    assert check == "sql_dump" and detail.startswith("content after the end of the dump at line ")
    assert detail.endswith("'DROP TABLE bookings;\\n'")


def test_truncated_plain_sql(dumps, tmp_path):
    src = dumps["plain"]
    path = cut(src, tmp_path / "cut.sql", src.stat().st_size - 200)
    [(check, detail)] = problems(verify_artifact(path))
    assert check == "sql_dump" and detail.startswith("the SQL ends inside the statement that starts at line ")


# -- file-set archives -------------------------------------------------------------------

def test_unsafe_tar_members(tmp_path):
    path = make_tar(tmp_path / "files.tar.gz", [
        *SAFE_MEMBERS,
        member("../etc/passwd"),
        member("/etc/shadow"),
        member("opt/../../x"),
        member("opt/trixtech/evil", type=tarfile.SYMTYPE, link="../../../etc"),
        member("opt/abs", type=tarfile.SYMTYPE, link="/etc/passwd"),
        member("opt/hard", type=tarfile.LNKTYPE, link="../outside"),
        member("opt/dev", type=tarfile.CHRTYPE),
    ])
    report = verify_artifact(path)
    assert report.kind == "tar_gzip"
    assert problems(report) == [
        ("tar_safety", "unsafe member '../etc/passwd': parent reference"),
        ("tar_safety", "unsafe member '/etc/shadow': absolute path"),
        ("tar_safety", "unsafe member 'opt/../../x': parent reference"),
        ("tar_safety",
         "unsafe member 'opt/trixtech/evil': symbolic link to '../../../etc' climbs above the root of the archive"),
        ("tar_safety", "unsafe member 'opt/abs': symbolic link to the absolute path '/etc/passwd'"),
        ("tar_safety", "unsafe member 'opt/hard': hard link to '../outside': parent reference"),
        ("tar_safety", "unsafe member 'opt/dev': device or fifo file"),
    ]


def test_tar_cut_at_a_member_boundary(tmp_path):
    """tarfile alone reads this as a complete archive; the missing end marker gives it away."""
    whole = make_tar(tmp_path / "whole.tar", SAFE_MEMBERS, gz=False)
    with tarfile.open(whole) as tf:
        boundary = tf.getmembers()[-1].offset  # the last member's header starts here
    path = cut(whole, tmp_path / "cut.tar", boundary)
    [(check, detail)] = problems(verify_artifact(path))
    assert check == "tar_read"
    assert detail == "tar archive truncated after member 'opt/trixtech/current' (no end-of-archive marker)"


def test_cut_tar_gz(tmp_path):
    whole = make_tar(tmp_path / "whole.tar.gz", [*SAFE_MEMBERS, member("big.bin", os.urandom(200_000))])
    path = cut(whole, tmp_path / "cut.tar.gz", whole.stat().st_size // 2)
    assert problems(verify_artifact(path)) == [("gzip", "gzip stream truncated")]


def test_tar_gz_crc_mismatch(tmp_path):
    """tarfile's own r|gz would accept this: it never checks the gzip trailer."""
    path = make_tar(tmp_path / "files.tar.gz", SAFE_MEMBERS)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF
    path.write_bytes(data)
    [(check, detail)] = problems(verify_artifact(path))
    assert check == "gzip" and detail.startswith("gzip stream corrupt: CRC check failed")


# -- checksums ---------------------------------------------------------------------------

def test_checksum_mismatch_vs_sidecar(dumps, tmp_path):
    path = Path(shutil.copy(dumps["custom"], tmp_path / "trixtech.dump"))
    wrong = hashlib.sha256(b"something else").hexdigest()
    (tmp_path / "trixtech.dump.sha256").write_text(f"{wrong}  trixtech.dump\n")
    report = verify_artifact(path)
    assert problems(report) == [("sha256", f"mismatch: file has {sha256_of(path)}, "
                                           f"sidecar trixtech.dump.sha256 says {wrong}")]
    assert verify_artifact(path, use_sidecar=False).ok


def test_matching_sidecar_and_expected_digest(dumps, tmp_path):
    path = Path(shutil.copy(dumps["plain_gz"], tmp_path / "trixtech.sql.gz"))
    digest = sha256_of(path)
    (tmp_path / "trixtech.sql.gz.sha256").write_text(f"{digest}  trixtech.sql.gz\n")
    results = {r.check: r for r in verify_artifact(path).results}
    assert results["sha256"].ok and results["sha256"].detail == "matches sidecar trixtech.sql.gz.sha256"
    assert verify_artifact(path, expected_sha256=digest.upper()).ok
    [(check, detail)] = problems(verify_artifact(path, expected_sha256="0" * 64))
    assert check == "sha256" and "expected digest says 000" in detail


def test_malformed_sidecar(dumps, tmp_path):
    path = Path(shutil.copy(dumps["custom"], tmp_path / "trixtech.dump"))
    (tmp_path / "trixtech.dump.sha256").write_text("not-a-digest  trixtech.dump\n")
    [(check, detail)] = problems(verify_artifact(path))
    assert check == "sha256" and detail.startswith("malformed sidecar: ") and "not a SHA-256 sidecar" in detail


def test_missing_path(tmp_path):
    report = verify_artifact(tmp_path / "gone.dump", label="gone")
    assert report.artifact == "gone"
    assert problems(report) == [("exists", "No such file or directory")]


def test_fifo_is_refused_not_read_forever(tmp_path):
    os.mkfifo(tmp_path / "pipe.dump")
    assert problems(verify_artifact(tmp_path / "pipe.dump")) == [("regular_file", "not a regular file or directory")]


# -- one read ------------------------------------------------------------------------------

class CountingFile(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.served = 0

    def readinto(self, buffer) -> int:
        n = super().readinto(buffer)
        self.served += n
        return n


def test_tap_reads_each_byte_once_and_hashes_all(dumps):
    data = dumps["plain_gz"].read_bytes()
    raw = CountingFile(data)
    tap = Tap(raw, chunk=4096)
    forwarded = []
    tap.peek(100)
    tap.add_sink(lambda view: forwarded.append(bytes(view)))
    head = gzip.GzipFile(fileobj=tap).read(10_000)  # a consumer that stops early
    tap.drain()
    assert head.startswith(b"--")
    assert raw.served == len(data)
    assert b"".join(forwarded) == data
    assert tap.hexdigest() == hashlib.sha256(data).hexdigest()
