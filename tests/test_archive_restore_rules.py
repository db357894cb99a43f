"""The archive rules beyond links: warnings (set-uid, duplicate names), agreement with GNU tar
on ordinary archives of every format, checksums read after the files they vouch for, and a
restore that cannot be led outside its target even by a race."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
from _archive_helpers import extract, snapshot, spec, write_tar

from backupkit.checks.tarstream import TarReader
from backupkit.cli import main
from backupkit.restore.files import ExtractRefused
from backupkit.restore.rootfs import Escape, NotADirectory, Root
from backupkit.verify import verify_artifact


def warnings(path: Path) -> list[str]:
    return [r.detail for r in verify_artifact(path, use_sidecar=False).results if r.detail.startswith("WARNING:")]


# -- warnings: ok, but said ----------------------------------------------------------------
def test_setuid_and_setgid_members_are_warned_and_restored_without_the_bits(tmp_path):
    archive = write_tar(tmp_path / "a.tar", [spec("bin/tool", mode=0o4755), spec("bin/grp", mode=0o2750),
                                            spec("bin/plain", mode=0o755), spec("shared/", "dir", mode=0o2775)])
    report = verify_artifact(archive, use_sidecar=False)
    assert report.ok
    assert warnings(archive) == [
        "WARNING: member 'bin/tool': set-user-ID (mode 4755); restored without it",
        "WARNING: member 'bin/grp': set-group-ID (mode 2750); restored without it"]
    result = extract(archive, tmp_path / "t")
    assert (tmp_path / "t/bin/tool").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "t/bin/grp").stat().st_mode & 0o7777 == 0o750
    assert [c.detail for c in result.checks("a.tar") if c.check == "tar_members"] == warnings(archive)


def test_duplicate_names_are_warned_and_the_later_member_wins(tmp_path):
    archive = write_tar(tmp_path / "a.tar", [spec("etc/", "dir"), spec("etc/app.yml", data=b"old"), spec("etc/", "dir"),
                                            spec("etc/app.yml", data=b"new")])
    assert verify_artifact(archive, use_sidecar=False).ok
    assert warnings(archive) == ["WARNING: member 'etc/app.yml': duplicate name: replaces the earlier file of the "
                                 "same name"]  # the repeated directory replaces nothing
    result = extract(archive, tmp_path / "t")
    assert (tmp_path / "t/etc/app.yml").read_bytes() == b"new"
    assert result.written == ["etc/app.yml"] and len(result.warnings) == 1


def test_backupctl_verify_says_the_warnings(tmp_path, capsys):
    archive = write_tar(tmp_path / "a.tar", [spec("bin/tool", mode=0o4755)])
    assert main(["verify", str(archive)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{archive}: tar_members: WARNING: member 'bin/tool': set-user-ID (mode 4755); restored without it"
    assert out[1].startswith(f"{archive}: ok (tar, ")
    assert main(["verify", "--json", str(archive)]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["ok"] and [w["check"] for w in report["warnings"]] == ["tar_members"]


def test_warnings_are_capped_and_counted(tmp_path):
    archive = write_tar(tmp_path / "a.tar", [spec(f"s{i}", mode=0o4755) for i in range(25)])
    shown = warnings(archive)
    assert len(shown) == 21 and shown[-1] == "WARNING: ... and 5 more such members"


# -- agreement with GNU tar on ordinary archives ------------------------------------------------
@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree") / "src"
    (root / "opt/trixtech/config").mkdir(parents=True)
    (root / "opt/trixtech/releases/v2/assets").mkdir(parents=True)
    (root / "opt/trixtech/config/app.yml").write_text("db: trixtech\n")
    (root / "opt/trixtech/releases/v2/assets" / ("a-rather-long-asset-name-" * 3 + ".css")).write_text("x{}\n")
    (root / "opt/trixtech/releases/v2/ünïcode.txt").write_bytes(os.urandom(20_000))
    (root / "opt/trixtech/current").symlink_to("releases/v2")
    (root / "opt/trixtech/shared").symlink_to("current/assets")
    os.link(root / "opt/trixtech/config/app.yml", root / "opt/trixtech/config/app.hard")
    (root / "opt/trixtech/empty").mkdir()
    return root


@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "posix", "ustar"])
@pytest.mark.parametrize("gz", [False, True])
def test_gnu_tar_archives_of_every_format_read_and_extract_like_gnu_tar(fmt, gz, source_tree, tmp_path):
    archive = tmp_path / ("a.tar.gz" if gz else "a.tar")
    subprocess.run(["tar", f"--format={fmt}", "-czf" if gz else "-cf", str(archive), "-C", str(source_tree), "."],
                   check=True)
    listed = subprocess.run(["tar", "-tf", str(archive)], check=True, capture_output=True, text=True).stdout.split("\n")
    with open(archive, "rb") as f:
        ours = [m.name for m in TarReader(f, gzipped=gz)]
    assert [n.rstrip("/") for n in ours] == [n.rstrip("/") for n in listed if n]
    report = verify_artifact(archive, use_sidecar=False)
    assert report.ok, [p.detail for p in report.problems()]
    extract(archive, tmp_path / "ours")
    (tmp_path / "gnu").mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(tmp_path / "gnu")], check=True)
    assert snapshot(tmp_path / "ours") == snapshot(tmp_path / "gnu") == snapshot(source_tree)
    assert modes_and_times(tmp_path / "ours") == modes_and_times(tmp_path / "gnu")


def modes_and_times(root: Path) -> dict[str, tuple[int, int]]:
    """Below the root (the target directory's own mode and time are left alone)."""
    out = {}
    for p in root.rglob("*"):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mode & 0o7777, int(st.st_mtime))
    return out


# -- checksums -------------------------------------------------------------------------------------
def test_files_before_the_manifest_wait_for_it_and_are_checked(tmp_path):
    good, bad = b"good content", b"tampered content"
    sums = (f"{hashlib.sha256(good).hexdigest()}  a/good.txt\n"
            f"{hashlib.sha256(b'original').hexdigest()}  a/bad.txt\n").encode()
    archive = write_tar(tmp_path / "a.tar", [spec("a/good.txt", data=good), spec("a/bad.txt", data=bad),
                                            spec("SHA256SUMS", data=sums)])
    result = extract(archive, tmp_path / "t")
    assert result.verified == ["a/good.txt"] and [m.path for m in result.mismatched] == ["a/bad.txt"]
    assert (tmp_path / "t/a/good.txt").read_bytes() == good and not (tmp_path / "t/a/bad.txt").exists()
    assert not [p for p in (tmp_path / "t").rglob("*") if ".restore-" in p.name]


# -- confinement of the writer ---------------------------------------------------------------------
def test_walks_never_leave_the_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "in").mkdir(parents=True)
    outside.mkdir()
    (root / "abs-out").symlink_to(outside)
    (root / "rel-out").symlink_to("../outside")
    (root / "abs-in").symlink_to(root / "in")
    (root / "loop").symlink_to("loop")
    (root / "file").write_text("x")
    with Root(root) as r:
        for bad in (["abs-out", "x"], ["rel-out"], ["in", "..", ".."], ["loop"]):
            with pytest.raises(Escape):
                r.walk(bad, create=True)
        with pytest.raises(NotADirectory):
            r.walk(["file", "x"], create=True)
        fd = r.walk(["abs-in", "new", "deeper"], create=True)
        os.close(fd)
        assert r.walk(["missing", "x"], create=False) is None
    assert (root / "in/new/deeper").is_dir() and list(outside.iterdir()) == []


def test_a_directory_swapped_for_a_link_mid_restore_never_leads_outside(tmp_path):
    """Another process flips ``uploads`` between a directory and a link to ``outside`` while
    restores run: whatever each restore decides, nothing appears outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = write_tar(tmp_path / "a.tar", [spec(f"uploads/sub{i % 7}/f{i}", data=b"x" * 100) for i in range(300)])
    stop = threading.Event()

    def flip(target: Path) -> None:
        real, link, spare = target / "uploads", target / "uploads-link", target / "uploads-real"
        link.symlink_to(outside)
        while not stop.is_set():
            try:
                os.rename(real, spare)
                os.rename(link, real)  # uploads is now the link
                os.rename(real, link)
                os.rename(spare, real)  # and a directory again
            except OSError:  # the restore made a directory in the gap: flip on
                pass

    for attempt in range(6):
        target = tmp_path / f"t{attempt}"
        (target / "uploads").mkdir(parents=True)
        flipper = threading.Thread(target=flip, args=(target,))
        flipper.start()
        try:
            extract(archive, target, existing="overwrite")
        except ExtractRefused:  # a link seen in the target: refused or stopped, both fine
            pass
        finally:
            stop.set()
            flipper.join()
            stop.clear()
        assert list(outside.iterdir()) == [], attempt
