"""Archives for the archive tests: hostile ones built member by member with tarfile, ordinary
ones by GNU tar; and the two verdicts (verify, restore pre-check) side by side."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

from backupkit.restore.files import DamagedArchive, ExtractRefused, LimitExceeded, UnsafeArchive, safe_extract
from backupkit.verify import verify_artifact

BIG = 1 << 40
KINDS = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
         "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}


def spec(name: str, kind: str = "file", target: str = "", data: bytes | None = None, mode: int = 0o644) -> tuple:
    """One member: (name, kind, link target, content, mode)."""
    return (name, kind, target, name.encode() if data is None and kind == "file" else (data or b""), mode)


def write_tar(path: Path, members: list[tuple], *, gz: bool = False, fmt: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w", format=fmt) as tf:
        for name, kind, target, data, mode in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode, info.mtime = KINDS[kind], target, mode, 1_700_000_000
            info.size = len(data) if kind == "file" else 0
            tf.addfile(info, io.BytesIO(data) if kind == "file" else None)
    return path


def snapshot(root: Path) -> dict:
    """Everything under ``root`` (type and content), without following links."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def extract(archive: Path, target: Path, **kw):
    kw.setdefault("max_total_bytes", BIG)
    kw.setdefault("max_files", 10_000_000)
    return safe_extract(archive, target, **kw)


def verdicts(archive: Path, target: Path) -> tuple[bool, bool, object]:
    """(verify ok, restore pre-check ok, the restore's result or the refusal)."""
    report = verify_artifact(archive, use_sidecar=False)
    try:
        outcome = extract(archive, target)
        precheck_ok = True
    except (DamagedArchive, LimitExceeded, UnsafeArchive) as exc:  # the archive check refused it
        outcome, precheck_ok = exc, False
    except ExtractRefused as exc:  # after the pre-check (the target)
        outcome, precheck_ok = exc, True
    return report.ok, precheck_ok, outcome


def links_outside(root: Path) -> list[str]:
    """Links under ``root`` that the kernel's resolution would take outside it."""
    real_root = os.path.realpath(root)
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                real = os.path.realpath(p)
                if not (real == real_root or real.startswith(real_root + os.sep)):
                    bad.append(f"{os.path.relpath(p, root)} -> {os.readlink(p)} ({real})")
    return bad
