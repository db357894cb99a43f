"""Create the sample booking database and take real pg_dump backups of it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from backupkit.config import REPO_ROOT
from backupkit.pgbin import pg_bin
from backupkit.pgserver import LocalPostgres

SCHEMA_SQL = REPO_ROOT / "include" / "sql" / "booking_schema.sql"
PG_DUMP_FLAGS = {"custom": "-Fc", "tar": "-Ft", "directory": "-Fd", "plain": "-Fp"}


def create_booking_db(pg: LocalPostgres, name: str = "trixtech", scale: int = 2000) -> None:
    """(Re)create database ``name`` with ``scale`` users, scale/100 services, 4*scale bookings."""
    pg.psql(f'DROP DATABASE IF EXISTS "{name}"')
    pg.psql(f'CREATE DATABASE "{name}"')
    sql = SCHEMA_SQL.read_text().replace(":scale", str(int(scale)))
    pg.psql(sql, database=name)


def pg_dump(pg: LocalPostgres, database: str, out: Path, fmt: str = "custom", *, gzip_plain: bool = True,
            compress: int | None = None) -> Path:
    """Dump ``database`` with the real pg_dump. Plain dumps are gzipped when ``gzip_plain``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [pg_bin("pg_dump"), *pg.conn_args(database), PG_DUMP_FLAGS[fmt], "--no-owner"]
    if compress is not None and fmt in ("custom", "directory"):
        args += ["-Z", str(compress)]
    if fmt == "plain" and gzip_plain:
        args += ["-Z", "gzip:6"]
    subprocess.run([*args, "-f", str(out)], check=True, capture_output=True)
    return out
