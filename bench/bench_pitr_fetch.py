"""Benchmark: what the PITR fetcher's checks and socket cost per segment, against copying the file unchecked.

A point-in-time restore hands every segment to PostgreSQL through
``python -m backupkit.wal.restore_command --socket`` and the restore's
:class:`~backupkit.wal.fetcher.WalFetcher` (read, pages and records checked, staged, sent). The
baseline is the same restore_command with ``--archive DIR`` (what restores did before: one
process copies the file, no page or record check). Both run as PostgreSQL runs them, one
process per segment, alternated segment by segment for --rounds rounds; also, in this
process, ``WalFetcher.prepare`` (the checks and the staged copy) against ``shutil.copyfile``.

Uses the archive of bench_wal_verify.py (made once in bench/out/, 16 MB segments). No goal is
set in the issue; the figures say what the checks cost against the process start that both
pay (recovery replays each segment after it is handed over, which is not measured here).

    .venv/bin/python bench/bench_pitr_fetch.py              # 0.25 GB of segments, 3 rounds
    .venv/bin/python bench/bench_pitr_fetch.py --quick      # 0.1 GB, 1 round
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(0, str(REPO / "bench"))

from bench_wal_verify import make_archive  # noqa: E402
from backupkit.wal.archive import LocalArchive  # noqa: E402
from backupkit.wal.fetcher import WalFetcher  # noqa: E402


def restore_command(where: list[str], name: str, segment_size: int, cwd: Path) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "backupkit.wal.restore_command", *where, "--segment-size",
                    str(segment_size), name, "pg_wal/RECOVERYXLOG"], cwd=cwd, check=True)
    return time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=0.25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.size_gb, args.rounds = 0.1, 1
    archive = make_archive(args.size_gb, 16, "1GB")
    segments = sorted(f.name for f in archive.iterdir() if len(f.name) == 24)
    head = (archive / segments[0]).read_bytes()[:40]
    magic = struct.unpack_from("<H", head)[0]
    sysid, segment_size = struct.unpack_from("<QI", head, 24)
    work = Path(tempfile.mkdtemp(prefix="bench-pitr-"))
    (work / "pg_wal").mkdir()
    times = {"--archive (copy)": [], "--socket (fetcher)": [], "prepare": [], "copyfile": []}
    try:
        with WalFetcher(LocalArchive(archive), segment_size=segment_size, sysid=sysid, magic=magic,
                        staging=work / "staging") as fetcher:
            for _ in range(args.rounds):
                for name in segments:
                    times["--archive (copy)"].append(restore_command(["--archive", str(archive)], name,
                                                                     segment_size, work))
                    times["--socket (fetcher)"].append(restore_command(["--socket", str(fetcher.socket_path)],
                                                                       name, segment_size, work))
                    t0 = time.monotonic()
                    path, verdict = fetcher.prepare(name)
                    times["prepare"].append(time.monotonic() - t0)
                    assert path is not None, verdict
                    path.unlink()
                    t0 = time.monotonic()
                    shutil.copyfile(archive / name, work / "copy")
                    times["copyfile"].append(time.monotonic() - t0)
            assert not fetcher.problems, fetcher.problems
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = len(segments)
    print(f"{n} segments of {segment_size >> 20} MB, {args.rounds} round(s), alternated per segment")
    per = {k: sum(v) / len(v) for k, v in times.items()}
    for k, v in per.items():
        print(f"  {k:20s} {v * 1000:8.1f} ms per segment")
    print(f"restore_command --socket / --archive = {per['--socket (fetcher)'] / per['--archive (copy)']:.2f}x; "
          f"checks in process: prepare / copyfile = {per['prepare'] / per['copyfile']:.1f}x "
          f"({segment_size / per['prepare'] / 1e6:.0f} MB/s checked); load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
