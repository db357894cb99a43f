"""Benchmark: the S3 copy check of a large multipart object reads (almost) nothing from S3.

Starts a loopback S3 (moto server), uploads a generated file (default 1 GiB) in parts
with SHA-256 checksums as boto3's ``upload_file`` does for backups, then runs the copy
check twice: a cold run (the composite checksum is computed from the local file, one
streamed read) and a warm run (the composite remembered in the state store). Every byte
the S3 client receives is counted by a botocore event hook (response headers and bodies;
the streamed GetObject body, if any, is counted by the check itself).

Goal (issue 2): under 1 MB received from S3 for a 1 GB object with a stored checksum.

    .venv/bin/python bench/bench_s3_check.py             # 1024 MiB
    .venv/bin/python bench/bench_s3_check.py --size-mb 64  # smoke
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(1, str(REPO))

from boto3.s3.transfer import TransferConfig  # noqa: E402

from backupkit.checks.s3copy import s3_copy_report  # noqa: E402
from backupkit.storage.objectstore import Bucket  # noqa: E402
from sandbox.s3server import MotoServer, create_production_bucket  # noqa: E402
from backupkit.state import VerificationState  # noqa: E402

MiB = 1024 * 1024
BUCKET = "trixtech-backups"
GOAL_BYTES = 1_000_000


class ReceivedBytes:
    """Counts what the S3 client receives: status line, headers and (non-streamed) bodies."""

    def __init__(self, client) -> None:
        self.total = 0
        self.requests = 0
        client.meta.events.register("after-call.s3", self._after_call)

    def _after_call(self, http_response=None, model=None, **_) -> None:
        if http_response is None:
            return
        self.requests += 1
        self.total += 16 + sum(len(k) + len(v) + 4 for k, v in http_response.headers.items())
        if not (model is not None and model.has_streaming_output):
            self.total += len(http_response.content or b"")

    def reset(self) -> None:
        self.total = self.requests = 0


def generate(path: Path, size: int) -> str:
    """``size`` bytes of incompressible data (every MiB distinct); returns the SHA-256."""
    block = os.urandom(MiB)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        written, i = 0, 0
        while written < size:
            chunk = (i.to_bytes(8, "big") + block[8:])[: size - written]
            f.write(chunk)
            h.update(chunk)
            written += len(chunk)
            i += 1
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="object size in MiB (default 1024)")
    ap.add_argument("--part-mb", type=int, default=8, help="multipart chunk size in MiB (boto3's default 8)")
    ap.add_argument("--workdir", type=Path, help="where the generated file goes (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = Path(tmp) / "trixtech_20250615_020000.dump"
        size = args.size_mb * MiB
        t = time.perf_counter()
        sha = generate(path, size)
        gen_s = time.perf_counter() - t
        server = MotoServer().start()
        try:
            client = server.client()
            create_production_bucket(client, BUCKET)
            key = f"database/{path.name}"
            t = time.perf_counter()
            client.upload_file(str(path), BUCKET, key, ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                               Config=TransferConfig(multipart_threshold=args.part_mb * MiB,
                                                     multipart_chunksize=args.part_mb * MiB, max_concurrency=4))
            upload_s = time.perf_counter() - t
            counter = ReceivedBytes(client)
            state = VerificationState(Path(tmp) / "state")
            runs = {}
            for run in ("cold", "warm"):
                counter.reset()
                t = time.perf_counter()
                rep = s3_copy_report(Bucket(client, BUCKET), key, local_size=size, local_sha256=sha, local_path=path,
                                     artifact=f"trixtech-db/{path.name}", composite_cache=state.checksum_cache)
                wall = time.perf_counter() - t
                if not rep.ok:
                    print("\n".join(r.line() for r in rep.results), file=sys.stderr)
                    return 1
                runs[run] = {"wall_s": round(wall, 3), "received_bytes": counter.total + rep.body_bytes_read,
                             "object_body_bytes": rep.body_bytes_read, "local_bytes_read": rep.local_bytes_read,
                             "requests": counter.requests, "method": rep.method,
                             "detail": rep.results[-1].detail}
            state.close()
        finally:
            server.stop()

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    parts = -(-size // (args.part_mb * MiB))
    print(f"object: {args.size_mb} MiB in {parts} parts of {args.part_mb} MiB, SHA-256 checksums "
          f"(generated in {gen_s:.1f} s, uploaded in {upload_s:.1f} s)")
    for run, r in runs.items():
        print(f"{run:>4}: {r['wall_s']:.2f} s, {r['requests']} requests, received {r['received_bytes']} bytes from S3 "
              f"(object body {r['object_body_bytes']}), read {r['local_bytes_read'] / MiB:.0f} MiB locally; "
              f"{r['detail']}")
    ok = all(r["received_bytes"] < GOAL_BYTES for r in runs.values())
    print(f"goal: under {GOAL_BYTES} bytes received from S3: {'met' if ok else 'MISSED'}; "
          f"peak RSS of this process {peak_mb:.0f} MB")
    if args.json:
        print(json.dumps({"size_mb": args.size_mb, "parts": parts, "runs": runs, "goal_met": ok,
                          "peak_rss_mb": round(peak_mb)}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
