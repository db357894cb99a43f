"""Run every benchmark in bench/ one after the other (``make bench``).

Each script prints its own figures and ratios against a baseline measured in the same
process, and exits non-zero when it misses its goal. ``--quick`` passes each script its
smoke-size option, for checking that the scripts still run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
QUICK_ARGS = {
    "bench_verify.py": ["--quick"],
    "bench_archive.py": ["--quick"],
    "bench_s3_check.py": ["--size-mb", "64"],
    "bench_retention_sweep.py": ["--objects", "5000", "--sample", "500"],
    "bench_restore.py": ["--size-gb", "0.05"],
    "bench_wal_verify.py": ["--quick"],
    "bench_pitr_fetch.py": ["--quick"],
    "bench_health.py": ["--quick"],
    "bench_s3_soak.py": ["--quick"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke-size runs")
    args = ap.parse_args()
    failed = []
    for script in sorted(BENCH.glob("bench_*.py")):
        extra = QUICK_ARGS.get(script.name, []) if args.quick else []
        print(f"\n=== {script.name} {' '.join(extra)}", flush=True)
        if subprocess.run([sys.executable, str(script), *extra]).returncode != 0:
            failed.append(script.name)
    print(f"\n{len(failed)} benchmark(s) missed their goal: {', '.join(failed)}" if failed else "\nall goals met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
