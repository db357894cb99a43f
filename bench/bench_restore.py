"""Benchmark: a restore through the operator's code path costs at most 10% more than bare
``pg_restore --jobs N`` on the same file and server; and what ``--jobs N`` buys over ``--jobs 1``.

Makes (once; reused from bench/out/) a custom-format dump of at least --size-gb: four
tables of booking-like rows (ids, timestamps, md5 text) with primary keys and a secondary
index each, dumped with ``pg_dump -Fc -Z 0`` (uncompressed: the file is as large as the
data and quick to make), plus its row-count manifest (docs/manifest.md). Then, on ONE
local scratch PostgreSQL, page cache warm, for --rounds rounds:

* bare ``pg_restore --jobs N --no-owner --exit-on-error`` into a fresh database;
* the operator's code path: ``backupkit.restore.pipeline.restore_test`` -- the function
  ``ScratchRestoreOperator.execute`` calls after loading the configuration -- which finds
  the backup, creates the database, runs ``pg_restore`` with the source's ``restore.jobs``,
  then verifies (exact ``count(*)`` of every table against the manifest, key tables);
* bare ``pg_restore --jobs 1``.

Each timed run starts after a ``CHECKPOINT``, so none pays for the previous one's dirty pages.

Reported: best wall time of each; the operator's restore phase against bare
``pg_restore --jobs N`` (goal: overhead <= 10%); its total with verification; the
speed-up of N jobs over 1; and, once, the cost of provisioning plus tearing down a local
scratch server, which the operator adds per restore.

    .venv/bin/python bench/bench_restore.py                  # 1 GB, --jobs 2
    .venv/bin/python bench/bench_restore.py --size-gb 0.05   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(1, str(REPO))

from backupkit import clock  # noqa: E402
from backupkit.config import load_config  # noqa: E402
from backupkit.pgbin import pg_bin  # noqa: E402
from backupkit.pgserver import LocalPostgres  # noqa: E402
from backupkit.restore.scratch import LocalScratch, ScratchDatabase  # noqa: E402
from backupkit.restore.pipeline import restore_test  # noqa: E402
from backupkit.restore.verify_rows import RowManifest, exact_row_counts, manifest_path  # noqa: E402

OUT = REPO / "bench" / "out"
GB = 1_000_000_000
GOAL_OVERHEAD = 0.10
NAME = "bench_20250301_020000.dump"
# Four tables so that --jobs has something to parallelise; shares of the data.
TABLES = {"bookings": 0.40, "users": 0.25, "payments": 0.20, "events": 0.15}
ROW_SQL = ("SELECT g, now() - (g % 100000) * interval '1 minute', (g * 7919) % 1000003, "
           "md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text) FROM generate_series({lo}::bigint, {hi}::bigint) g")


def make_dump(size_gb: float) -> Path:
    """``bench/out/restore_<size>gb/NAME`` (>= size_gb) with its manifest, made once."""
    d = OUT / f"restore_{size_gb:g}gb"
    dump = d / NAME
    if dump.exists() and manifest_path(dump).exists():
        return dump
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    t0 = time.monotonic()
    src_dir = Path(tempfile.mkdtemp(prefix="bk-src-", dir="/tmp"))
    try:
        return _fill_and_dump(size_gb, d, dump, src_dir, t0)
    finally:
        shutil.rmtree(src_dir, ignore_errors=True)


def _fill_and_dump(size_gb: float, d: Path, dump: Path, src_dir: Path, t0: float) -> Path:
    with LocalPostgres(src_dir / "data") as pg:
        pg.create_database("bench")
        for t in TABLES:
            pg.psql(f"CREATE TABLE {t} (id bigint PRIMARY KEY, at timestamptz, ref int, note text)", "bench")
        target = size_gb * GB * 1.03
        per_row = 150  # COPY text bytes of one row, about
        done = {t: 0 for t in TABLES}
        while True:
            for t, share in TABLES.items():
                want = int(target * share / per_row)
                if want > done[t]:
                    pg.psql(f"INSERT INTO {t} " + ROW_SQL.format(lo=done[t] + 1, hi=want), "bench")
                    done[t] = want
            for t in TABLES:
                pg.psql(f"CREATE INDEX IF NOT EXISTS {t}_ref ON {t} (ref)", "bench")
            partial = d / (NAME + ".partial")
            subprocess.run([pg_bin("pg_dump"), *pg.conn_args("bench"), "-Fc", "-Z", "0", "--no-owner",
                            "-f", str(partial)], check=True)
            size = partial.stat().st_size
            if size >= size_gb * GB:
                break
            per_row = per_row * size / (size_gb * GB) * 0.97  # undershot: estimate again and add rows
        counts = exact_row_counts(pg, "bench")
    partial.rename(dump)
    manifest_path(dump).write_text(RowManifest("bench", clock.now(), counts).to_json())
    print(f"made {dump}: {dump.stat().st_size / GB:.3f} GB, {sum(counts.values())} rows "
          f"in {time.monotonic() - t0:.0f}s")
    return dump


class SharedServer(ScratchDatabase):
    """The benchmark's one server seen as a scratch database that restore_test must not tear down."""

    backend = "local"

    def __init__(self, inner: LocalScratch):
        self.inner = inner

    def start(self):
        return self

    def teardown(self) -> None:
        pass

    def conn_args(self, database: str = "postgres") -> list[str]:
        return self.inner.conn_args(database)

    def uri(self, database: str = "postgres") -> str:
        return self.inner.uri(database)

    def client_env(self) -> dict[str, str]:
        return self.inner.client_env()


def write_config(dump: Path, jobs: int, work: Path) -> Path:
    cfg = work / "backups.yaml"
    cfg.write_text(f"""
bucket: {{name: bench-bucket}}
databases:
  - name: bench-db
    database: bench
    dump_format: custom
    local_dir: {dump.parent}
    s3_prefix: database/
    pattern: bench_%Y%m%d_%H%M%S.dump
    restore: {{key_tables: [bookings, users], jobs: {jobs}}}
verification: {{state_dir: {work / 'state'}}}
restore: {{scratch_dir: {work}}}
""")
    return cfg


def settle(scratch: LocalScratch) -> None:
    """Start every timed run from the same state: no pending checkpoint from the previous one."""
    scratch.psql("CHECKPOINT")


def bare(scratch: LocalScratch, dump: Path, jobs: int, database: str) -> float:
    settle(scratch)
    scratch.psql(f'CREATE DATABASE "{database}" TEMPLATE template0')
    t0 = time.monotonic()
    subprocess.run([pg_bin("pg_restore"), *scratch.conn_args(database), "-Fc", "--jobs", str(jobs), "--no-owner",
                    "--exit-on-error", str(dump)], check=True, env=scratch.client_env(),
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def drop(scratch: LocalScratch, database: str) -> None:
    scratch.psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 2))
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    dump = make_dump(args.size_gb)
    work = Path(tempfile.mkdtemp(prefix="bk-b-", dir="/tmp"))
    try:
        config = load_config(write_config(dump, args.jobs, work))
        subprocess.run(["cat", str(dump)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        t0 = time.monotonic()
        with LocalScratch(base_dir=work):
            pass
        provision = time.monotonic() - t0
        runs: dict[str, list[float]] = {"bare_jobsN": [], "operator_restore": [], "operator_total": [],
                                        "bare_jobs1": []}
        with LocalScratch(base_dir=work) as scratch:
            for i in range(args.rounds):
                runs["bare_jobsN"].append(bare(scratch, dump, args.jobs, "bare_n"))
                drop(scratch, "bare_n")
                settle(scratch)
                t0 = time.monotonic()
                r = restore_test(config, "bench-db", NAME, new_database=lambda: SharedServer(scratch), role="bench")
                runs["operator_total"].append(time.monotonic() - t0)
                if not r["ok"]:
                    raise SystemExit(f"operator path failed: {r['problems']}")
                runs["operator_restore"].append(r["restore_seconds"])
                verified = r["verified_rows"]
                drop(scratch, "restored")
                runs["bare_jobs1"].append(bare(scratch, dump, 1, "bare_1"))
                drop(scratch, "bare_1")
        best = {k: min(v) for k, v in runs.items()}
        overhead = best["operator_restore"] / best["bare_jobsN"] - 1
        overhead_total = best["operator_total"] / best["bare_jobsN"] - 1
        speedup = best["bare_jobs1"] / best["bare_jobsN"]
        print(f"dump {dump.name}: {dump.stat().st_size / GB:.3f} GB, {verified} rows verified, "
              f"{os.cpu_count()} CPUs, --jobs {args.jobs}, {args.rounds} round(s)")
        for k, v in runs.items():
            print(f"  {k:<17} " + " ".join(f"{x:7.2f}" for x in v) + f"   best {best[k]:7.2f} s")
        print(f"operator restore vs bare pg_restore --jobs {args.jobs}: {overhead:+.1%}  (goal <= "
              f"{GOAL_OVERHEAD:.0%})")
        print(f"operator total incl. verification (count(*) of every table): {overhead_total:+.1%}")
        print(f"local scratch provision + teardown: {provision:.2f} s per restore")
        print(f"parallel speed-up --jobs {args.jobs} over --jobs 1: {speedup:.2f}x")
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "bench_restore.json").write_text(json.dumps({
            "dump_bytes": dump.stat().st_size, "jobs": args.jobs, "cpus": os.cpu_count(), "runs": runs,
            "best": best, "overhead_restore": overhead, "overhead_total": overhead_total,
            "provision_seconds": provision, "speedup": speedup, "verified_rows": verified}, indent=2))
        return 0 if overhead <= GOAL_OVERHEAD else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
