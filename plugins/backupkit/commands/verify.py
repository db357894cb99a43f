"""``backupctl verify PATH_OR_S3_URI... [--json]``: is each backup whole and restorable?

Local paths are verified in place. An ``s3://bucket/key`` object is streamed to a temp
file under the state directory and verified there; when S3 holds a full-object SHA-256
for it (uploaded with a checksum), that is the digest the file must match.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from backupkit.storage.objectstore import split_s3_uri
from backupkit.checks.stream import CHUNK
from backupkit.commands import EXIT_OK, EXIT_PROBLEM, UsageError
from backupkit.config import load_config
from backupkit.model import CheckResult
from backupkit.verify import ArtifactReport, verify_artifact


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check backups are whole and restorable (reads each once)",
                       description=__doc__.splitlines()[0])
    p.add_argument("artifacts", nargs="+", metavar="PATH_OR_S3_URI")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of lines")
    p.set_defaults(run=run)


def s3_expected_sha256(head: dict[str, Any]) -> str | None:
    """Hex SHA-256 of the whole object from a HeadObject response, if S3 has one.

    Multipart uploads carry a checksum of part checksums ("...-N", type COMPOSITE),
    which is not the file's digest, so it is not used.
    """
    value = head.get("ChecksumSHA256")
    if not value or "-" in value or head.get("ChecksumType") == "COMPOSITE":
        return None
    return base64.b64decode(value).hex()


def _failed(artifact: str, check: str, detail: str) -> ArtifactReport:
    return ArtifactReport(artifact, "unknown", 0, None, (CheckResult(artifact, check, False, detail),))


def verify_s3(uri: str, client: Any, tmp_dir: Path) -> ArtifactReport:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    try:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        tmp_dir.mkdir(parents=True, exist_ok=True)
        # Keep the key's name at the end: it is the hint messages compare the content with.
        with tempfile.NamedTemporaryFile(dir=tmp_dir, suffix="-" + PurePosixPath(key).name) as tmp:
            body = client.get_object(Bucket=bucket, Key=key, IfMatch=head["ETag"])["Body"]
            for chunk in body.iter_chunks(CHUNK):
                tmp.write(chunk)
            tmp.flush()
            return verify_artifact(Path(tmp.name), expected_sha256=s3_expected_sha256(head),
                                   use_sidecar=False, label=uri)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            return _failed(uri, "exists", "no such S3 object")
        return _failed(uri, "s3_read", str(exc))
    except BotoCoreError as exc:  # endpoint unreachable, no credentials, ...
        return _failed(uri, "s3_read", str(exc))


def _warnings(report: ArtifactReport) -> list:
    """Checks that passed with something to say (set-uid members, duplicate names, ...)."""
    return [r for r in report.results if r.ok and r.detail.startswith("WARNING:")]


def run(args: argparse.Namespace) -> int:
    s3_uris = [a for a in args.artifacts if a.startswith("s3://")]
    for uri in s3_uris:
        try:
            split_s3_uri(uri)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    client = tmp_dir = None
    if s3_uris:
        from backupkit.storage.objectstore import s3_client

        client = s3_client(endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
        tmp_dir = load_config(args.config).state_dir / "tmp"
    reports = [verify_s3(a, client, tmp_dir) if a.startswith("s3://") else verify_artifact(Path(a), label=a)
               for a in args.artifacts]
    if args.json:
        print(json.dumps([{"path": r.artifact, "ok": r.ok, "kind": r.kind, "sha256": r.sha256,
                           "problems": [{"check": p.check, "detail": p.detail} for p in r.problems()],
                           "warnings": [{"check": w.check, "detail": w.detail} for w in _warnings(r)]}
                          for r in reports], indent=2))
    else:
        for r in reports:
            for p in [*r.problems(), *_warnings(r)]:
                print(f"{p.artifact}: {p.check}: {p.detail}")
            if r.ok:
                print(f"{r.artifact}: ok ({r.kind}, {r.size} bytes, sha256 {r.sha256 or 'n/a'})")
    return EXIT_OK if all(r.ok for r in reports) else EXIT_PROBLEM
