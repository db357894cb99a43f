"""Is everything in the restored database? Row counts, key tables and SQL assertions.

A dump that restores without error can still be missing data (a table excluded by a
changed ``pg_dump -t``, a dump taken from the wrong replica). So after a restore every
table's exact row count is compared with the counts recorded at backup time in the
manifest beside the backup (``NAME.manifest.json``, format in docs/manifest.md), or,
without a manifest, with the live source database's counts within a tolerance. Counts
are exact (``count(*)``): ``pg_stat_user_tables`` is an estimate that is empty right
after a restore.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from backupkit.config import RestoreExpectations
from backupkit.model import CheckResult
from backupkit.restore.scratch import ScratchDatabase, ScratchError
from backupkit.storage.localfs import MANIFEST_SUFFIX
from backupkit.storage.objectstore import Bucket

MANIFEST_FORMAT = 1
MANIFEST_LIMIT = 16 << 20

# The manifest as one line of JSON, written by psql: the first query builds a single
# statement (a UNION ALL of count(*) per table, so all counts come from one snapshot) and
# \gexec runs it. Exactly what docs/manifest.md tells backup scripts to run, so the counts a
# backup recorded and the counts of its restore come from the same query. Tables: ordinary
# ones (relkind 'r', which includes partitions; partitioned parents hold no rows of their
# own) outside the system schemas. (query_to_xml would do it in one query, but needs a
# server built with libxml, which the embedded binaries are not.)
MANIFEST_QUERY_SQL = r"""
SELECT format($q$SELECT json_build_object('format', 1, 'database', current_database(),
    'created_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), 'tables', %s)$q$,
  COALESCE('(SELECT json_object_agg(t, n ORDER BY t) FROM ('
           || string_agg(format('SELECT %L AS t, count(*) AS n FROM %I.%I',
                                n.nspname || '.' || c.relname, n.nspname, c.relname), ' UNION ALL ')
           || ') s)', $q$'{}'::json$q$))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
""".strip()
MANIFEST_SQL = MANIFEST_QUERY_SQL + "\n\\gexec\n"


class SqlRunner(Protocol):
    """Anything that runs SQL and returns psql's unaligned output: a scratch database, the
    sandbox's LocalPostgres, or an adapter over an Airflow hook for the live source."""

    def psql(self, sql: str, database: str = ...) -> str: ...


class ManifestError(ValueError):
    """The manifest exists but cannot be used; the message names the file."""


@dataclass(frozen=True)
class RowManifest:
    database: str
    created_at: datetime
    tables: dict[str, int]
    format: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        return json.dumps({"format": self.format, "database": self.database,
                           "created_at": self.created_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "tables": dict(sorted(self.tables.items()))}, indent=2) + "\n"


def manifest_path(backup: Path) -> Path:
    """``NAME.manifest.json`` beside the backup ``NAME``."""
    return backup.with_name(backup.name + MANIFEST_SUFFIX)


def manifest_key(backup_key: str) -> str:
    return backup_key + MANIFEST_SUFFIX


def parse_manifest(text: str | bytes, origin: str = "<manifest>") -> RowManifest:
    """Validate and parse manifest JSON; errors name ``origin``."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{origin}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{origin}: expected a JSON object")
    if data.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{origin}: unsupported format {data.get('format')!r} (expected {MANIFEST_FORMAT})")
    database = data.get("database")
    if not isinstance(database, str) or not database:
        raise ManifestError(f"{origin}: 'database' must be a non-empty string")
    try:
        created = datetime.fromisoformat(str(data.get("created_at")))
    except ValueError:
        raise ManifestError(f"{origin}: 'created_at' is not an ISO 8601 time: {data.get('created_at')!r}") from None
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    tables = data.get("tables")
    if not isinstance(tables, dict):
        raise ManifestError(f"{origin}: 'tables' must be an object of table -> row count")
    for name, n in tables.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ManifestError(f"{origin}: tables[{name!r}] must be a non-negative integer, got {n!r}")
    return RowManifest(database=database, created_at=created,
                       tables={qualify(k): v for k, v in tables.items()})


def read_manifest(backup: Path) -> RowManifest | None:
    """The manifest beside a local backup, or None when the backup has none."""
    path = manifest_path(backup)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return parse_manifest(text, str(path))


def read_s3_manifest(bucket: Bucket, backup_key: str, version_id: str | None = None) -> RowManifest | None:
    """The manifest beside a backup in S3, or None when there is none."""
    key = manifest_key(backup_key)
    raw = bucket.read_small(key, limit=MANIFEST_LIMIT, version_id=version_id)
    return None if raw is None else parse_manifest(raw, bucket.uri(key))


def qualify(table: str) -> str:
    """``users`` -> ``public.users``: configuration may name tables without their schema."""
    return table if "." in table else f"public.{table}"


def exact_row_counts(db: SqlRunner, database: str) -> dict[str, int]:
    """``schema.table -> count(*)`` for every ordinary table of ``database``.

    ``db`` is the scratch database, or the live source when there is no manifest.
    """
    return counts_from_output(db.psql(MANIFEST_SQL, database), database)


def counts_from_output(out: str, database: str = "") -> dict[str, int]:
    """The table counts from the output of :data:`MANIFEST_SQL` (run by any client)."""
    try:
        return parse_manifest(out, f"row counts of {database!r}").tables
    except ManifestError as exc:
        raise ScratchError(f"{exc}; psql output was {out[:200]!r}") from None


def table_verdicts(actual: Mapping[str, int], expected: Mapping[str, int],
                   tolerance: float = 0.0) -> list[tuple[str, bool, str]]:
    """(table, ok, detail) per table in either mapping: restored rows versus expected rows."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    act = {qualify(k): v for k, v in actual.items()}
    exp = {qualify(k): v for k, v in expected.items()}
    out = []
    for table in sorted(exp.keys() | act.keys()):
        if table not in act:
            out.append((table, False, f"table missing from the restore (expected {exp[table]} rows)"))
            continue
        if table not in exp:
            out.append((table, False, f"extra table not in the expected counts ({act[table]} rows)"))
            continue
        a, e = act[table], exp[table]
        diff = a - e
        if diff == 0:
            out.append((table, True, f"{a} rows"))
        elif abs(diff) <= tolerance * e:
            out.append((table, True, f"{a} rows, expected {e} ({diff:+d}, within tolerance {tolerance:g})"))
        elif diff < 0:
            out.append((table, False, f"{-diff} rows missing: restored {a}, expected {e}"))
        else:
            out.append((table, False, f"{diff} extra rows: restored {a}, expected {e}"))
    return out


def compare_row_counts(actual: Mapping[str, int], expected: Mapping[str, int], tolerance: float = 0.0,
                       *, artifact: str = "") -> list[CheckResult]:
    """One result per table: restored rows versus expected rows.

    ``tolerance`` is the allowed relative difference (0.01 = 1 %), for comparisons with a
    live source that kept changing after the backup; against a manifest it is normally 0.
    A table in only one of the two is a failure either way.
    """
    return [CheckResult(artifact, f"rows {t}", ok, detail) for t, ok, detail in
            table_verdicts(actual, expected, tolerance)]


def check_key_tables(actual: Mapping[str, int], key_tables: Iterable[str], *, artifact: str = "") -> list[CheckResult]:
    """Each configured key table must exist in the restore and hold at least one row."""
    act = {qualify(k): v for k, v in actual.items()}
    results = []
    for table in key_tables:
        name = qualify(table)
        check = f"key table {name}"
        if name not in act:
            results.append(CheckResult(artifact, check, False, "missing from the restore"))
        elif act[name] == 0:
            results.append(CheckResult(artifact, check, False, "is empty"))
        else:
            results.append(CheckResult(artifact, check, True, f"{act[name]} rows"))
    return results


def run_assertions(scratch: ScratchDatabase, database: str, sql_list: Iterable[str], *, artifact: str = "",
                   statement_timeout_ms: int = 60_000) -> list[CheckResult]:
    """Each configured SQL must return exactly one row with one column that is true.

    Runs read-only with a statement timeout: an assertion can neither change the restore
    it judges nor hang the run.
    """
    results = []
    options = {"default_transaction_read_only": "on", "statement_timeout": str(int(statement_timeout_ms))}
    for i, sql in enumerate(sql_list, 1):
        check = f"assertion {i}"
        short = " ".join(sql.split())
        short = short if len(short) <= 120 else short[:117] + "..."
        proc = scratch.run_psql(sql, database, options=options)
        if proc.returncode != 0:
            results.append(CheckResult(artifact, check, False, f"{short}: error: {proc.stderr.strip()[:500]}"))
            continue
        rows = [r for r in proc.stdout.splitlines() if r != ""]
        if rows == ["t"]:
            results.append(CheckResult(artifact, check, True, short))
        else:
            got = rows[0] if len(rows) == 1 else f"{len(rows)} rows"
            results.append(CheckResult(artifact, check, False, f"{short}: expected a single true, got {got!r}"))
    return results


# -- the one verification of a restored database -----------------------------------------------------
@dataclass
class Verification:
    """What the checks of a restored database found, and how many rows they proved."""

    checks: list[CheckResult] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    verified_rows: int = 0
    compared_with: str = ""


def verify_restored(db: ScratchDatabase, database: str, *, expectations: RestoreExpectations,
                    manifest: RowManifest | None, manifest_where: str = "",
                    live_counts: Callable[[], Mapping[str, int]] | None = None, live_label: str = "",
                    artifact: str = "") -> Verification:
    """Row counts against the manifest (exactly), else against the live source within the
    tolerance when ``live_counts`` is given (a disaster has no live source: the drill gives none),
    then the key tables and the SQL assertions. Raises :class:`ScratchError` when the restored
    database cannot even be counted."""
    v = Verification(counts=exact_row_counts(db, database))
    verdicts: list[tuple[str, bool, str]] = []
    if manifest is not None:
        v.checks.append(CheckResult(artifact, "manifest", True, manifest_where))
        v.compared_with = manifest_where
        verdicts = table_verdicts(v.counts, manifest.tables, 0.0)
    elif live_counts is not None:
        tol = expectations.row_count_tolerance
        v.compared_with = f"live source database {live_label!r} (tolerance {tol:g}; no manifest beside the backup)"
        try:
            expected = live_counts()
        except Exception as exc:  # noqa: BLE001 - a failed check: the restore itself is done
            v.checks.append(CheckResult(artifact, "rows", False, f"no manifest, and the source's counts could not "
                                                                  f"be read: {type(exc).__name__}: {exc}"))
        else:
            verdicts = table_verdicts(v.counts, expected, tol)
    else:
        v.checks.append(CheckResult(artifact, "manifest", False,
                                    "no manifest beside the backup and no source database to compare with"))
    v.checks += [CheckResult(artifact, f"rows {t}", ok, detail) for t, ok, detail in verdicts]
    counted = {qualify(k): n for k, n in v.counts.items()}
    v.verified_rows = sum(counted.get(t, 0) for t, ok, _ in verdicts if ok)
    v.checks += check_key_tables(v.counts, expectations.key_tables, artifact=artifact)
    if expectations.assertions:
        v.checks += run_assertions(db, database, expectations.assertions, artifact=artifact)
    return v
