"""Database connection settings as applications hold them: which database they name, and redaction.

A setting is a libpq URL (``postgresql://user:pw@host:5432/db?sslmode=require``), a libpq
keyword/value string (``host=db dbname=trixtech password=...``) or a bare database name.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


_DBNAME_KV = re.compile(r"(^|\s)dbname\s*=\s*('[^']*'|\S+)")


def redact(value: str) -> str:
    """A connection setting safe to log and audit: the password replaced by ``***``."""
    if "://" in value:
        parts = urlsplit(value)
        if parts.password is not None:
            host = parts.hostname or ""
            if parts.port:
                host += f":{parts.port}"
            user = f"{parts.username}:***@" if parts.username else ":***@"
            return urlunsplit((parts.scheme, user + host, parts.path, re.sub(r"(?i)password=[^&]*", "password=***",
                                                                              parts.query), parts.fragment))
        return urlunsplit((parts.scheme, parts.netloc, parts.path,
                           re.sub(r"(?i)password=[^&]*", "password=***", parts.query), parts.fragment))
    return re.sub(r"(?i)(password\s*=\s*)('[^']*'|\S+)", r"\1***", value)


def setting_database(value: str) -> str | None:
    """The database a connection setting points at (URL path, ``dbname=`` or a bare name)."""
    if "://" in value:
        return urlsplit(value).path.lstrip("/") or None
    m = _DBNAME_KV.search(value)
    if m:
        return m.group(2).strip("'")
    return value.strip() if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value.strip()) else None


def point_setting_at(value: str, old_database: str, new_database: str) -> str:
    """``value`` with its database changed from ``old_database`` to ``new_database``.

    Refuses a setting that does not point at ``old_database``: then this is not the
    application of the backup's source, and guessing would break it.
    """
    current = setting_database(value)
    if current != old_database:
        raise ValueError(f"the setting {redact(value)!r} points at database {current!r}, not at the source's "
                         f"database {old_database!r}; refusing to guess how to switch it")
    if "://" in value:
        p = urlsplit(value)
        return urlunsplit((p.scheme, p.netloc, "/" + new_database, p.query, p.fragment))
    if _DBNAME_KV.search(value):
        return _DBNAME_KV.sub(lambda m: f"{m.group(1)}dbname={new_database}", value, count=1)
    return new_database


__all__ = ["redact", "setting_database", "point_setting_at"]
