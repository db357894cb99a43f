"""Is this backup restorable? One pass over the file answers, and hashes it on the way.

The kind of artifact is taken from its content (:mod:`backupkit.checks.detect`); the
matching format check consumes the stream while :class:`~backupkit.checks.stream.Tap`
hashes it (custom dumps: pg_restore reads the file itself, concurrently with the hash
pass, see :func:`~backupkit.checks.pgdump.check_pg_custom`), so verifying costs about as
much as the slower of ``sha256sum`` and ``pg_restore`` alone, in flat memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from backupkit.storage.localfs import read_sidecar, sidecar_path
from backupkit.checks.archive import check_tar
from backupkit.checks.detect import HEAD, detect_dir, detect_head, name_hint
from backupkit.checks.pgdump import check_pg_custom, check_pg_directory, check_pg_tar, check_sql
from backupkit.checks.stream import Tap
from backupkit.model import CheckResult
from backupkit.model import problems as _problems


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

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "kind": self.kind, "size": self.size, "sha256": self.sha256,
                "ok": self.ok, "results": [r.to_dict() for r in self.results]}


# (tap, artifact, path) -> results; every check but pg_custom consumes the tap's stream.
_FORMAT_CHECKS: dict[str, Callable[[Tap, str, Path], list[CheckResult]]] = {
    "pg_custom": check_pg_custom,
    "pg_tar": lambda tap, a, _: check_pg_tar(tap, a),
    "sql_gzip": lambda tap, a, _: check_sql(tap, a, gzipped=True),
    "sql": lambda tap, a, _: check_sql(tap, a, gzipped=False),
    "tar_gzip": lambda tap, a, _: check_tar(tap, a, gzipped=True),
    "tar": lambda tap, a, _: check_tar(tap, a, gzipped=False),
}


def _format_result(artifact: str, name: str, kind: str, why: str) -> CheckResult:
    hint = name_hint(name)
    if kind == "unknown":
        return CheckResult(artifact, "format", False,
                           f"unrecognised content: {why}" + (f"; the name suggests {hint}" if hint else ""))
    mismatch = f" (the name suggests {hint})" if hint and hint != kind and not (hint == "tar" and kind == "pg_tar") else ""
    return CheckResult(artifact, "format", True, kind + mismatch)


def _sha256_result(artifact: str, path: Path, digest: str, expected: str | None, use_sidecar: bool) -> CheckResult:
    source = "expected digest"
    if expected is None and use_sidecar:
        try:
            expected = read_sidecar(path)
        except (ValueError, OSError) as exc:
            return CheckResult(artifact, "sha256", False, f"malformed sidecar: {exc}")
        source = f"sidecar {sidecar_path(path).name}"
    if expected is None:
        return CheckResult(artifact, "sha256", True, f"no sidecar; sha256={digest}")
    if digest != expected.lower():
        return CheckResult(artifact, "sha256", False, f"mismatch: file has {digest}, {source} says {expected.lower()}")
    return CheckResult(artifact, "sha256", True, f"matches {source}")


def _unreadable(artifact: str, check: str, detail: str) -> ArtifactReport:
    return ArtifactReport(artifact, "unknown", 0, None, (CheckResult(artifact, check, False, detail),))


def verify_artifact(path: Path, *, expected_sha256: str | None = None, use_sidecar: bool = True,
                    label: str | None = None) -> ArtifactReport:
    """Check one backup (file or pg_dump directory) and hash it, reading it once."""
    path = Path(path)
    artifact = label or str(path)
    if path.is_dir():
        kind, why = detect_dir(path)
        results = [_format_result(artifact, path.name, kind, why)]
        if kind == "pg_directory":
            results += check_pg_directory(path, artifact)
        if expected_sha256:
            results.append(CheckResult(artifact, "sha256", False, "a directory has no single SHA-256 to compare"))
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return ArtifactReport(artifact, kind, size, None, tuple(results))
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
            results = [CheckResult(artifact, "not_empty", True, f"{path.stat().st_size} bytes"),
                       _format_result(artifact, path.name, kind, why)]
            if kind in _FORMAT_CHECKS:
                results += _FORMAT_CHECKS[kind](tap, artifact, path)
        tap.drain()
    digest = tap.hexdigest()
    results.append(_sha256_result(artifact, path, digest, expected_sha256, use_sidecar))
    return ArtifactReport(artifact, kind, tap.bytes_read, digest, tuple(results))
