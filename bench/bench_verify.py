"""Benchmark: ``backupctl verify`` against the tools that do the same reading alone.

Makes once (reused from bench/out/) a booking-like database of --size-gb of table data
spread over --tables tables (a custom dump's blocks are independent compressed streams,
one per table, so this is what lets workers run in parallel; ``--tables 1`` shows the
single-stream case) and from it:

* a gzip custom dump (``pg_dump -Fc``, default level) -- baseline ``pg_restore -f /dev/null``;
* zstd and lz4 custom dumps (the bundled pg_dump writes neither: a ``-Z 0`` dump with its
  blocks rewritten, tests/_pgcustom_helpers.recompress) -- baseline ``zstd -t`` / ``lz4 -t``
  on the same frames (all blocks' frames concatenated in one file);
* a plain ``.sql.gz`` (``pg_dump -Z gzip:6``) -- baseline ``gzip -t``;
* the ``-Z 0`` custom dump itself -- baseline ``pg_restore -f /dev/null``.

Hashing is part of verify; its baseline is OpenSSL's SHA-256 (``openssl dgst -sha256``,
SHA-NI where the CPU has it), printed for each file; coreutils ``sha256sum`` is ~3x slower
here and is not used. Every command runs --rounds times, alternated, page cache warm; the
best wall time counts. Peak RSS is the largest process of each command's tree (wait4).
``--inflaters`` also times zlib, zlib-ng (if installed) and ISA-L on one gzip block.

Goals (issues 14 and 9): verify <= 0.6x of the baseline for gzip, zstd, lz4 and plain
``.sql.gz``; for the uncompressed dump <= 1.15x of the slower of OpenSSL and pg_restore;
peak RSS < 300 MB. Verify must hash the whole file, one sequential pass no core can share,
and decode what the baseline decodes, so zstd and lz4 (decoded by the CLIs' own libraries)
also print their *floor* on this machine: the larger of OpenSSL's time alone and (baseline
CPU + OpenSSL CPU) / cores, over the baseline's time. A floor above the goal means the
goal cannot be met here.

    .venv/bin/python bench/bench_verify.py                 # ~1 GB gzip dump (3.3 GB of rows), 5 rounds
    .venv/bin/python bench/bench_verify.py --quick         # 0.1 GB smoke run
    .venv/bin/python bench/bench_verify.py --tables 1      # one big table: no block parallelism
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
sys.path.insert(2, str(REPO / "tests"))

from backupkit.pgbin import pg_bin  # noqa: E402
from backupkit.pgserver import LocalPostgres  # noqa: E402

OUT = REPO / "bench" / "out"
GB = 1_000_000_000
ROW_BYTES = 120  # a bookings-like row in COPY text (measured ~115-125)
GOAL_RATIO, GOAL_RSS_MB = 0.6, 300
GOAL_NONE = 1.15  # issue 9: within 1.15x of the slower of OpenSSL's SHA-256 and pg_restore


def _rows_sql(table: str, rows: int) -> str:
    return (f"CREATE UNLOGGED TABLE {table} (id bigint, user_id bigint, service_id int, starts_at timestamptz, "
            f"status text, notes text, created_at timestamptz);"
            f"INSERT INTO {table} SELECT g, (g::bigint * 7919) % 200000, g % 200, "
            f"timestamptz '2024-01-01' + g * interval '17 minutes', "
            f"(ARRAY['confirmed','cancelled','completed'])[1 + g % 3], md5(g::text), "
            f"timestamptz '2023-12-01' + g * interval '13 minutes' FROM generate_series(1, {rows}) g;")


def make_inputs(size_gb: float, tables: int) -> dict[str, Path]:
    """The benchmark files (made once, reused)."""
    from _pgcustom_helpers import recompress

    base = OUT / f"verify_{size_gb:g}gb_{tables}t"
    files = {"gzip": Path(f"{base}.dump"), "none": Path(f"{base}_z0.dump"),
             "zstd": Path(f"{base}_zstd.dump"), "lz4": Path(f"{base}_lz4.dump"), "sql_gzip": Path(f"{base}.sql.gz")}
    if all(p.exists() for p in files.values()):
        return files
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows = int(size_gb * GB / ROW_BYTES / tables) + 1
    with LocalPostgres(OUT / "pg-scratch-verify") as pg:
        pg.create_database("bench")
        for t in range(tables):
            pg.psql(_rows_sql(f"bookings_{t}", rows), database="bench")
        conn = pg.conn_args("bench")
        for name, args in (("gzip", ["-Fc"]), ("none", ["-Fc", "-Z", "0"]), ("sql_gzip", ["-Z", "gzip:6"])):
            if not files[name].exists():
                tmp = files[name].with_name(files[name].name + ".partial")
                subprocess.run([pg_bin("pg_dump"), *conn, "--no-owner", *args, "-f", str(tmp)], check=True)
                tmp.rename(files[name])
    shutil.rmtree(OUT / "pg-scratch-verify", ignore_errors=True)
    for c in ("zstd", "lz4"):
        if not files[c].exists():
            recompress(files["none"], files[c], c)
    print(f"made inputs in {time.monotonic() - started:.0f}s: " +
          ", ".join(f"{k} {p.stat().st_size / GB:.2f} GB" for k, p in files.items()))
    return files


def frames_file(dump: Path, compression: str) -> Path:
    """All data streams of a zstd/lz4 custom dump concatenated: what ``zstd -t`` / ``lz4 -t`` read."""
    from _pgcustom_helpers import _chunks, _read_int

    out = dump.with_name(dump.name + (".zst" if compression == "zstd" else ".lz4"))
    if out.exists():
        return out
    data = dump.read_bytes()
    positions = sorted(_positions_of(dump).values())
    with open(out, "wb") as f:
        for start in positions:
            pos = start + 6
            if data[start] == 1:
                frame, _ = _chunks(data, pos)
                f.write(frame)
                continue
            while True:
                oid, pos = _read_int(data, pos)
                if oid == 0:
                    break
                frame, pos = _chunks(data, pos)
                f.write(frame)
    return out


def _positions_of(dump: Path) -> dict[int, int]:
    """Block offsets from the dump's own TOC (the reader's TOC parse; these dumps verified clean)."""
    from backupkit.checks.pgcustom import CustomScan, _Cursor, read_header, read_toc
    from backupkit.checks.stream import Tap

    with open(dump, "rb") as f:
        cur = _Cursor(Tap(f))
        header = read_header(cur)
        entries = read_toc(cur, header, CustomScan())
    return {i: e.offset for i, e in entries.items()}


def timed(cmd: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MB of the largest process) of the command's tree."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {rc}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def race(commands: dict[str, list[str]], rounds: int) -> dict[str, dict]:
    runs: dict[str, list] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, cmd in commands.items():
            runs[name].append(timed(cmd))
    return {name: {"walls": [w for w, _, _ in r], "best": min(w for w, _, _ in r),
                   "cpu": min(c for _, c, _ in r), "rss": max(m for _, _, m in r)} for name, r in runs.items()}


def inflaters(dump: Path) -> None:
    """zlib vs zlib-ng vs ISA-L on the largest gzip block of the dump (one thread each)."""
    import zlib

    from _pgcustom_helpers import _chunks

    data = dump.read_bytes()
    spans = sorted(_positions_of(dump).values())
    sizes = [(b - a, a) for a, b in zip(spans, spans[1:] + [len(data)])]
    _, start = max(sizes)
    stream, _ = _chunks(data, start + 6)
    mods = [("zlib", zlib)]
    try:
        from zlib_ng import zlib_ng

        mods.append(("zlib-ng", zlib_ng))
    except ImportError:
        print("  zlib-ng not installed (pip install zlib-ng to compare)")
    from isal import isal_zlib

    mods.append(("isal", isal_zlib))
    for name, mod in mods:
        best = 9e9
        for _ in range(3):
            t = time.perf_counter()
            d = mod.decompressobj()
            for i in range(0, len(stream), 4 << 20):
                d.decompress(stream[i:i + (4 << 20)], 4 << 20)
                while d.unconsumed_tail:
                    d.decompress(d.unconsumed_tail, 4 << 20)
            best = min(best, time.perf_counter() - t)
        print(f"  inflate {len(stream) / GB:.2f} GB with {name:<8} {best:6.2f}s  {len(stream) / best / 1e6:6.0f} MB/s")


def _floor(kind: str, base: dict, sha: dict) -> str:
    """What no verify can beat here, for the kinds whose decoder is the baseline's own library
    (zstd, lz4): the SHA-256 pass alone, or both passes' CPU spread over the cores."""
    if kind not in ("zstd", "lz4"):
        return "n/a"
    cores = min(2, os.cpu_count() or 1)
    return f"{max(sha['best'], (base['cpu'] + sha['cpu']) / cores) / base['best']:.3f} of the baseline"


def _have_clis() -> None:
    """zstd and lz4 (the baselines) from Debian's packages when the machine lacks them."""
    missing = [p for p in ("zstd", "lz4") if shutil.which(p) is None]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=3.3,
                    help="table data in the database (default 3.3 GB: a 1.0 GB gzip custom dump)")
    ap.add_argument("--tables", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="0.25 GB smoke run, 2 rounds")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=["gzip", "zstd", "lz4", "sql_gzip", "none"])
    ap.add_argument("--inflaters", action="store_true")
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.size_gb, args.rounds = 0.25, 2
    if args.make_only:
        files = make_inputs(args.size_gb, args.tables)
        for c in ("zstd", "lz4"):
            frames_file(files[c], c)
        return 0
    # Made in a child: this process stays small, so the RSS its children report is theirs.
    subprocess.run([sys.executable, __file__, "--make-only", "--size-gb", str(args.size_gb),
                    "--tables", str(args.tables)], check=True)
    files = make_inputs(args.size_gb, args.tables)
    _have_clis()
    backupctl = shutil.which("backupctl", path=str(Path(sys.executable).parent)) or "backupctl"
    for p in files.values():
        subprocess.run(["cat", str(p)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    floor = timed(["true"])[2]
    baseline = {"gzip": lambda p: [pg_bin("pg_restore"), "-f", os.devnull, str(p)],
                "none": lambda p: [pg_bin("pg_restore"), "-f", os.devnull, str(p)],
                "zstd": lambda p: ["zstd", "-q", "-t", str(frames_file(p, "zstd"))],
                "lz4": lambda p: ["lz4", "-q", "-t", str(frames_file(p, "lz4"))],
                "sql_gzip": lambda p: ["gzip", "-t", str(p)]}
    summary, ok = {}, True
    print(f"{os.cpu_count()} CPUs, {args.rounds} rounds alternated, {args.tables} tables; fork RSS floor {floor:.1f} MB")
    for kind in args.only:
        path = files[kind]
        cmds = {"baseline": baseline[kind](path), "openssl": ["openssl", "dgst", "-sha256", str(path)],
                "verify_w1": [backupctl, "verify", "--workers", "1", str(path)],
                "verify_w2": [backupctl, "verify", "--workers", "2", str(path)]}
        load = os.getloadavg()[0]
        r = race(cmds, args.rounds)
        base, sha, verify = r["baseline"], r["openssl"], r["verify_w2"]
        ratio = verify["best"] / base["best"]
        both = verify["best"] / max(base["best"], sha["best"])
        floor = _floor(kind, base, sha)
        goal, measured = (GOAL_NONE, both) if kind == "none" else (GOAL_RATIO, ratio)
        print(f"{kind}: {path.name} {path.stat().st_size / GB:.3f} GB; baseline: {' '.join(cmds['baseline'][:2])}; "
              f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
        for name, v in r.items():
            walls = " ".join(f"{w:6.2f}" for w in v["walls"])
            print(f"  {name:<10} wall s: {walls}   best {v['best']:6.2f}   CPU s {v['cpu']:6.2f}   peak RSS {v['rss']:6.1f} MB")
        print(f"  verify(2 workers) / baseline = {ratio:.3f}; / max(baseline, openssl) = {both:.3f}; "
              f"goal {'max ' if kind == 'none' else ''}<= {goal}: {'met' if measured <= goal else 'MISSED'}; "
              f"floor here {floor}; workers 1 -> 2: {r['verify_w1']['best'] / verify['best']:.2f}x")
        ok = ok and measured <= goal and verify["rss"] < GOAL_RSS_MB
        summary[kind] = {"file": path.name, "bytes": path.stat().st_size, "ratio": ratio, "ratio_vs_max": both,
                         "floor": floor, "load": load, **r}
    if args.inflaters:
        inflaters(files["gzip"])
    (OUT / "bench_verify.json").write_text(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
