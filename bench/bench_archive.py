"""Benchmark: verifying file-set archives costs about what listing them with GNU tar costs,
and hostile archives cost little, in flat memory.

Makes (once; reused from bench/out/) three archives: an ordinary ``.tar.gz`` of
--size-gb of content (half random bytes, half text, in files of 64 KiB to 8 MiB, with
directories and links), one with --members empty files (the judge keeps a node per path),
and the two hostile ones of issue 9: 6 GiB of zeros after a valid tar (a gzip bomb) and a
256 MiB PAX header. Then, page cache warm, runs alternately for --rounds rounds:

- ordinary archive: ``gzip -dc`` (decompression alone), ``tar -tzf`` (the runbook's check)
  and ``backupctl verify``; reports verify / tar -tzf;
- hostile archives: ``backupctl verify`` against the previous reader (tarfile in stream
  mode, then the rest of the gzip stream, as before this change) in a child process;
- the many-member archive: ``backupctl verify`` peak RSS.

Peak RSS comes from wait4 (the largest process of each command's tree).
Goals: ordinary verify <= 1.5x tar -tzf; ordinary and hostile verify < 200 MB; hostile
archives refused in under 1 s; the many-member archive < 256 bytes per member above the
ordinary run (memory is bounded by ``max_members``, not flat: the link rule needs the tree).

    .venv/bin/python bench/bench_archive.py            # 1 GB, 1,000,000 members
    .venv/bin/python bench/bench_archive.py --quick    # 0.1 GB, 100,000 members
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
GB = 1_000_000_000
GOAL_RATIO, GOAL_RSS_MB, GOAL_HOSTILE_S, GOAL_BYTES_PER_MEMBER = 1.5, 200, 1.0, 256

# What verify did before: tarfile in stream mode over gzip, then the rest of the stream.
OLD_READER = """
import gzip, sys, tarfile
with open(sys.argv[1], "rb") as raw:
    gz = gzip.GzipFile(fileobj=raw)
    try:
        tf = tarfile.open(fileobj=gz, mode="r|")
        while tf.next() is not None:
            tf.members.clear()
        while gz.read(1 << 20):
            pass
    except Exception as exc:
        print(type(exc).__name__, exc)
"""


def _text_block(rng: random.Random, n: int) -> bytes:
    words = [b"trixtech", b"booking", b"config", b"upload", b"release", b"2025", b"user", b"\n"]
    return b" ".join(rng.choice(words) for _ in range(n // 6))[:n]


def make_ordinary(size_gb: float) -> Path:
    path = OUT / f"archive_{size_gb:g}gb.tar.gz"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    rng, total, i = random.Random(7), 0, 0
    started = time.monotonic()
    with gzip.open(path.with_suffix(".partial"), "wb", compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tf:
        while total < size_gb * GB:
            size = rng.choice([64 << 10, 512 << 10, 2 << 20, 8 << 20])
            data = rng.randbytes(size) if i % 2 else _text_block(rng, size)
            info = tarfile.TarInfo(f"opt/trixtech/uploads/{i // 100:04d}/file-{i:06d}.bin")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
            if i % 500 == 0:
                link = tarfile.TarInfo(f"opt/trixtech/current-{i}")
                link.type, link.linkname = tarfile.SYMTYPE, f"uploads/{i // 100:04d}"
                tf.addfile(link)
            total, i = total + len(data), i + 1
    path.with_suffix(".partial").rename(path)
    print(f"made {path.name}: {total / GB:.2f} GB content, {path.stat().st_size / GB:.2f} GB on disk, "
          f"{i} files, in {time.monotonic() - started:.0f}s")
    return path


def make_many(members: int) -> Path:
    path = OUT / f"archive_{members}_members.tar.gz"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    with gzip.open(path.with_suffix(".partial"), "wb", compresslevel=1) as gz:
        for i in range(members):
            gz.write(tarfile.TarInfo(f"srv/d{i // 1000:04d}/f{i:07d}").tobuf(tarfile.GNU_FORMAT))
        gz.write(bytes(10240))
    path.with_suffix(".partial").rename(path)
    return path


def make_hostile() -> dict[str, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    bomb, pax = OUT / "archive_bomb_6gib.tar.gz", OUT / "archive_pax_256mib.tar.gz"
    small = io.BytesIO()
    with tarfile.open(fileobj=small, mode="w") as tf:
        info = tarfile.TarInfo("opt/app/config.yml")
        info.size = 13
        tf.addfile(info, io.BytesIO(b"db: trixtech\n"))
    if not bomb.exists():
        zeros = gzip.compress(bytes(64 << 20), compresslevel=9, mtime=0)
        with open(bomb, "wb") as f:
            f.write(gzip.compress(small.getvalue(), mtime=0))
            for _ in range(96):
                f.write(zeros)
    if not pax.exists():
        size = 256 << 20
        head = tarfile.TarInfo("././@PaxHeader")
        head.type, head.size = tarfile.XHDTYPE, size
        with gzip.open(pax, "wb", compresslevel=1) as gz:
            gz.write(head.tobuf(tarfile.GNU_FORMAT))
            record = f"{size} comment=".encode()
            gz.write(record)
            left, chunk = size - len(record) - 1, b"x" * (1 << 20)
            while left > 0:
                gz.write(chunk[:left])
                left -= min(left, len(chunk))
            gz.write(b"\n" + bytes(-size % 512) + small.getvalue())
    return {"gzip bomb (6 GiB of zeros)": bomb, "256 MiB PAX header": pax}


def timed(cmd: list[str], stdout=subprocess.DEVNULL) -> tuple[float, float]:
    """(wall seconds, peak RSS MB of the largest process of the command's tree)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return time.monotonic() - started, usage.ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="0.1 GB, 100,000 members")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.size_gb, args.members = 0.1, 100_000
    if args.make_only:
        make_ordinary(args.size_gb), make_many(args.members), make_hostile()
        return 0
    # Made in a child, so this process stays small: a forked child's peak RSS starts at ours.
    subprocess.run([sys.executable, __file__, "--make-only", "--size-gb", str(args.size_gb),
                    "--members", str(args.members)], check=True)
    ordinary, many, hostile = make_ordinary(args.size_gb), make_many(args.members), make_hostile()
    print(f"fork floor: peak RSS of `true` {timed(['true'])[1]:.1f} MB")
    backupctl = shutil.which("backupctl", path=str(Path(sys.executable).parent)) or "backupctl"
    for path in (ordinary, many, *hostile.values()):
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    commands = {"gzip -dc": ["gzip", "-dc", str(ordinary)], "tar -tzf": ["tar", "-tzf", str(ordinary)],
                "verify": [backupctl, "verify", str(ordinary)]}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, cmd in commands.items():
            runs[name].append(timed(cmd))
    best = {name: min(w for w, _ in r) for name, r in runs.items()}
    peak = {name: max(m for _, m in r) for name, r in runs.items()}
    ratio = best["verify"] / best["tar -tzf"]
    print(f"ordinary archive: {ordinary.name}, {ordinary.stat().st_size / GB:.3f} GB, {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds")
    for name, r in runs.items():
        print(f"  {name:<9} wall s: {' '.join(f'{w:6.2f}' for w, _ in r)}   best {best[name]:6.2f}"
              f"   peak RSS {peak[name]:6.1f} MB")
    print(f"verify / tar -tzf = {ratio:.3f}  (goal <= {GOAL_RATIO})")
    figures = {"ordinary": {"runs": runs, "ratio": ratio}, "hostile": {}}
    worst_rss, worst_hostile = peak["verify"], 0.0
    for label, path in hostile.items():
        new = [timed([backupctl, "verify", str(path)]) for _ in range(args.rounds)]
        old = timed([sys.executable, "-c", OLD_READER, str(path)])
        wall, rss = min(w for w, _ in new), max(m for _, m in new)
        worst_rss, worst_hostile = max(worst_rss, rss), max(worst_hostile, wall)
        print(f"{label}: verify {wall:.2f} s, peak RSS {rss:.1f} MB; previous reader {old[0]:.2f} s, "
              f"{old[1]:.1f} MB: {old[0] / wall:.0f}x the time, {old[1] / rss:.1f}x the memory")
        figures["hostile"][label] = {"verify": [wall, rss], "previous": old}
    many_runs = [timed([backupctl, "verify", str(many)]) for _ in range(args.rounds)]
    wall, rss = min(w for w, _ in many_runs), max(m for _, m in many_runs)
    per_member = (rss - peak["verify"]) * (1 << 20) / args.members
    print(f"{args.members} members: verify {wall:.2f} s, peak RSS {rss:.1f} MB, {per_member:.0f} bytes per member "
          f"(goal < {GOAL_BYTES_PER_MEMBER})")
    figures["many"] = {"members": args.members, "wall": wall, "rss_mb": rss, "bytes_per_member": per_member}
    print(f"worst verify peak RSS {worst_rss:.1f} MB (goal < {GOAL_RSS_MB}); slowest hostile {worst_hostile:.2f} s "
          f"(goal < {GOAL_HOSTILE_S})")
    (OUT / "bench_archive.json").write_text(json.dumps(figures, indent=2))
    met = ratio <= GOAL_RATIO and worst_rss < GOAL_RSS_MB and worst_hostile < GOAL_HOSTILE_S
    return 0 if met and per_member < GOAL_BYTES_PER_MEMBER else 1


if __name__ == "__main__":
    sys.exit(main())
