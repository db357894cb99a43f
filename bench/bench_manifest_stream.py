"""Benchmark: the daily check's streamed ``backup_manifest`` read (backupkit.wal.manifest) keeps memory bounded.

A manifest of N files in the exact layout ``pg_basebackup`` writes (one ``Files`` entry per line, CRC32C
checksums, ``WAL-Ranges``, the ``Manifest-Checksum`` over all but the last line) is generated once, then,
alternated for --rounds rounds in this process:

* **streamed**: :func:`backupkit.wal.manifest.read_manifest` over 1 MiB pieces (what the S3 check feeds it),
  counting the entries;
* **baseline**: ``json.loads`` of the whole manifest (what reading it at once costs: what
  ``wal.backups.manifest_files`` does for a restore).

Printed per round: peak traced memory (tracemalloc) and wall time of each, and the ratios. Goal (exit 1 when
missed): the streamed read's peak at most 16 MiB whatever N (the 1 MiB window, its piece and the decoder), where
the baseline grows with the manifest; the time is printed, not a goal.

    .venv/bin/python bench/bench_manifest_stream.py                  # 500,000 files (~75 MB), 3 rounds
    .venv/bin/python bench/bench_manifest_stream.py --files 50000 --rounds 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

from backupkit.wal.manifest import read_manifest  # noqa: E402

PIECE = 1 << 20
GOAL_MIB = 16   # the streamed read's peak, whatever the manifest's size


def make_manifest(files: int) -> bytes:
    lines = ['{ "PostgreSQL-Backup-Manifest-Version": 2,\n', '"System-Identifier": 7443322110099887766,\n',
             '"Files": [\n']
    for i in range(files):
        sep = "," if i < files - 1 else ""
        lines.append(f'{{ "Path": "base/16384/{100000 + i}", "Size": {8192 * (i % 7 + 1)}, '
                     f'"Last-Modified": "2026-12-01 02:00:{i % 60:02d} GMT", "Checksum-Algorithm": "CRC32C", '
                     f'"Checksum": "{i & 0xFFFFFFFF:08x}" }}{sep}\n')
    lines += ['],\n', '"WAL-Ranges": [\n', '{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000120" }\n',
              '],\n']
    body = "".join(lines).encode()
    return body + f'"Manifest-Checksum": "{hashlib.sha256(body).hexdigest()}"}}\n'.encode()


def measure(fn) -> tuple[float, float, object]:
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / (1 << 20), elapsed, out


def streamed(data: bytes) -> int:
    count = [0]

    def on_file(path: str, size: int) -> None:
        count[0] += 1

    read_manifest((data[i:i + PIECE] for i in range(0, len(data), PIECE)), "bench", len(data) + 1, on_file)
    return count[0]


def whole(data: bytes) -> int:
    return len(json.loads(data)["Files"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=500_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    data = make_manifest(args.files)
    worst = 0.0
    print(f"manifest: {args.files} files, {len(data) / 1e6:.1f} MB")
    for r in range(args.rounds):
        order = (("streamed", streamed), ("baseline", whole)) if r % 2 == 0 else (("baseline", whole),
                                                                                  ("streamed", streamed))
        got = {}
        for name, fn in order:
            # the manifest's own bytes are allocated before tracing starts: only the reader's memory is counted
            got[name] = measure(lambda fn=fn: fn(data))
            assert got[name][2] == args.files, (name, got[name][2])
        s, b = got["streamed"], got["baseline"]
        worst = max(worst, s[0])
        print(f"round {r + 1}: streamed peak {s[0]:.1f} MiB in {s[1]:.2f} s; json.loads peak {b[0]:.1f} MiB in "
              f"{b[1]:.2f} s; memory {s[0] / b[0]:.3f}x, time {s[1] / b[1]:.2f}x")


    print(f"goal: streamed peak <= {GOAL_MIB} MiB: {'met' if worst <= GOAL_MIB else 'MISSED'} ({worst:.1f} MiB)")
    return 0 if worst <= GOAL_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
