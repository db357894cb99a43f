"""Benchmark: ``backupctl wal verify`` over >= 1 GB of WAL segments against ``pg_waldump``
alone over the same segments, in bounded memory.

Makes (once; reused from bench/out/) a WAL archive of at least --size-gb with the
embedded PostgreSQL 18: default 16 MB segments, ``full_page_writes = on``, a pgbench
workload, ``archive_command`` copying into the archive. Then runs, alternately for
--rounds rounds with the page cache warm:

- ``backupctl wal verify ARCHIVE --json`` (every page header and record: CRC-32C and
  block references, timelines, window; one process per CPU);
- ``pg_waldump -p ARCHIVE FIRST LAST > /dev/null`` (reads and prints every record);
- ``pg_waldump --quiet ...`` (reads and checks every record, prints nothing: the least
  pg_waldump can do, and what it does in C at ~60 ns a record);
- ``backupctl wal verify --jobs 1`` (one process, for the record).

and reports wall times, the ratios to both pg_waldump runs and peak RSS (wait4: the
largest process of the command's tree).

Goals: verify <= 1.1x pg_waldump's time, peak RSS < 200 MB.

    .venv/bin/python bench/bench_wal_verify.py            # 1 GB
    .venv/bin/python bench/bench_wal_verify.py --quick    # 0.1 GB smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

from backupkit.pgbin import pg_bin  # noqa: E402
from backupkit.pgserver import LocalPostgres, server_user  # noqa: E402

OUT = REPO / "bench" / "out"
GB = 1_000_000_000
GOAL_RATIO, GOAL_RSS_MB = 1.1, 200
BACKUPCTL = Path(sys.executable).parent / "backupctl"


def make_archive(size_gb: float, segment_mb: int, max_wal_size: str) -> Path:
    """A WAL archive of at least ``size_gb`` GB, made once and reused.

    ``max_wal_size`` sets how often checkpoints come, so how much of the WAL is full-page
    images (few, large records) rather than row changes (many small ones).
    """
    archive = OUT / f"wal_{size_gb:g}gb_{segment_mb}mb_{max_wal_size}"
    done = archive / ".complete"
    if done.exists():
        return archive
    shutil.rmtree(archive, ignore_errors=True)
    archive.mkdir(parents=True)
    user = server_user()
    if user:
        pw = pwd.getpwnam(user)
        os.chown(archive, pw.pw_uid, pw.pw_gid)
    started = time.monotonic()
    settings = {"archive_mode": "on", "archive_command": f"cp %p {archive}/%f", "full_page_writes": "on",
                "wal_level": "replica", "max_wal_size": max_wal_size}
    with LocalPostgres(OUT / "wal-pg", initdb_args=[f"--wal-segsize={segment_mb}"], settings=settings) as pg:
        bench = [pg_bin("pgbench"), *pg.conn_args()]
        subprocess.run([*bench[:1], "-i", "-q", "-s", "20", *bench[1:]], check=True, capture_output=True)
        while sum(f.stat().st_size for f in archive.iterdir()) < size_gb * GB:
            subprocess.run([*bench[:1], "-T", "5", "-c", "2", *bench[1:]], check=True, capture_output=True)
        pg.psql("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 120
        while pg.psql("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'").strip() != "0":
            if time.monotonic() > deadline:
                raise SystemExit("archiving did not catch up")
            time.sleep(0.2)
    done.touch()
    size = sum(f.stat().st_size for f in archive.iterdir())
    print(f"made {archive.name}: {size / GB:.2f} GB in {time.monotonic() - started:.0f}s")
    return archive


def timed(cmd: list[str], ok_codes=(0,)) -> tuple[float, float, bytes]:
    """(wall seconds, peak RSS MB of the largest process of its tree, stdout)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if cmd[0] == str(BACKUPCTL) else subprocess.DEVNULL)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    code = os.waitstatus_to_exitcode(status)
    if code not in ok_codes:
        raise SystemExit(f"{' '.join(cmd[:3])} exited {code}")
    return wall, usage.ru_maxrss / 1024, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--segment-mb", type=int, default=16)
    ap.add_argument("--max-wal-size", default="1GB", help="e.g. 64MB: frequent checkpoints, WAL mostly full-page images")
    ap.add_argument("--quick", action="store_true", help="0.1 GB smoke run")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.quick:
        args.size_gb, args.rounds = 0.1, 1
    archive = make_archive(args.size_gb, args.segment_mb, args.max_wal_size)
    segments = sorted(f.name for f in archive.iterdir() if len(f.name) == 24)
    first, last = segments[0], segments[-1]
    size = sum((archive / s).stat().st_size for s in segments)
    commands = {
        "verify": [str(BACKUPCTL), "wal", "verify", str(archive), "--json"],
        "pg_waldump": [pg_bin("pg_waldump"), "-p", str(archive), first, last],
        "pg_waldump -q": [pg_bin("pg_waldump"), "-q", "-p", str(archive), first, last],
        "verify --jobs 1": [str(BACKUPCTL), "wal", "verify", str(archive), "--json", "--jobs", "1"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    rss: dict[str, float] = {}
    report = None
    for _ in range(args.rounds):
        for name, cmd in commands.items():
            wall, peak, out = timed(cmd)
            times[name].append(wall)
            rss[name] = max(rss.get(name, 0), peak)
            if out:
                report = json.loads(out)
    best = {name: min(ts) for name, ts in times.items()}
    records = sum(t["records"] for t in report["timelines"])
    print(f"{len(segments)} segments of {args.segment_mb} MB ({size / GB:.2f} GB), {records:,} records "
          f"(max_wal_size {args.max_wal_size}), "
          f"{args.rounds} rounds, best of each, {os.cpu_count()} CPUs")
    for name in commands:
        print(f"  {name:16s} {best[name]:6.2f}s   peak RSS {rss[name]:6.0f} MB   ({', '.join(f'{t:.2f}' for t in times[name])})")
    ratio, ratio_q = best["verify"] / best["pg_waldump"], best["verify"] / best["pg_waldump -q"]
    print(f"verify / pg_waldump = {ratio:.2f}x, verify / pg_waldump -q = {ratio_q:.2f}x, "
          f"one process / pg_waldump = {best['verify --jobs 1'] / best['pg_waldump']:.2f}x")
    assert report["ok"], report["problems"]
    met = ratio <= GOAL_RATIO and rss["verify"] < GOAL_RSS_MB
    print(f"goal verify <= {GOAL_RATIO}x pg_waldump and < {GOAL_RSS_MB} MB: {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
