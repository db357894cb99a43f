"""``backupctl verify PATH_OR_S3_URI... [--deep] [--workers N] [--json]``: is each backup whole and restorable?

Local paths are verified in place. An ``s3://bucket/key`` object is streamed to a temp
file under the state directory and verified there, with its sidecar ``key.sha256`` from
the bucket, and compared with the checksum S3 stored for it by the same code as the
daily S3 copy check (:mod:`backupkit.checks.s3copy`: whole-object or multipart composite).
A path or key that belongs to a configured source must also have that source's format.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from backupkit.checks.stream import CHUNK
from backupkit.commands import EXIT_OK, EXIT_PROBLEM, UsageError
from backupkit.config import Config, ConfigError, load_config
from backupkit.model import CheckResult
from backupkit.storage.localfs import SIDECAR_LIMIT, SIDECAR_SUFFIX, SidecarError, digest_for, parse_sidecar
from backupkit.storage.objectstore import Bucket, client_errors, describe_error, split_s3_uri
from backupkit.verify import ArtifactReport, VerifyOptions, configured_format, verify_artifact


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check backups are whole and restorable (reads each once)",
                       description=__doc__.splitlines()[0])
    p.add_argument("artifacts", nargs="+", metavar="PATH_OR_S3_URI")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of lines")
    p.add_argument("--deep", action="store_true",
                   help="also run pg_restore -f /dev/null on custom dumps (a second full reader; slower)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="threads decoding data blocks (default: verification.workers, else every core)")
    p.set_defaults(run=run)


def _failed(artifact: str, check: str, detail: str) -> ArtifactReport:
    return ArtifactReport(artifact, "unknown", 0, None, (CheckResult(artifact, check, False, detail),))


def _source_format(config: Config | None, *, directory: Path | None = None, key: str | None = None) -> str | None:
    """The configured format of the source a local path or S3 key belongs to, if any."""
    if config is None:
        return None
    for src in config.sources:
        if directory is not None and src.local_dir.resolve() == directory.parent.resolve() \
                and src.pattern.timestamp(directory.name) is not None:
            return configured_format(src)
        if key is not None and key.startswith(src.s3_prefix) \
                and src.pattern.timestamp(PurePosixPath(key).name) is not None:
            return configured_format(src)
    return None


def _s3_sidecar(bucket: Bucket, key: str) -> tuple[str | None, CheckResult | None]:
    """The digest ``key.sha256`` gives in the bucket (same rule as local sidecars), or a failed result."""
    side = key + SIDECAR_SUFFIX
    where = bucket.uri(side)
    try:
        data = bucket.read_small(side, limit=SIDECAR_LIMIT)
    except ValueError as exc:
        return None, CheckResult(bucket.uri(key), "sha256", False, f"malformed sidecar: {exc}")
    if data is None:
        return None, None
    try:
        text = data.decode("utf-8")
        return digest_for(parse_sidecar(text, where=where), PurePosixPath(key).name, where=where), None
    except (SidecarError, UnicodeDecodeError) as exc:
        return None, CheckResult(bucket.uri(key), "sha256", False, f"malformed sidecar: {exc}")


def verify_s3(uri: str, client: Any, tmp_dir: Path, *, options: VerifyOptions = VerifyOptions(),
              config: Config | None = None) -> ArtifactReport:
    from backupkit.checks.s3copy import s3_copy_report

    name, key = split_s3_uri(uri)
    bucket = Bucket(client, name)
    try:
        head = bucket.head(key, checksums=True)
        if head is None:
            return _failed(uri, "exists", bucket.missing(key))
        expected, side_problem = _s3_sidecar(bucket, key)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=tmp_dir, suffix=".verify") as tmp:
            body = bucket.body(key, if_match=head["ETag"])
            try:
                for chunk in body.iter_chunks(CHUNK):
                    tmp.write(chunk)
            finally:
                body.close()
            tmp.flush()
            report = verify_artifact(Path(tmp.name), expected_sha256=expected, use_sidecar=False, label=uri,
                                     expected_source=f"sidecar {PurePosixPath(key).name}{SIDECAR_SUFFIX} in the bucket",
                                     name=PurePosixPath(key).name, options=options,
                                     configured_format=_source_format(config, key=key))
            stored = s3_copy_report(bucket, key, local_size=report.size, local_sha256=report.sha256,
                                    local_path=Path(tmp.name), artifact=uri, allow_download=False)
    except client_errors() as exc:
        return _failed(uri, "s3_read", describe_error(exc, uri))
    results = [*report.results, *(r for r in stored.results if r.check == "s3_checksum")]
    if side_problem is not None:
        results.append(side_problem)
    return ArtifactReport(uri, report.kind, report.size, report.sha256, tuple(results))


def _config(args: argparse.Namespace, needed: bool) -> Config | None:
    """The configuration; optional for local paths (they verify without one)."""
    try:
        return load_config(args.config)
    except ConfigError:
        if needed or args.config:
            raise
        return None


def _report_json(r: ArtifactReport) -> dict:
    return {"path": r.artifact, "ok": r.ok, "kind": r.kind, "sha256": r.sha256,
            "problems": [{"check": p.check, "detail": p.detail} for p in r.problems()],
            "warnings": [{"check": w.check, "detail": w.detail} for w in r.warnings()]}


def _one(a: str, client: Any, config: Config | None, options: VerifyOptions) -> ArtifactReport:
    try:
        if a.startswith("s3://"):
            return verify_s3(a, client, config.state_dir / "tmp", options=options, config=config)
        path = Path(a)
        return verify_artifact(path, label=a, options=options, configured_format=_source_format(config, directory=path))
    except Exception as exc:  # one unreadable artifact must not hide the others, nor break --json
        return _failed(a, "verify", f"verification failed: {type(exc).__name__}: {exc}")


def run(args: argparse.Namespace) -> int:
    s3_uris = [a for a in args.artifacts if a.startswith("s3://")]
    for uri in s3_uris:
        try:
            split_s3_uri(uri)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    config = _config(args, needed=bool(s3_uris))
    client = None
    if s3_uris:
        from backupkit.storage.objectstore import s3_client

        client = s3_client(endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    workers = args.workers or (config.verification_workers if config else 0)
    options = VerifyOptions(workers=workers, deep=args.deep)
    reports = [_one(a, client, config, options) for a in args.artifacts]
    if args.json:
        print(json.dumps([_report_json(r) for r in reports], indent=2))
    else:
        for r in reports:
            for p in r.problems():
                print(f"{p.artifact}: {p.check}: {p.detail}")
            for w in r.warnings():  # a schema-only dump, set-uid members, duplicate names, ...
                print(f"{w.artifact}: {w.check}: {w.detail}")
            if r.ok:
                print(f"{r.artifact}: ok ({r.kind}, {r.size} bytes, sha256 {r.sha256 or 'n/a'})")
    return EXIT_OK if all(r.ok for r in reports) else EXIT_PROBLEM
