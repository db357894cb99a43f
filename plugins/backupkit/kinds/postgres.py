"""PostgreSQL databases backed up with pg_dump (custom, tar, directory or plain format).

Configured under ``databases:``; checked by reading every byte the way ``pg_restore`` would
(:mod:`backupkit.checks.pgdump`); restored into a scratch PostgreSQL server and verified
by row counts (:mod:`backupkit.restore`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backupkit.config.reader import ConfigError, Reader
from backupkit.config.schema import DUMP_FORMATS, RestoreExpectations
from backupkit.kinds.base import SourceKind

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


KIND = PostgresKind()

__all__ = ["KIND", "DatabaseSpec", "PostgresKind"]
