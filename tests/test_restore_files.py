"""Safe extraction of file-set archives: real archives made by GNU tar and sha256sum where the
archive is ordinary, by tarfile where it has to be hostile."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from _archive_helpers import snapshot
from backupkit.restore.files import (
    DamagedArchive,
    ExistingFiles,
    LimitExceeded,
    TargetNotAllowed,
    UnsafeArchive,
    UnsafeTarget,
    allowed_target,
    safe_extract,
)

BIG = 1 << 30
NOW = datetime(2025, 3, 3, 9, 0, tzinfo=timezone.utc)


def make_tree(root: Path) -> None:
    (root / "opt/trixtech/config").mkdir(parents=True)
    (root / "opt/trixtech/uploads/2025").mkdir(parents=True)
    (root / "opt/trixtech/config/app.yml").write_text("db: trixtech\nreplicas: 3\n")
    (root / "opt/trixtech/config/.env").write_text("MODE=prod\n")
    (root / "opt/trixtech/uploads/2025/photo.bin").write_bytes(os.urandom(300_000))
    (root / "opt/trixtech/uploads/2025/empty").write_bytes(b"")
    (root / "opt/trixtech/current").symlink_to("config")


def gnu_tar(src: Path, out: Path, *, sums: bool, tamper: str | None = None) -> Path:
    """A .tar.gz of ``src`` by GNU tar, with a SHA256SUMS by sha256sum when ``sums``."""
    if sums:
        files = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file() and not p.is_symlink())
        listing = subprocess.run(["sha256sum", *files], cwd=src, check=True, capture_output=True, text=True).stdout
        (src / "SHA256SUMS").write_text(listing)
    if tamper:
        with open(src / tamper, "ab") as f:
            f.write(b"tampered")
    subprocess.run(["tar", "-czf", str(out), "-C", str(src), "."], check=True)
    return out


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    make_tree(src)
    return src


def extract(archive, target, **kw):
    kw.setdefault("max_total_bytes", BIG)
    kw.setdefault("max_files", 10_000)
    kw.setdefault("now", NOW)
    return safe_extract(archive, target, **kw)


# -- ordinary archives ------------------------------------------------------------------------
def test_whole_archive_extracted_and_verified_against_sha256sums(tree, tmp_path):
    archive = gnu_tar(tree, tmp_path / "files.tar.gz", sums=True)
    target = tmp_path / "scratch"
    result = extract(archive, target)
    assert snapshot(target) == snapshot(tree)
    listed = [line.split("  ", 1)[1] for line in (tree / "SHA256SUMS").read_text().splitlines()]
    assert sorted(result.verified) == sorted(listed) and len(listed) == 4
    assert result.checksum_manifest in ("./SHA256SUMS", "SHA256SUMS")
    assert result.ok and not result.mismatched and not result.missing and not result.unlisted
    assert result.links == 1 and result.bytes_written == sum(
        p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    assert all(c.ok for c in result.checks("files_20250303_020000.tar.gz"))
    assert (target / "opt/trixtech/config/app.yml").stat().st_mode & 0o777 == (
        tree / "opt/trixtech/config/app.yml").stat().st_mode & 0o777


def test_a_modified_member_is_caught_and_not_installed(tree, tmp_path):
    archive = gnu_tar(tree, tmp_path / "files.tar.gz", sums=True, tamper="opt/trixtech/config/app.yml")
    target = tmp_path / "scratch"
    result = extract(archive, target)
    assert [m.path for m in result.mismatched] == ["opt/trixtech/config/app.yml"]
    assert not (target / "opt/trixtech/config/app.yml").exists()
    assert (target / "opt/trixtech/config/.env").read_text() == "MODE=prod\n"
    assert not result.ok
    failed = [c for c in result.checks("files.tar.gz") if not c.ok]
    assert len(failed) == 1 and "opt/trixtech/config/app.yml" in failed[0].detail
    assert not [p for p in target.rglob("*") if ".restore-" in p.name]  # no temporary left behind


def test_without_a_checksum_manifest_files_are_counted(tree, tmp_path):
    archive = gnu_tar(tree, tmp_path / "files.tar.gz", sums=False)
    result = extract(archive, tmp_path / "scratch")
    assert result.checksum_manifest is None and result.verified == []
    assert len(result.written) == 4
    (check,) = [c for c in result.checks("a") if c.check == "checksums"]
    assert check.ok and "4 files counted" in check.detail


def test_files_listed_but_absent_are_reported(tmp_path):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "a.txt", b"a")
        digest = hashlib.sha256(b"a").hexdigest()
        add_file(tar, "SHA256SUMS", f"{digest}  a.txt\n{'0' * 64} *gone.txt\n".encode())
    result = extract(archive, tmp_path / "t")
    assert result.verified == ["a.txt"] and result.missing == ["gone.txt"] and not result.ok


def test_only_the_requested_paths(tree, tmp_path):
    archive = gnu_tar(tree, tmp_path / "files.tar.gz", sums=True)
    target = tmp_path / "t"
    result = extract(archive, target, members=["opt/trixtech/config/"])
    assert sorted(result.written) == ["opt/trixtech/config/.env", "opt/trixtech/config/app.yml"]
    assert not (target / "opt/trixtech/uploads").exists() and not (target / "SHA256SUMS").exists()
    assert sorted(result.verified) == sorted(result.written) and result.ok  # uploads are out of scope
    with pytest.raises(ValueError, match="not in the archive: 'opt/trixtech/nothing'"):
        extract(archive, tmp_path / "t2", members=["opt/trixtech/nothing"])


# -- hostile archives -------------------------------------------------------------------------
def add_file(tar, name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_special(tar, name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    tar.addfile(info)


HOSTILE = {
    "dotdot": lambda t: add_file(t, "../evil.txt"),
    "deep-dotdot": lambda t: add_file(t, "opt/../../evil.txt"),
    "absolute": lambda t: add_file(t, "/tmp/backupkit-evil.txt"),
    "symlink-out": lambda t: add_special(t, "opt/link", tarfile.SYMTYPE, "../../.."),
    "symlink-abs": lambda t: add_special(t, "opt/link", tarfile.SYMTYPE, "/etc"),
    "hardlink-out": lambda t: add_special(t, "opt/hard", tarfile.LNKTYPE, "../outside.txt"),
    "hardlink-absent": lambda t: add_special(t, "opt/hard", tarfile.LNKTYPE, "not-there.txt"),
    "device": lambda t: add_special(t, "opt/dev", tarfile.CHRTYPE),
    "fifo": lambda t: add_special(t, "opt/fifo", tarfile.FIFOTYPE),
    "through-own-symlink": lambda t: (add_special(t, "opt/l", tarfile.SYMTYPE, "."),
                                      add_file(t, "opt/l/x.txt")),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_member_refuses_the_whole_archive_and_writes_nothing(kind, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    archive = tmp_path / "hostile.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "opt/good.txt", b"good")  # a harmless member first: it must not be written either
        HOSTILE[kind](tar)
        add_file(tar, "opt/later.txt", b"later")
    before = snapshot(tmp_path)
    with pytest.raises(UnsafeArchive) as err:
        extract(archive, work / "target", existing="overwrite")
    assert snapshot(tmp_path) == before  # nothing anywhere: no target, no file outside
    assert not Path("/tmp/backupkit-evil.txt").exists()
    assert str(archive) in str(err.value)
    bad = [name for name, _ in err.value.problems]
    assert "opt/good.txt" not in bad and "opt/later.txt" not in bad and bad


def test_existing_symlink_out_of_the_target_is_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "uploads").symlink_to(outside)
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "uploads/x.txt", b"payload")
    with pytest.raises(UnsafeTarget, match="uploads"):
        extract(archive, target, existing="overwrite")
    assert list(outside.iterdir()) == []


def test_existing_symlink_inside_the_target_is_used(tmp_path):
    target = tmp_path / "target"
    (target / "releases/v2").mkdir(parents=True)
    (target / "current").symlink_to("releases/v2")
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "current/x.txt", b"payload")
    extract(archive, target)
    assert (target / "releases/v2/x.txt").read_bytes() == b"payload"


def test_overwriting_a_symlink_replaces_the_link_not_what_it_points_to(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("do not touch")
    target = tmp_path / "target"
    target.mkdir()
    (target / "app.yml").symlink_to(secret)
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "app.yml", b"new")
    result = extract(archive, target, existing="overwrite")
    assert secret.read_text() == "do not touch"
    assert not (target / "app.yml").is_symlink() and (target / "app.yml").read_bytes() == b"new"
    ((rel, kept),) = result.replaced
    assert rel == "app.yml" and kept.is_symlink() and os.readlink(kept) == str(secret)


# -- existing files -----------------------------------------------------------------------------
@pytest.fixture
def restored_over(tree, tmp_path):
    """An archive of ``tree`` and a target that already has changed and extra files."""
    archive = gnu_tar(tree, tmp_path / "files.tar.gz", sums=True)
    target = tmp_path / "live"
    (target / "opt/trixtech/config").mkdir(parents=True)
    (target / "opt/trixtech/config/app.yml").write_text("edited since the backup\n")
    (target / "opt/trixtech/config/local.yml").write_text("not in the backup\n")
    return archive, target


def test_skip_leaves_existing_files_alone(restored_over, tree):
    archive, target = restored_over
    result = extract(archive, target, existing="skip")
    assert result.skipped == ["opt/trixtech/config/app.yml"]
    assert (target / "opt/trixtech/config/app.yml").read_text() == "edited since the backup\n"
    assert (target / "opt/trixtech/config/local.yml").read_text() == "not in the backup\n"
    assert (target / "opt/trixtech/config/.env").read_text() == (tree / "opt/trixtech/config/.env").read_text()
    assert result.replaced == [] and result.backup_dir is None


def test_overwrite_keeps_a_copy_of_each_replaced_file(restored_over, tree):
    archive, target = restored_over
    result = extract(archive, target, existing="overwrite")
    assert (target / "opt/trixtech/config/app.yml").read_text() == (tree / "opt/trixtech/config/app.yml").read_text()
    ((rel, kept),) = result.replaced
    assert rel == "opt/trixtech/config/app.yml"
    assert kept == target / ".restore-backup-20250303T090000Z" / rel == result.backup_dir / rel
    assert kept.read_text() == "edited since the backup\n"
    assert (target / "opt/trixtech/config/local.yml").read_text() == "not in the backup\n"


def test_overwrite_into_a_given_backup_directory(restored_over, tmp_path):
    archive, target = restored_over
    keep = tmp_path / "kept"
    result = extract(archive, target, existing="overwrite", backup_dir=keep)
    assert (keep / "opt/trixtech/config/app.yml").read_text() == "edited since the backup\n"
    assert result.backup_dir == keep and not list(target.glob(".restore-backup-*"))


def test_fail_refuses_before_writing_anything(restored_over):
    archive, target = restored_over
    before = snapshot(target)
    with pytest.raises(ExistingFiles, match="opt/trixtech/config/app.yml"):
        extract(archive, target, existing="fail")
    assert snapshot(target) == before


def test_a_directory_where_the_archive_has_a_file_is_a_conflict(tmp_path):
    target = tmp_path / "t"
    (target / "a.txt").mkdir(parents=True)
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "a.txt")
    with pytest.raises(ExistingFiles, match="existing directory"):
        extract(archive, target, existing="overwrite")


# -- limits -------------------------------------------------------------------------------------
def test_size_and_count_limits_refuse_before_writing(tree, tmp_path):
    archive = gnu_tar(tree, tmp_path / "files.tar.gz", sums=False)
    total = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    target = tmp_path / "t"
    with pytest.raises(LimitExceeded, match=f"{total} bytes"):
        extract(archive, target, max_total_bytes=total - 1)
    with pytest.raises(LimitExceeded, match="members"):
        extract(archive, target, max_files=3)
    assert not target.exists()
    assert len(extract(archive, target, max_total_bytes=total).written) == 4


def test_hard_links_are_written_as_copies_and_counted(tmp_path):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "a.txt", b"12345")
        add_special(tar, "b.txt", tarfile.LNKTYPE, "a.txt")
    with pytest.raises(LimitExceeded):
        extract(archive, tmp_path / "t", max_total_bytes=9)
    result = extract(archive, tmp_path / "t", max_total_bytes=10)
    assert (tmp_path / "t/b.txt").read_bytes() == b"12345"
    assert os.stat(tmp_path / "t/a.txt").st_ino != os.stat(tmp_path / "t/b.txt").st_ino
    assert result.bytes_written == 10


# -- allowed targets ------------------------------------------------------------------------------
def test_allowed_target(tmp_path):
    root = tmp_path / "restore"
    (root / "app").mkdir(parents=True)
    (root / "sneaky").symlink_to(tmp_path)
    assert allowed_target(root / "app", [root]) == (root / "app").resolve()
    assert allowed_target(root / "new/dir", [tmp_path / "other", root]) == (root / "new/dir").resolve()
    assert allowed_target(root, [root]) == root.resolve()
    for bad, words in [(tmp_path / "elsewhere", "not under an allowed restore root"),
                       (root / "sneaky/x", "resolves to"),
                       (root / "../restore-evil", "not under"),
                       ("relative/path", "absolute")]:
        with pytest.raises(TargetNotAllowed, match=words):
            allowed_target(bad, [root])
    with pytest.raises(TargetNotAllowed, match="none configured"):
        allowed_target(root, [])
    with pytest.raises(TargetNotAllowed):
        allowed_target(Path(str(root) + "-sibling"), [root])  # a prefix of the string is not a parent


def test_truncated_or_foreign_archive_is_refused_before_writing(tree, tmp_path):
    archive = gnu_tar(tree, tmp_path / "files.tar.gz", sums=False)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    not_tar = tmp_path / "notes.txt"
    not_tar.write_text("hello\n")
    for bad in (cut, not_tar):
        with pytest.raises(DamagedArchive, match=bad.name):
            extract(bad, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_tar_cut_at_a_member_boundary_is_refused(tmp_path):
    """Without compression, a tar cut exactly between members reads as a shorter archive:
    only the missing end-of-archive marker tells."""
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "a.txt", b"a" * 512)
        add_file(tar, "b.txt", b"b" * 512)
    data = archive.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:1024])  # header + data of a.txt, nothing after
    with pytest.raises(DamagedArchive, match="truncated"):
        extract(cut, tmp_path / "t")
    assert not (tmp_path / "t").exists()
