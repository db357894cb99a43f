"""Is this backup restorable? One pass over the file answers, and hashes it on the way.

The kind of artifact is taken from its content (:mod:`backupkit.checks.detect`) and must
agree with its name and configured format; the matching reader consumes the stream
while :class:`~backupkit.checks.stream.Tap` hashes it, so verifying reads each byte once,
in flat memory. No input escapes as a traceback: whatever a reader raises becomes a
verdict naming the artifact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from backupkit.checks.archive import check_tar
from backupkit.checks.detect import HEAD, detect_dir, detect_head, mismatch
from backupkit.checks.pgdump import check_pg_custom, check_pg_directory, check_pg_tar, check_sql
from backupkit.checks.stream import Tap
from backupkit.model import CheckResult
from backupkit.model import problems as _problems
from backupkit.storage.localfs import (SIDECAR_LIMIT, SidecarError, parse_sidecar, read_sidecar, sha256_file,
                                       sidecar_path)


def default_workers() -> int:
    """The cores this process may run on (a container or cgroup may give it fewer)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def configured_format(source) -> str:
    """The format a configured source's backups must have (see detect.FORMAT_KINDS), as its kind says."""
    return source.kind_impl.expected_format(source)


@dataclass(frozen=True)
class VerifyOptions:
    workers: int = 0  # 0: default_workers()
    deep: bool = False  # also pg_restore -f /dev/null on custom dumps

    @property
    def threads(self) -> int:
        return self.workers or default_workers()


@dataclass(frozen=True)
class ArtifactReport:
    artifact: str  # path or s3 uri as given
    kind: str  # one of backupkit.checks.detect.KINDS
    size: int
    sha256: str | None  # hex digest of the bytes read (None for directories)
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def problems(self) -> list[CheckResult]:
        return _problems(self.results)

    def warnings(self) -> list[CheckResult]:
        return [r for r in self.results if r.ok and r.detail.startswith("WARNING:")]

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "kind": self.kind, "size": self.size, "sha256": self.sha256,
                "ok": self.ok, "results": [r.to_dict() for r in self.results]}


def _manifest_rows(artifact: str, path: Path, rows: dict[str, int] | None) -> list[CheckResult]:
    """Rows per table in the dump against ``NAME.manifest.json`` (docs/manifest.md), when there is one."""
    if rows is None:
        return []
    from backupkit.restore.verify_rows import ManifestError, compare_row_counts, manifest_path, read_manifest

    try:
        manifest = read_manifest(path)
    except (ManifestError, OSError) as exc:
        return [CheckResult(artifact, "manifest_rows", False, f"unreadable manifest: {exc}")]
    if manifest is None:
        return []
    compared = compare_row_counts({k.replace('"', ""): v for k, v in rows.items()}, manifest.tables,
                                  artifact=artifact)
    bad = [f"{r.check[5:]}: {r.detail.replace('the restore', 'the dump').replace('restored', 'dumped')}"
           for r in compared if not r.ok]
    name = manifest_path(path).name
    if bad:
        return [CheckResult(artifact, "manifest_rows", False, f"dump differs from {name}: " + "; ".join(bad[:5]))]
    return [CheckResult(artifact, "manifest_rows", True, f"rows of all {len(compared)} tables match {name}")]


def _sql(compression: str | None):
    def run(tap: Tap, artifact: str, path: Path, opts: VerifyOptions) -> list[CheckResult]:
        results, scan = check_sql(tap, artifact, compression)
        if scan is not None and not scan.problems:
            results += _manifest_rows(artifact, path, scan.copy_rows)
        return results

    return run


def _custom(tap: Tap, artifact: str, path: Path, opts: VerifyOptions) -> list[CheckResult]:
    results, scan = check_pg_custom(tap, artifact, path, workers=opts.threads, deep=opts.deep)
    if not scan.problems and scan.header is not None:
        results += _manifest_rows(artifact, path, scan.copy_rows)
    return results


# (tap, artifact, path, options) -> results; each consumes (at least part of) the tap's stream.
_FORMAT_CHECKS: dict[str, Callable[[Tap, str, Path, VerifyOptions], list[CheckResult]]] = {
    "pg_custom": _custom,
    "pg_tar": lambda tap, a, p, o: check_pg_tar(tap, a),
    "pg_tar_gzip": lambda tap, a, p, o: check_pg_tar(tap, a, gzipped=True),
    "sql": _sql(None),
    "sql_gzip": _sql("gzip"),
    "sql_zstd": _sql("zstd"),
    "sql_lz4": _sql("lz4"),
    "tar_gzip": lambda tap, a, p, o: check_tar(tap, a, gzipped=True),
    "tar": lambda tap, a, p, o: check_tar(tap, a, gzipped=False),
}


def _format_result(artifact: str, name: str, kind: str, why: str, configured: str | None) -> CheckResult:
    if kind == "unknown":
        return CheckResult(artifact, "format", False, f"unrecognised content: {why}")
    problem = mismatch(kind, name, configured)
    return CheckResult(artifact, "format", problem is None, problem or kind)


def _sha256_result(artifact: str, path: Path, digest: str, expected: str | None, use_sidecar: bool,
                   source: str) -> CheckResult:
    if expected is None and use_sidecar:
        try:
            expected = read_sidecar(path)
        except (SidecarError, OSError) as exc:
            return CheckResult(artifact, "sha256", False, f"malformed sidecar: {exc}")
        source = f"sidecar {sidecar_path(path).name}"
    if expected is None:
        return CheckResult(artifact, "sha256", True, f"no sidecar; sha256={digest}")
    if digest != expected.lower():
        return CheckResult(artifact, "sha256", False, f"mismatch: file has {digest}, {source} says {expected.lower()}")
    return CheckResult(artifact, "sha256", True, f"matches {source}")


def directory_sidecar(directory: Path) -> tuple[bool, str] | None:
    """(ok, detail) for a directory dump's ``DIR.sha256`` (``cd DIR && sha256sum *``), None without one.

    Every file of the directory must be listed once and match; a listed file that is not
    there, or one that is not listed, fails (docs/dump-rules.md).
    """
    side = sidecar_path(directory)
    try:
        with open(side, "rb") as f:
            data = f.read(SIDECAR_LIMIT * 256 + 1)
    except FileNotFoundError:
        return None
    try:
        if len(data) > SIDECAR_LIMIT * 256:
            raise SidecarError(f"{side.name}: larger than {SIDECAR_LIMIT * 256} bytes, not a sidecar")
        entries = parse_sidecar(data.decode("utf-8"), where=side.name)
    except (SidecarError, UnicodeDecodeError) as exc:
        return False, f"malformed sidecar: {exc}"
    listed: dict[str, str] = {}
    for digest, name in entries:
        parts = Path(name or "").parts
        parts = parts[1:] if parts and parts[0] in (".", directory.name) else parts
        rel = "/".join(parts)
        if not rel or ".." in parts or (name or "").startswith("/"):
            return False, f"malformed sidecar: {side.name}: {name!r} is not a file inside {directory.name}"
        if rel in listed:
            return False, f"malformed sidecar: {side.name} lists {rel!r} twice"
        listed[rel] = digest
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    for rel, digest in sorted(listed.items()):
        if rel not in present:
            return False, f"{side.name} lists {rel!r}, which is not in the directory"
        actual = sha256_file(directory / rel)[0]
        if actual != digest:
            return False, f"mismatch: {rel} has {actual}, {side.name} says {digest}"
    unlisted = sorted(present - set(listed))
    if unlisted:
        return False, f"{side.name} does not list {', '.join(unlisted[:5])}" + (" ..." if len(unlisted) > 5 else "")
    return True, f"all {len(listed)} files match {side.name}"


def _unreadable(artifact: str, check: str, detail: str) -> ArtifactReport:
    return ArtifactReport(artifact, "unknown", 0, None, (CheckResult(artifact, check, False, detail),))


def _verify_directory(path: Path, artifact: str, expected_sha256: str | None, configured: str | None,
                      use_sidecar: bool) -> ArtifactReport:
    kind, why = detect_dir(path)
    results = [_format_result(artifact, path.name, kind, why, configured)]
    if kind == "pg_directory":
        results += check_pg_directory(path, artifact)
        side = directory_sidecar(path) if use_sidecar else None
        if side is not None:
            results.append(CheckResult(artifact, "sha256", *side))
    if expected_sha256:
        results.append(CheckResult(artifact, "sha256", False, "a directory has no single SHA-256 to compare"))
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return ArtifactReport(artifact, kind, size, None, tuple(results))


def verify_artifact(path: Path, *, expected_sha256: str | None = None, use_sidecar: bool = True,
                    label: str | None = None, configured_format: str | None = None,
                    options: VerifyOptions = VerifyOptions(), name: str | None = None,
                    expected_source: str = "expected digest") -> ArtifactReport:
    """Check one backup (file or pg_dump directory) and hash it, reading it once.

    ``configured_format`` is the source's ``dump_format`` (or ``"files"``); ``name`` the
    name to judge the content against when ``path`` is a temporary copy (an S3 object).
    """
    path = Path(path)
    artifact = label or str(path)
    try:
        if path.is_dir():
            return _verify_directory(path, artifact, expected_sha256, configured_format, use_sidecar)
        return _verify_file(path, artifact, (expected_sha256, expected_source), use_sidecar, configured_format,
                            options, name or path.name)
    except Exception as exc:  # a reader's bug must be a verdict too, never a traceback
        return _unreadable(artifact, "verify", f"verification failed: {type(exc).__name__}: {exc}")


def _verify_file(path: Path, artifact: str, expected: tuple[str | None, str], use_sidecar: bool,
                 configured: str | None, options: VerifyOptions, name: str) -> ArtifactReport:
    if path.exists() and not path.is_file():  # a fifo or device would never end
        return _unreadable(artifact, "regular_file", "not a regular file or directory")
    try:
        raw = path.open("rb")
    except OSError as exc:
        check = "exists" if isinstance(exc, FileNotFoundError) else "readable"
        return _unreadable(artifact, check, exc.strerror or str(exc))
    with raw:
        tap = Tap(raw)
        kind, why = detect_head(tap.peek(HEAD))
        if kind == "empty":
            results = [CheckResult(artifact, "not_empty", False, why)]
        else:
            results = [CheckResult(artifact, "not_empty", True, f"{os.fstat(raw.fileno()).st_size} bytes"),
                       _format_result(artifact, name, kind, why, configured)]
            if kind in _FORMAT_CHECKS:
                results += _FORMAT_CHECKS[kind](tap, artifact, path, options)
        tap.drain()
    digest = tap.hexdigest()
    results.append(_sha256_result(artifact, path, digest, expected[0], use_sidecar, expected[1]))
    return ArtifactReport(artifact, kind, tap.bytes_read, digest, tuple(results))
