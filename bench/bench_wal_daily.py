"""Benchmark: the daily WAL check reads only what changed, plus the rolling share (verification memory).

A real server (1 MB segments, archive_command into bench/out/wal-daily/archive) gets a plain
``pg_basebackup`` and then ``pgbench -i -s SCALE`` plus a short ``pgbench`` run, so the archive
holds a few hundred segments of ordinary WAL. Then, alternated for --rounds rounds:

* **cold**: ``backupkit.jobs.daily.check_integrity`` with an empty verification memory (every
  segment from the base backup on is read, as on the first day or with the memory lost);
* **warm**: the same with the memory a cold run left (what every later morning costs when no
  WAL was added: the newest segment, whose successor is unknown, plus ``ceil(reread_fraction x
  segments)`` re-read for bit rot).

Goal: warm reads at most ``ceil(segments / 30) + 8`` segments (the rolling share, the newest and
the segments a re-read record starts in). The wall-time ratio is printed too; it is not the goal:
a warm run has a fixed cost of about 0.1 s (``pg_verifybackup`` of the base backup the rolling
share picks, the memory's SQLite, starting the reader processes) that a few hundred fast
segments do not dwarf.

    .venv/bin/python bench/bench_wal_daily.py               # scale 20 (~330 segments), 3 rounds
    .venv/bin/python bench/bench_wal_daily.py --scale 5 --rounds 1
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(1, str(REPO))

from backupkit import clock  # noqa: E402
from backupkit.config import load_config  # noqa: E402
from backupkit.jobs.daily import check_integrity  # noqa: E402
from backupkit.pgbin import pg_bin  # noqa: E402
from backupkit.pgserver import LocalPostgres  # noqa: E402
from sandbox import walarchive  # noqa: E402

OUT = REPO / "bench" / "out" / "wal-daily"
REREAD = 1 / 30
CONFIG = """\
bucket: {{name: trixtech-backups}}
wal_archives:
  - name: bench-wal
    local_dir: {root}/base
    s3_prefix: basebackups/
    pattern: base_%Y%m%d_%H%M%S
    archive_dir: {root}/archive
    max_age: 30d
verification: {{state_dir: {state}, reread_fraction: {reread}}}
"""


def build(scale: int) -> Path:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    walarchive.prepare_dirs(OUT / "archive", OUT / "base")
    pg = LocalPostgres(OUT / "pg", initdb_args=["--wal-segsize=1"],
                       settings=walarchive.archive_settings(OUT / "archive")).start()
    try:
        (OUT / "cold.yaml").write_text(CONFIG.format(root=OUT, state=OUT / "state-cold", reread=REREAD))
        source = load_config(OUT / "cold.yaml").source("bench-wal")
        walarchive.take_base_backup(pg, source, clock.now())
        env = pg.client_env()
        subprocess.run([pg_bin("pgbench"), *pg.conn_args()[:-2], "-i", "-s", str(scale), "-q", "postgres"],
                       check=True, capture_output=True, env=env)
        subprocess.run([pg_bin("pgbench"), *pg.conn_args()[:-2], "-T", "5", "-c", "2", "postgres"],
                       check=True, capture_output=True, env=env)
        done = pg.psql("SELECT pg_walfile_name(pg_switch_wal() - 1)").strip()   # see sandbox.walarchive.wait_archived
        deadline = time.monotonic() + 120
        while not (OUT / "archive" / done).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        pg.destroy()
    return OUT


def run(config_path: Path, now) -> tuple[float, int, int]:
    config = load_config(config_path)
    t0 = time.perf_counter()
    results = check_integrity(config, "bench-wal", now=now)
    seconds = time.perf_counter() - t0
    bad = [r for r in results if not r["ok"]]
    if bad:
        raise SystemExit(f"the archive did not verify: {bad[:3]}")
    detail = next(r for r in results if r["check"] == "wal_archive")["detail"]
    read, total = detail.split("read ")[1].split(" segments")[0].split(" of ")
    return seconds, int(read), int(total)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    t0 = time.perf_counter()
    root = build(args.scale)
    print(f"archive built in {time.perf_counter() - t0:.0f}s: "
          f"{sum(1 for f in (root / 'archive').iterdir() if len(f.name) == 24)} segments")
    (root / "warm.yaml").write_text(CONFIG.format(root=root, state=root / "state-warm", reread=REREAD))
    now = clock.now()
    run(root / "warm.yaml", now)   # prime the warm memory once
    cold, warm = [], []
    for i in range(args.rounds):
        shutil.rmtree(root / "state-cold", ignore_errors=True)
        cold.append(run(root / "cold.yaml", now + timedelta(minutes=i)))
        warm.append(run(root / "warm.yaml", now + timedelta(minutes=i)))
    c, w = min(cold), min(warm)
    total = c[2]
    allowed = math.ceil(total * REREAD) + 8
    ratio = w[0] / c[0]
    for (cs, cr, _), (ws, wr, _) in zip(cold, warm):
        print(f"  cold {cs:6.2f}s read {cr:4d}   warm {ws:6.2f}s read {wr:4d}")
    met = max(r for _, r, _ in warm) <= allowed
    print(f"{total} segments: warm run {ratio:.2f}x the cold run's time, reads {w[1]} (allowed {allowed}) vs "
          f"{c[1]}: {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
