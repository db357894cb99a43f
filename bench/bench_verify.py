"""Benchmark: ``backupctl verify`` on a large custom-format dump costs about what the slower
of ``sha256sum`` and ``pg_restore -f /dev/null`` costs alone, in flat memory.

Makes (once; reused from bench/out/) a custom dump of at least --size-gb with the
embedded PostgreSQL: a table of md5 text rows dumped with ``pg_dump -Fc -Z 0`` (no
compression, so the dump is as large as the data and quick to produce; ``--compress 1``
makes a gzip-compressed dump instead, where pg_restore rather than hashing is the slow
part, which shows whether the hash really overlaps with it). Then runs the
three commands alternately for --rounds rounds, page cache warm, and reports wall times,
verify / max(sha256sum, pg_restore) and peak RSS (from wait4: the largest process of
each command's tree; a forked child starts with this script's RSS, printed as the floor).

Goals: ratio <= 1.15, peak RSS < 200 MB.

    .venv/bin/python bench/bench_verify.py            # 1 GB
    .venv/bin/python bench/bench_verify.py --quick    # 0.1 GB smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(1, str(REPO))

from backupkit.pgbin import pg_bin  # noqa: E402
from backupkit.pgserver import LocalPostgres  # noqa: E402
from sandbox.bookingdb import pg_dump  # noqa: E402

OUT = REPO / "bench" / "out"
GB = 1_000_000_000
ROW_BYTES = 8 * 32 + 8  # eight md5 hex strings, plus id and COPY separators
GZIP_RATIO = 0.55  # what gzip leaves of hex text (measured ~0.57-0.59; rounded down to overshoot)
GOAL_RATIO, GOAL_RSS_MB = 1.15, 200


def make_dump(size_gb: float, compress: int) -> Path:
    """A custom-format dump of at least ``size_gb`` GB, made once and reused."""
    path = OUT / f"verify_{size_gb:g}gb_z{compress}.dump"
    if path.exists():
        return path
    OUT.mkdir(parents=True, exist_ok=True)
    rows = int(size_gb * GB / ROW_BYTES / (GZIP_RATIO if compress else 1)) + 1
    payload = " || ".join(f"md5((g * 8 + {i})::text)" for i in range(8))
    started = time.monotonic()
    with LocalPostgres(OUT / "pg-scratch") as pg:
        pg.create_database("bench")
        pg.psql(f"CREATE UNLOGGED TABLE blobs (id int, payload text);"
                f"INSERT INTO blobs SELECT g, {payload} FROM generate_series(1, {rows}) AS g;", database="bench")
        partial = pg_dump(pg, "bench", path.with_suffix(".partial"), "custom", compress=compress)
    partial.rename(path)
    print(f"made {path.name}: {path.stat().st_size / GB:.2f} GB in {time.monotonic() - started:.0f}s")
    return path


def timed(cmd: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MB of the largest process) of the command's tree."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="0.1 GB smoke run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compress", type=int, default=0, help="pg_dump -Z level (default 0: none)")
    args = ap.parse_args()
    dump = make_dump(0.1 if args.quick else args.size_gb, args.compress)
    backupctl = shutil.which("backupctl", path=str(Path(sys.executable).parent)) or "backupctl"
    commands = {
        "sha256sum": ["sha256sum", str(dump)],
        "pg_restore": [pg_bin("pg_restore"), "-f", os.devnull, str(dump)],
        "verify": [backupctl, "verify", str(dump)],
    }
    subprocess.run(["cat", str(dump)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    floor = timed(["true"])[2]
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, cmd in commands.items():
            runs[name].append(timed(cmd))
    best = {name: min(w for w, _, _ in r) for name, r in runs.items()}
    cpu = {name: min(c for _, c, _ in r) for name, r in runs.items()}
    peak = {name: max(m for _, _, m in r) for name, r in runs.items()}
    ratio = best["verify"] / max(best["sha256sum"], best["pg_restore"])
    print(f"dump: {dump.name}, {dump.stat().st_size / GB:.3f} GB, {os.cpu_count()} CPUs, {args.rounds} rounds")
    for name, r in runs.items():
        walls = " ".join(f"{w:6.2f}" for w, _, _ in r)
        print(f"  {name:<11} wall s: {walls}   best {best[name]:6.2f}   CPU s {cpu[name]:6.2f}"
              f"   peak RSS {peak[name]:6.1f} MB")
    print(f"verify / max(sha256sum, pg_restore) = {ratio:.3f}  (goal <= {GOAL_RATIO})")
    print(f"verify peak RSS = {peak['verify']:.1f} MB  (goal < {GOAL_RSS_MB} MB; fork floor {floor:.1f} MB)")
    (OUT / "bench_verify.json").write_text(json.dumps(
        {"dump_bytes": dump.stat().st_size, "rss_floor_mb": floor, "runs": runs, "best": best, "cpu": cpu, "peak_rss_mb": peak, "ratio": ratio}, indent=2))
    return 0 if ratio <= GOAL_RATIO and peak["verify"] < GOAL_RSS_MB else 1


if __name__ == "__main__":
    sys.exit(main())
