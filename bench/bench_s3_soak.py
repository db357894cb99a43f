"""Benchmark: the sandbox's S3 server keeps disk and memory bounded by the data it stores.

Against the running sandbox (``make up``; endpoint and pid from ``.sandbox/``): 50
``ListObjectVersions`` walks of the whole bucket and 5 weekly maintenance runs (the weekly
DAG's collectors and its report upload, which lists every version too). Before and after it
measures, for the S3 server's process: the body files on disk (``.sandbox/s3/blobs``), the
deleted-but-open files it holds (``/proc/PID/fd``), its RSS; and the data stored (the sum of
every object version's size). Growth of disk beyond the growth of the data stored, or any
deleted-open file, misses the goal.

Baseline in the same process, alternated round by round: moto's own ``moto_server`` and the
adapted server, each holding the same synthetic bucket (``--baseline-objects`` x 1 MiB),
listed ``--baseline-rounds`` times; moto's own grows by about the bucket's size per listing.

    .venv/bin/python bench/bench_s3_soak.py                 # the sandbox, 50 listings, 5 weekly runs
    .venv/bin/python bench/bench_s3_soak.py --quick         # no sandbox needed: synthetic bucket only
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(1, str(REPO))

from sandbox import s3server  # noqa: E402
from sandbox.stack import Layout, S3_PROCESS, load_ports, running_pid  # noqa: E402

MiB = 1 << 20
RSS_SLACK = 64 * MiB  # allocator noise: Python keeps some freed memory


def deleted_open(pid: int) -> tuple[int, int]:
    """(files, bytes) the process holds open that were deleted."""
    files = size = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if "(deleted)" in os.readlink(fd):
                files += 1
                size += os.stat(fd).st_size
        except OSError:
            pass
    return files, size


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def disk(path: Path | None) -> int:
    if path is None or not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def stored(client, bucket: str) -> tuple[int, int]:
    """(versions, bytes) of every object version in the bucket."""
    n = size = 0
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", ()):
            n += 1
            size += int(v.get("Size", 0))
    return n, size


def snapshot(pid: int, client, bucket: str, blobs: Path | None) -> dict:
    time.sleep(2.5)  # the adapted server drops unreferenced bodies about a second after a change
    files, held = deleted_open(pid)
    versions, data = stored(client, bucket)
    return {"disk": disk(blobs), "deleted_files": files, "deleted_bytes": held, "rss": rss(pid),
            "versions": versions, "data": data}


def weekly_run(config, client) -> None:
    """What backup_weekly_maintenance does against the bucket (collectors and the report upload)."""
    from backupkit import clock
    from backupkit.jobs import weekly as jobs
    from backupkit.reports import weekly
    from backupkit.reports.render import publish_files, report_prefix
    from backupkit.storage.objectstore import Bucket

    now, bucket = clock.now(), Bucket(client, config.bucket)
    sections = {
        "trends": jobs.collect_trends(config, now=now, bucket=bucket),
        "failures": jobs.failure_pattern(config, now=now, bucket=bucket),
        "storage": jobs.storage_usage(config, bucket, now=now, record_history=False,
                                      cost_explorer=lambda: {"reachable": False, "reason": "benchmark"}),
        "encryption": jobs.encryption_report(config, bucket),
    }
    prefix = report_prefix(config.reports.prefix, "weekly-soak", now.date())
    doc = weekly.weekly_doc(report_date=now.date(), location=f"s3://{config.bucket}/{prefix}report.md", **sections)
    with tempfile.TemporaryDirectory() as tmp:
        publish_files(doc.files(), bucket=bucket, prefix=prefix, sse=config.reports.sse_algorithm, local_dir=Path(tmp))


def print_growth(title: str, before: dict, after: dict) -> tuple[int, int, int]:
    data = after["data"] - before["data"]
    grew = after["disk"] + after["deleted_bytes"] - before["disk"] - before["deleted_bytes"]
    mem = after["rss"] - before["rss"]
    print(f"{title}:")
    print(f"  data stored   {before['data'] / MiB:10.1f} -> {after['data'] / MiB:10.1f} MiB ({data / MiB:+.1f}), "
          f"{before['versions']} -> {after['versions']} versions")
    print(f"  body files    {before['disk'] / MiB:10.1f} -> {after['disk'] / MiB:10.1f} MiB")
    print(f"  deleted-open  {before['deleted_files']} files {before['deleted_bytes'] / MiB:.1f} MiB -> "
          f"{after['deleted_files']} files {after['deleted_bytes'] / MiB:.1f} MiB")
    print(f"  RSS           {before['rss'] / MiB:10.1f} -> {after['rss'] / MiB:10.1f} MiB ({mem / MiB:+.1f})")
    print(f"  disk growth beyond the data stored: {(grew - data) / MiB:+.1f} MiB")
    return grew - data, after["deleted_files"], mem


def sandbox_soak(listings: int, weekly_runs: int) -> bool:
    layout = Layout()
    pid = running_pid(layout.pid_file("moto"), expect=S3_PROCESS)
    port = load_ports(layout).get("s3")
    if pid is None or port is None:
        print("the sandbox's S3 server is not running: `make up` first (or --quick for the synthetic part only)")
        return False
    from sandbox.stack import sandbox_env

    os.environ.update(sandbox_env(layout.root, load_ports(layout).get("postgres", 5433), f"http://127.0.0.1:{port}"))
    from backupkit.config import load_config

    config = load_config()
    client = s3server.s3_client(f"http://127.0.0.1:{port}")
    before = snapshot(pid, client, config.bucket, layout.s3 / "blobs")
    t0 = time.monotonic()
    for _ in range(listings):
        stored(client, config.bucket)
    t_list = time.monotonic() - t0
    for _ in range(weekly_runs):
        weekly_run(config, client)
    t_all = time.monotonic() - t0
    after = snapshot(pid, client, config.bucket, layout.s3 / "blobs")
    print(f"\nsandbox bucket s3://{config.bucket} (pid {pid}): {listings} version listings in {t_list:.1f}s, "
          f"{weekly_runs} weekly runs in {t_all - t_list:.1f}s")
    beyond, held, mem = print_growth("sandbox", before, after)
    ok = beyond <= 0 and held == 0 and mem <= RSS_SLACK
    print(f"  goal (no disk growth beyond the data stored, no deleted-open file, RSS +<= {RSS_SLACK // MiB} MiB): "
          + ("met" if ok else "MISSED"))
    return ok


def baseline(objects: int, rounds: int) -> bool:
    """moto_server as shipped vs the adapted server, same bucket, listings alternated."""
    with tempfile.TemporaryDirectory() as tmp:
        from backupkit.pgserver import free_port

        plain_port = free_port()
        env = {**os.environ, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(256 * 1024), "TMPDIR": tmp}
        plain = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-p", str(plain_port)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        adapted = s3server.MotoServer(data_dir=Path(tmp) / "adapted").start()
        try:
            time.sleep(2)
            servers = {"moto as shipped": (plain.pid, s3server.s3_client(f"http://127.0.0.1:{plain_port}"), None),
                       "adapted": (adapted.proc.pid, adapted.client(), Path(tmp) / "adapted" / "blobs")}
            for _, client, _ in servers.values():
                client.create_bucket(Bucket="soak-baseline")
                client.put_bucket_versioning(Bucket="soak-baseline", VersioningConfiguration={"Status": "Enabled"})
                for i in range(objects):
                    client.put_object(Bucket="soak-baseline", Key=f"k{i:04d}", Body=random.Random(i).randbytes(MiB))
            before = {name: snapshot(pid, c, "soak-baseline", b) for name, (pid, c, b) in servers.items()}
            for _ in range(rounds):
                for name, (pid, client, _) in servers.items():
                    stored(client, "soak-baseline")
            after = {name: snapshot(pid, c, "soak-baseline", b) for name, (pid, c, b) in servers.items()}
            print(f"\nbaseline: {objects} x 1 MiB objects, {rounds} listings each, alternated "
                  "(+1 listing each in the measurement)")
            growth = {name: print_growth(name, before[name], after[name]) for name in servers}
        finally:
            plain.terminate()
            plain.wait(10)
            adapted.stop()
    shipped = growth["moto as shipped"][0] + growth["moto as shipped"][1]
    print(f"  moto as shipped held {growth['moto as shipped'][1]} deleted-open files "
          f"({(growth['moto as shipped'][0]) / MiB:+.0f} MiB, {growth['moto as shipped'][0] / max(1, objects * MiB * (rounds + 1)):.2f}x "
          f"the bucket per listing); adapted: {growth['adapted'][1]} files, {growth['adapted'][0] / MiB:+.1f} MiB")
    return growth["adapted"][0] <= 0 and growth["adapted"][1] == 0 and shipped > 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listings", type=int, default=50)
    ap.add_argument("--weekly-runs", type=int, default=5)
    ap.add_argument("--baseline-objects", type=int, default=40)
    ap.add_argument("--baseline-rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="the synthetic baseline only (no sandbox needed)")
    args = ap.parse_args()
    ok = baseline(args.baseline_objects, args.baseline_rounds)
    if not args.quick:
        ok = sandbox_soak(args.listings, args.weekly_runs) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
