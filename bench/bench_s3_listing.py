"""Benchmark: a full ListObjectsV2 walk on the sandbox's S3 server against moto 5.2.5 as shipped.

In one process, on one bucket of N keys (versioned, like production's), alternated round by
round (5 rounds): every page of ``--page`` keys asked of

* the backend alone: moto's ``list_objects_v2`` (walks, filters and sorts the whole bucket per
  page) against the indexed one of :mod:`sandbox.s3listing`;
* the whole response through moto's WSGI application (the HTTP layer without a socket):
  moto's backend and serializer against the adapted ones (:mod:`sandbox.s3responses`).

Both sides answer the same bytes (tests/test_sandbox_s3listing.py); this prints the time per
key and the ratio. No files are left behind (the bodies live in a temporary directory).

    .venv/bin/python bench/bench_s3_listing.py                   # 20 000 keys
    .venv/bin/python bench/bench_s3_listing.py --keys 100000
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(1, str(REPO))

from sandbox.s3blobs import BlobStore  # noqa: E402
from sandbox.s3moto import patch_moto  # noqa: E402

BUCKET = "bench-listing"
HEADERS = {"Host": "127.0.0.1:5000", "Authorization": "AWS4-HMAC-SHA256 Credential=sandbox-access-key/"
           "20261201/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=x"}


@contextmanager
def shipped(enabled: bool):
    """moto's own listing and serialization while the block runs (when ``enabled``)."""
    from moto.core import serialize
    from moto.s3.models import S3Backend
    from moto.s3.responses import S3Response

    saved = S3Backend.list_objects_v2, S3Response.list_objects_v2, serialize.parse_to_aware_datetime
    if enabled:
        S3Backend.list_objects_v2, S3Response.list_objects_v2, serialize.parse_to_aware_datetime = (
            f.shipped for f in saved)
    try:
        yield
    finally:
        S3Backend.list_objects_v2, S3Response.list_objects_v2, serialize.parse_to_aware_datetime = saved


def walk_backend(backend, page: int) -> int:
    bucket, token, n = backend.get_bucket(BUCKET), None, 0
    while True:
        keys, truncated, token = backend.list_objects_v2(bucket, "database/", None, token, None, page)
        n += len(keys)
        if not truncated:
            return n


def walk_wsgi(client, page: int) -> int:
    query, n = {"list-type": "2", "prefix": "database/", "max-keys": str(page)}, 0
    while True:
        body = client.get(f"/{BUCKET}", query_string=query, headers=HEADERS).data
        n += body.count(b"<Contents>")
        token = re.search(rb"<NextContinuationToken>([^<]+)<", body)
        if not token:
            return n
        query["continuation-token"] = token.group(1).decode()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=20_000)
    p.add_argument("--page", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-s3-listing-"))
    try:
        patch_moto(BlobStore(scratch))
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from moto.s3.models import s3_backends
        from werkzeug.test import Client

        backend = s3_backends["123456789012"]["aws"]
        backend.create_bucket(BUCKET, "us-east-1")
        backend.put_bucket_versioning(BUCKET, "Enabled")
        for i in range(args.keys):
            backend.put_object(BUCKET, f"database/trixtech_{i:07d}.dump", b"PGDMP")
        client = Client(DomainDispatcherApplication(create_backend_app))
        times: dict[tuple[str, bool], list[float]] = {}
        for _ in range(args.rounds):
            for layer, walk, target in (("backend", walk_backend, backend), ("response", walk_wsgi, client)):
                for as_shipped in (True, False):
                    with shipped(as_shipped):
                        t0 = time.perf_counter()
                        assert walk(target, args.page) == args.keys
                        times.setdefault((layer, as_shipped), []).append(time.perf_counter() - t0)
        print(f"{args.keys} keys, pages of {args.page}, {args.rounds} rounds alternated (median):")
        for layer in ("backend", "response"):
            moto, ours = (statistics.median(times[(layer, s)]) for s in (True, False))
            print(f"  {layer:8s}  moto as shipped {moto / args.keys * 1e3:.4f} ms/key ({moto:.2f} s), "
                  f"adapted {ours / args.keys * 1e3:.4f} ms/key ({ours:.2f} s) = {moto / ours:.1f}x")
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
