"""``backupctl inventory``: per source, the latest backup, its age, size and S3 status.

What the runbook's ``ls -la``, ``du -sh`` and ``aws s3 ls`` show by hand, in one table.
It is cheap: no backup is read and no object downloaded; the S3 copy of the latest
backup is compared through S3's stored checksum with the SHA-256 the verification state
store or the sidecar knows. Exit 1 when a source has no backup, or its latest backup is
missing in S3 or differs from the local one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from backupkit.catalog import local_backups, s3_key_for
from backupkit.commands import EXIT_OK, EXIT_PROBLEM
from backupkit.config import Config, load_config
from backupkit.jobs.daily import backup_key, latest_backup


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


def make_client(endpoint_url: str | None) -> Any:
    """An S3 client for ``endpoint_url`` (else AWS), credentials from AWS's default chain."""
    from backupkit.storage.objectstore import s3_client

    return s3_client(endpoint_url=endpoint_url)


def _open_state(config: Config):
    """The state store if it exists (never created by an inventory)."""
    from backupkit.state import VerificationState

    return VerificationState.existing(config.state_dir)


def _s3_status(results: list[dict]) -> tuple[str, bool]:
    by_check = {r["check"]: r for r in results}
    present = by_check.get("s3_present")
    if present is None or not present["ok"]:
        detail = present["detail"] if present else "not checked"
        if detail.endswith("missing in S3"):
            return "missing", False
        if ": no such bucket" in detail:
            return "no such bucket", False
        if detail.startswith("s3://") and ": " in detail:  # the URI is in its own column of --json
            detail = detail.split(": ", 1)[1]
        return f"error: {detail}", False
    size = by_check.get("s3_size")
    if size and not size["ok"]:
        return "present, size differs", False
    cs = by_check.get("s3_checksum")
    if cs is None:
        return "present", True
    if not cs["ok"]:
        return "present, checksum differs" if "differs" in cs["detail"] else f"present, {cs['detail']}", False
    if cs["detail"].startswith("not compared"):
        return "present, checksum not compared", True
    return "present, checksum matches", True


def inventory(config: Config, client: Any) -> list[dict]:
    """One row per configured source (see the module doc); JSON-serialisable."""
    from backupkit.checks.s3copy import check_s3_copy
    from backupkit.state import FileIdentity
    from backupkit.storage.localfs import read_sidecar
    from backupkit.storage.objectstore import Bucket

    state = _open_state(config)
    rows = []
    try:
        for source in config.sources:
            latest = latest_backup(config, source.name)
            row: dict[str, Any] = {"source": source.name, "kind": source.kind, "local_dir": str(source.local_dir),
                                   "count": latest["count"] if latest else 0, "latest": latest, "s3": None}
            if latest is None:
                row.update(ok=False, problem=f"no backups in {source.local_dir}")
                rows.append(row)
                continue
            b = local_backups(source)[-1]
            key = backup_key(source, b)
            sha = None
            rec = state.get(key) if state else None
            changed = rec is not None and not rec.unchanged(FileIdentity.of(b.path))
            if rec is not None and rec.ok and not changed:
                sha = rec.sha256
            if sha is None and not b.is_dir:
                try:
                    sha = read_sidecar(b.path)
                except ValueError:
                    sha = None
            s3_key = s3_key_for(source, b.name)
            results = [r.to_dict() for r in check_s3_copy(
                Bucket(client, config.bucket), s3_key, local_size=b.size, local_sha256=sha, local_path=None,
                artifact=key, composite_cache=state.checksum_cache if state else None, allow_download=False)]
            status, ok = _s3_status(results)
            if changed:  # the S3 copy may match the sidecar, but the local file is not what was verified
                status = (f"{status}; local copy changed since its last verification on "
                          f"{rec.verified_at:%Y-%m-%d} (re-read pending)")
                ok = False
            row["s3"] = {"uri": f"s3://{config.bucket}/{s3_key}", "status": status, "ok": ok, "results": results}
            row["ok"] = ok
            if not ok:
                row["problem"] = f"S3 copy: {status}"
            rows.append(row)
    finally:
        if state is not None:
            state.close()
    return rows


def _print_table(rows: list[dict], out=None) -> None:
    out = out or sys.stdout
    table = [("SOURCE", "LATEST", "AGE_H", "SIZE", "COUNT", "S3")]
    for r in rows:
        latest = r["latest"]
        if latest is None:
            table.append((r["source"], "-", "-", "-", "0", "no backups"))
        else:
            table.append((r["source"], latest["name"], f"{latest['age_hours']:.1f}", _human(latest["size"]),
                          str(r["count"]), r["s3"]["status"]))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        cells = [c.ljust(w) if i not in (2, 3, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        out.write("  ".join(cells) + "  " + row[-1] + "\n")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    client = make_client(args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"))
    rows = inventory(config, client)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(rows)
    for r in rows:
        if not r["ok"]:
            print(f"{r['source']}: {r['problem']}", file=sys.stderr)
    return EXIT_OK if all(r["ok"] for r in rows) else EXIT_PROBLEM


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("inventory", help="latest backup, age, size and S3 status per configured source",
                              description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per source")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.set_defaults(run=run)
