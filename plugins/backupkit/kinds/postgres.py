"""PostgreSQL databases backed up with pg_dump (custom, tar, directory or plain format).

Configured under ``databases:``; checked by reading every byte the way ``pg_restore`` would
(:mod:`backupkit.checks.pgdump`); restored into a scratch PostgreSQL server (or a new
database beside the application's) with :mod:`backupkit.restore.database` and verified by
exact row counts against the manifest beside the backup (:mod:`backupkit.restore.verify_rows`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from backupkit.config.reader import ConfigError, Reader
from backupkit.config.schema import DUMP_FORMATS, RestoreExpectations
from backupkit.kinds.base import KindRestore, SourceKind

@dataclass(frozen=True)
class DatabaseSpec:
    dump_format: str
    conn_id: str = "postgres_default"
    database: str | None = None  # the database name on the server (default: from the connection)
    restore: RestoreExpectations = field(default_factory=RestoreExpectations)


def _restore(r: Reader) -> RestoreExpectations:
    base = RestoreExpectations()
    jobs = r.non_negative("jobs", int, base.jobs)
    if jobs < 1:
        raise ConfigError(r.file, r.at("jobs"), "must be >= 1")
    e = RestoreExpectations(
        key_tables=r.strings("key_tables"),
        row_count_tolerance=r.non_negative("row_count_tolerance", float, base.row_count_tolerance),
        assertions=r.strings("assertions"),
        jobs=jobs,
    )
    r.reject_unknown()
    return e


class PostgresKind(SourceKind):
    id = "database"
    section = "databases"
    label = "database"
    restores_into = "database"

    def parse_spec(self, r: Reader) -> DatabaseSpec:
        fmt = r.get("dump_format", str)
        if fmt not in DUMP_FORMATS:
            raise ConfigError(r.file, r.at("dump_format"), f"must be one of {', '.join(DUMP_FORMATS)}; got {fmt!r}")
        return DatabaseSpec(dump_format=fmt, conn_id=r.get("conn_id", str, DatabaseSpec.conn_id),
                            database=r.get("database", str, None), restore=_restore(r.child("restore")))

    def expected_format(self, source) -> str:
        return source.spec.dump_format

    # -- restores -----------------------------------------------------------------------------
    def scratch_target(self, source, new_database, work_dir):
        if new_database is None:
            raise ValueError(f"restoring database source {source.name!r} needs a scratch database")
        return new_database()

    def restore(self, job, fetched, target) -> KindRestore:
        """pg_restore/psql into ``job.database`` on ``target``, then the row counts and assertions."""
        from backupkit.restore.database import RestoreFailed, restore_dump
        from backupkit.restore.scratch import ScratchError
        from backupkit.restore.verify_rows import ManifestError, parse_manifest, verify_restored
        from backupkit.storage.localfs import MANIFEST_SUFFIX

        spec: DatabaseSpec = job.source.spec
        out = KindRestore(job.artifact)
        try:
            rr = restore_dump(fetched.path, target, fmt=spec.dump_format, jobs=job.jobs or spec.restore.jobs,
                              database=job.database, label=fetched.label, no_privileges=job.no_privileges)
        except RestoreFailed as exc:
            out.add("restore", False, str(exc)[:4000])
            return out
        out.info.update(restore_seconds=round(rr.restore_seconds, 3), jobs=rr.jobs, notes=list(rr.notes),
                        bytes_read=rr.bytes_read)
        out.add("restore", True, f"{rr.fmt}, {rr.jobs} job(s), {rr.restore_seconds:.1f}s from {fetched.label}")
        try:
            raw, where = fetched.companion(MANIFEST_SUFFIX)
            manifest = parse_manifest(raw, where) if raw is not None else None
        except (ManifestError, OSError, ValueError) as exc:
            out.add("manifest", False, str(exc))
            return out
        t1 = time.monotonic()
        try:
            v = verify_restored(target, job.database, expectations=spec.restore, manifest=manifest,
                                manifest_where=f"manifest {where}", live_counts=job.live_counts,
                                live_label=spec.database or job.source.name, artifact=job.artifact)
        except ScratchError as exc:  # the restore cannot even be counted: a finding, not a crash
            out.add("rows", False, f"row counts could not be read from the restore: {exc}")
            return out
        out.checks += v.checks
        out.info.update(tables=len(v.counts), verified_rows=v.verified_rows, compared_with=v.compared_with,
                        verify_seconds=round(time.monotonic() - t1, 3))
        return out


KIND = PostgresKind()

__all__ = ["KIND", "DatabaseSpec", "PostgresKind"]
