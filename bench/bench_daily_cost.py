"""Benchmark: the daily integrity run costs the new backups plus reread_fraction of the history.

The daily run (``backupkit.jobs.daily.check_integrity``, what the DAG's ``check_integrity``
task calls) reads in full every new, changed or previously failed backup, plus the
``ceil(reread_fraction x total)`` verified ones whose last full read is oldest. This
script checks that it reads that and nothing else, and that its wall time follows the
bytes, for a history of 30 and of 400 nights:

* one real ``pg_dump -Fc`` of three booking-like tables (--size-mb of rows, made once in
  bench/out/) is the night's backup. The history is hard links to it (400 nights of a
  30 MB dump would fill 12 GB of disk; a link's bytes are read like a file's), with a
  ``sha256sum`` sidecar each, and a verification memory that says each night was
  verified the morning after it was written (the steady state of a sandbox running for
  that long, without reading 400 dumps first);
* then --runs mornings: a new backup (a real copy, not a link: a new link would change the
  shared inode's ctime and so every backup's identity) appears, and the run is timed.

Bytes read are the process's ``rchar`` (``/proc/self/io``: everything read through
``read()``: backups, sidecars, the state database, configuration), against the sizes of
the backups the run re-read (those the memory now stamps with this morning); the
``pg_restore --list`` child reads only each dump's TOC and is not counted. Goal: read /
expected between 1.00 and 1.05, and MB/s alike for 30 and 400 nights.

    .venv/bin/python bench/bench_daily_cost.py              # 30 MB dump, 30 and 400 nights, 3 runs each
    .venv/bin/python bench/bench_daily_cost.py --quick      # 5 MB dump, 1 run
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(1, str(REPO))
sys.path.insert(2, str(REPO / "bench"))

from backupkit.config import load_config  # noqa: E402
from backupkit.jobs.daily import backup_key, check_integrity  # noqa: E402
from backupkit.pgbin import pg_bin  # noqa: E402
from backupkit.pgserver import LocalPostgres  # noqa: E402
from backupkit.state import FileIdentity, VerificationState  # noqa: E402
from backupkit.storage.localfs import sha256_file  # noqa: E402
from bench_verify import ROW_BYTES, _rows_sql  # noqa: E402  (one recipe for benchmark rows)

OUT = REPO / "bench" / "out"
PATTERN = "trixtech_%Y%m%d_%H%M%S.dump"
SOURCE = "trixtech-db"
MB = 1_000_000
TABLES = 3
GOAL_EXTRA = 0.05
CONFIG = """\
bucket:
  name: trixtech-backups
databases:
  - name: {source}
    database: trixtech
    dump_format: custom
    local_dir: {root}/database
    s3_prefix: database/
    pattern: {pattern}
verification:
  state_dir: {root}/state
"""


def make_dump(size_mb: float) -> Path:
    """The night's backup: a real custom dump of ``size_mb`` of rows (made once, reused)."""
    out = OUT / f"daily_cost_{size_mb:g}mb_{TABLES}t.dump"
    if out.exists():
        return out
    OUT.mkdir(parents=True, exist_ok=True)
    scratch = OUT / "pg-scratch-daily-cost"
    with LocalPostgres(scratch) as pg:
        pg.create_database("bench")
        for t in range(TABLES):  # several tables: a dump's blocks are decoded on several workers
            pg.psql(_rows_sql(f"bookings_{t}", int(size_mb * MB / ROW_BYTES / TABLES)), database="bench")
        tmp = out.with_name(out.name + ".partial")
        subprocess.run([pg_bin("pg_dump"), *pg.conn_args("bench"), "--no-owner", "-Fc", "-f", str(tmp)], check=True)
        tmp.rename(out)
    shutil.rmtree(scratch, ignore_errors=True)
    return out


def _sidecar(path: Path, digest: str) -> None:
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")


def make_history(dump: Path, nights: int, first_morning: datetime) -> Path:
    """``nights`` backups before ``first_morning`` as links to ``dump``, each remembered as verified."""
    root = OUT / f"daily_cost_{nights}n"
    shutil.rmtree(root, ignore_errors=True)
    (root / "database").mkdir(parents=True)
    (root / "backups.yaml").write_text(CONFIG.format(source=SOURCE, root=root, pattern=PATTERN))
    digest = sha256_file(dump)[0]
    newest = first_morning.replace(hour=2) - timedelta(days=1)
    names = []
    for i in range(nights):
        night = newest - timedelta(days=i)
        path = root / "database" / night.strftime(PATTERN)
        os.link(dump, path)
        _sidecar(path, digest)
        names.append((path, night))
    state = VerificationState(root / "state")
    try:
        for path, night in names:
            state.record(backup_key(SOURCE, path.name), digest, FileIdentity.of(path), True,
                         night + timedelta(hours=6), "")
    finally:
        state.close()
    return root


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def one_morning(root: Path, dump: Path, morning: datetime) -> dict:
    """Last night's backup appears; the run at ``morning`` is measured."""
    config = load_config(root / "backups.yaml")
    night = morning.replace(hour=2)
    new = root / "database" / night.strftime(PATTERN)
    shutil.copyfile(dump, new)
    _sidecar(new, sha256_file(dump)[0])
    total = len(list((root / "database").glob("*.dump")))
    before, started = _rchar(), time.perf_counter()
    results = check_integrity(config, SOURCE, now=morning)
    wall = time.perf_counter() - started
    read = _rchar() - before
    bad = [r for r in results if not r["ok"]]
    if bad:
        raise SystemExit(f"the daily run failed: {bad[:3]}")
    state = VerificationState(root / "state")
    try:
        reread = [k for k, rec in state.records(prefix=f"{SOURCE}/").items() if rec.verified_at == morning]
    finally:
        state.close()
    expected = sum((root / "database" / k.split("/", 1)[1]).stat().st_size for k in reread)
    return {"total": total, "reread": len(reread), "quota": 1 + math.ceil(config.reread_fraction * total - 1e-9),
            "expected": expected, "read": read, "wall": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=100, help="rows in the dumped table (default 100 MB: a ~30 MB dump)")
    ap.add_argument("--nights", type=int, nargs="*", default=[30, 400])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.size_mb, args.runs = 15, 1
    dump = make_dump(args.size_mb)
    first = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
    import backupkit.verify  # noqa: F401  (imports are read before the measurement, not in it)
    from backupkit.checks import copytext

    copytext._numpy()
    print(f"dump {dump.name}: {dump.stat().st_size / MB:.1f} MB; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f}")
    ok, rates = True, {}
    for nights in args.nights:
        root = make_history(dump, nights, first)
        for run in range(args.runs):
            r = one_morning(root, dump, first + timedelta(days=run))
            extra = r["read"] / r["expected"] - 1
            rate = r["expected"] / MB / r["wall"]
            rates.setdefault(nights, []).append(rate)
            good = r["reread"] == r["quota"] and 0 <= extra <= GOAL_EXTRA
            ok = ok and good
            print(f"  {nights:>4} nights, run {run + 1}: {r['total']} backups, read {r['reread']} in full "
                  f"(1 new + ceil({r['total']}/30) = {r['quota']}), {r['expected'] / MB:8.1f} MB expected, "
                  f"{r['read'] / MB:8.1f} MB read ({extra:+.2%}); {r['wall']:6.2f} s = {rate:6.1f} MB/s"
                  f"{'' if good else '  <-- MISSED'}")
        shutil.rmtree(root, ignore_errors=True)
    best = {n: max(v) for n, v in rates.items()}
    if len(best) > 1:
        lo, hi = min(best.values()), max(best.values())
        print(f"best MB/s per history: " + ", ".join(f"{n} nights {v:.1f}" for n, v in best.items())
              + f"; spread {hi / lo:.2f}x (proportional: near 1)")
    print(f"load average {os.getloadavg()[0]:.1f}; goal (read within +5% of the backups re-read, "
          f"and exactly new + ceil(total/30) of them): {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
