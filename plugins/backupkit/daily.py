"""The daily verification, one source at a time: what the DAG's tasks call.

Every function returns JSON-serialisable lists of result dicts (``CheckResult.to_dict()``)
so the Airflow adapters can pass them through XCom unchanged, and :func:`summarize`
turns all of them into one verdict and a readable table.

Artifacts are named ``SOURCE/FILE`` (source-level checks use the bare source name, the
backup logs ``logs/NAME``), which is how :func:`summarize` groups them per source.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator

from backupkit import clock
from backupkit.catalog import LocalBackup, iter_s3_objects, local_backups, read_sidecar, s3_key_for
from backupkit.checks.freshness import check_freshness
from backupkit.checks.logs import scan_logs
from backupkit.checks.s3copy import s3_copy_report
from backupkit.config import Config, Source
from backupkit.results import CheckResult
from backupkit.state import VerificationState


def _now(now: datetime | None) -> datetime:
    return now if now is not None else clock.now()


def backup_key(source: Source | str, backup: LocalBackup | str) -> str:
    """The artifact name and state key of a backup: ``SOURCE/FILE``."""
    src = source if isinstance(source, str) else source.name
    name = backup if isinstance(backup, str) else backup.name
    return f"{src}/{name}"


def default_state(config: Config) -> VerificationState:
    return VerificationState(config.state_dir)


@contextmanager
def _state(config: Config, state: VerificationState | None) -> Iterator[VerificationState]:
    """The caller's state, or the configured one opened (and closed) for this call."""
    if state is not None:
        yield state
        return
    owned = default_state(config)
    try:
        yield owned
    finally:
        owned.close()


def _dicts(results: Iterable[CheckResult]) -> list[dict]:
    return [r.to_dict() for r in results]


# -- presence, freshness, size, gaps ---------------------------------------------------
def check_presence(config: Config, source_name: str, now: datetime | None = None) -> list[dict]:
    """Is there a fresh backup of a plausible size, and no missing night? (no file is read)"""
    source = config.source(source_name)
    return _dicts(check_freshness(source, local_backups(source), _now(now)))


# -- integrity (full reads, rolling) ---------------------------------------------------
def check_integrity(config: Config, source_name: str, now: datetime | None = None,
                    state: VerificationState | None = None) -> list[dict]:
    """Read new backups, failed ones and the rolling share of the rest in full; remember the outcome."""
    from backupkit.verify import verify_artifact  # the engine; imported late to keep this module light

    now = _now(now)
    source = config.source(source_name)
    backups = {backup_key(source, b): b for b in local_backups(source)}
    results: list[CheckResult] = []
    with _state(config, state) as st:
        # Retention removed these backups: their records would only grow the file.
        st.forget(k for k in st.records(prefix=f"{source.name}/") if k not in backups)
        selected = st.select_full_reads({k: b.size for k, b in backups.items()},
                                        fraction=config.reread_fraction, now=now)
        fresh = 0
        for key in selected:
            b = backups[key]
            prev = st.get(key)
            if prev is None or prev.size != b.size or not prev.ok:
                fresh += 1
            try:
                report = verify_artifact(b.path, label=key)
            except Exception as exc:  # one unreadable backup must not hide the others
                res = [CheckResult(key, "integrity", False, f"verification could not run: {exc}")]
                st.record(key, None, b.size, False, now, res[0].detail)
                results.extend(res)
                continue
            res = list(report.results)
            if (prev is not None and prev.ok and prev.size == b.size and prev.sha256 and report.sha256
                    and prev.sha256 != report.sha256):
                res.append(CheckResult(key, "sha256_history", False,
                                       f"content changed since it passed on {prev.verified_at:%Y-%m-%d}: "
                                       f"SHA-256 was {prev.sha256}, now {report.sha256}"))
            bad = [r for r in res if not r.ok]
            st.record(key, report.sha256, b.size, not bad, now, "; ".join(f"{r.check}: {r.detail}" for r in bad))
            results.extend(res)
    results.append(CheckResult(source.name, "integrity", True,
                               f"read {len(selected)} of {len(backups)} backups in full "
                               f"({fresh} new, changed or failed before; {len(selected) - fresh} rolling re-reads)"))
    return _dicts(results)


# -- S3 copies ---------------------------------------------------------------------------
def _known_sha256(st: VerificationState, key: str, b: LocalBackup) -> str | None:
    """The backup's SHA-256 without reading it: from its last passed full read, else its sidecar."""
    rec = st.get(key)
    if rec is not None and rec.ok and rec.size == b.size and rec.sha256:
        return rec.sha256
    try:
        return read_sidecar(b.path)
    except ValueError:  # a malformed sidecar: the integrity check reports it
        return None


def check_cloud_copies(config: Config, source_name: str, s3_client: Any,
                       state: VerificationState | None = None) -> list[dict]:
    """Every local backup has a copy in S3 with the same size and SHA-256.

    The SHA-256 comes from the state store (verified) or the sidecar; the local file is
    read only for multipart copies (composite checksum, once: matches are remembered) or,
    for the newest backup, when no SHA-256 is known. S3 objects are not downloaded when
    S3 stored a checksum. Objects under the prefix with no local counterpart are counted
    (information: S3 usually keeps backups longer than the local disk).
    """
    source = config.source(source_name)
    backups = local_backups(source)
    results: list[CheckResult] = []
    body = local = stored = skipped = 0
    with _state(config, state) as st:
        cache = st.checksum_cache
        for i, b in enumerate(backups):
            key = backup_key(source, b)
            sha = _known_sha256(st, key, b)
            newest = i == len(backups) - 1
            report = s3_copy_report(s3_client, config.bucket, s3_key_for(source, b.name), local_size=b.size,
                                    local_sha256=sha, local_path=b.path if (sha or newest) else None,
                                    artifact=key, composite_cache=cache)
            results.extend(report.results)
            body += report.body_bytes_read
            local += report.local_bytes_read
            checksum = [r for r in report.results if r.check == "s3_checksum"]
            if checksum and checksum[0].ok and checksum[0].detail.startswith("not compared"):
                skipped += 1
            elif report.method in ("sha256", "composite-sha256", "crc64nvme"):
                stored += 1
    local_names = {b.name for b in backups}
    try:
        s3_only = 0
        for obj in iter_s3_objects(s3_client, config.bucket, source.s3_prefix):
            name = obj.key[len(source.s3_prefix):]
            if "/" not in name and source.pattern.timestamp(name) and name not in local_names:
                s3_only += 1
        results.append(CheckResult(source.name, "s3_only", True,
                                   f"{s3_only} backups in s3://{config.bucket}/{source.s3_prefix} "
                                   f"have no local copy"))
    except Exception as exc:  # listing is informational; say it failed, do not hide it
        results.append(CheckResult(source.name, "s3_only", False,
                                   f"cannot list s3://{config.bucket}/{source.s3_prefix}: {exc}"))
    results.append(CheckResult(source.name, "s3_copies", True,
                               f"{len(backups)} copies checked, {stored} by S3's stored checksum, "
                               f"{skipped} not compared (no SHA-256 known); "
                               f"read {body} bytes from S3 and {local} bytes of local files"))
    return _dicts(results)


# -- logs --------------------------------------------------------------------------------
def check_logs(config: Config, state: VerificationState | None = None) -> list[dict]:
    """ERROR/WARNING lines of the configured backup logs since the last run."""
    if not config.logs:
        return [CheckResult("logs", "log", True, "no backup logs configured").to_dict()]
    with _state(config, state) as st:
        results, offsets = scan_logs(config.logs, st.load_log_offsets())
        st.save_log_offsets(offsets)
    return _dicts(results)


# -- inventory helpers -------------------------------------------------------------------
def latest_backup(config: Config, source_name: str, now: datetime | None = None) -> dict | None:
    """The newest local backup of a source: name, timestamp, age, size, path (None if none)."""
    source = config.source(source_name)
    backups = local_backups(source)
    if not backups:
        return None
    b = backups[-1]
    age = (_now(now) - b.timestamp).total_seconds() / 3600
    return {"name": b.name, "timestamp": b.timestamp.isoformat(), "age_hours": round(age, 2),
            "size": b.size, "local_path": str(b.path), "count": len(backups)}


# -- the verdict -------------------------------------------------------------------------
def _as_dict(r: CheckResult | dict) -> dict:
    return r.to_dict() if isinstance(r, CheckResult) else dict(r)


def source_of(artifact: str) -> str:
    return artifact.split("/", 1)[0]


def summarize(results: Iterable[CheckResult | dict]) -> dict:
    """One verdict for a run: ``ok``, the ``problems``, per-source ``counts`` and a ``table``.

    The table has one row per problem (and per reported WARNING log line), then one count
    line per source, so the task log names every failing artifact and check.
    """
    rows = [_as_dict(r) for r in results]
    problems = [r for r in rows if not r["ok"]]
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        c = counts.setdefault(source_of(r["artifact"]), {"checks": 0, "problems": 0, "warnings": 0})
        c["checks"] += 1
        if not r["ok"]:
            c["problems"] += 1
        elif str(r.get("detail", "")).startswith("WARNING:"):
            c["warnings"] += 1
    shown = [(r, "FAIL") for r in problems] + [(r, "WARN") for r in rows
                                                if r["ok"] and str(r.get("detail", "")).startswith("WARNING:")]
    header = ("SOURCE/ARTIFACT", "CHECK", "STATUS", "DETAIL")
    table_rows = [(r["artifact"], r["check"], status, str(r.get("detail", "")).replace("\n", " "))
                  for r, status in shown]
    lines = []
    if table_rows:
        w0 = min(max(len(header[0]), *(len(t[0]) for t in table_rows)), 70)
        w1 = max(len(header[1]), *(len(t[1]) for t in table_rows))
        fmt = f"{{:<{w0}}}  {{:<{w1}}}  {{:<6}}  {{}}"
        lines.append(fmt.format(*header))
        lines.append(fmt.format("-" * w0, "-" * w1, "-" * 6, "-" * 6))
        lines.extend(fmt.format(*t) for t in table_rows)
        lines.append("")
    else:
        lines.append("No problems found.")
    for src in sorted(counts):
        c = counts[src]
        warn = f", {c['warnings']} warnings" if c["warnings"] else ""
        lines.append(f"{src}: {c['checks']} checks, {c['problems']} problems{warn}")
    return {"ok": not problems, "problems": problems, "counts": counts, "table": "\n".join(lines)}


__all__ = ["check_presence", "check_integrity", "check_cloud_copies", "check_logs", "latest_backup",
           "summarize", "default_state", "backup_key", "source_of"]
