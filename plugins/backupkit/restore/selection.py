"""Which backup to restore: the newest, the newest before a time, an exact key, or (for the
monthly restore test) one picked at random from a window of older ones.

The rules are pure functions over anything with ``name`` and ``timestamp``
(:class:`backupkit.model.Backup`); :func:`resolve_request` and :func:`find_backup` apply them
to what the catalog lists for a source (disk and bucket, merged by name). Every refusal says
what was asked and what exists, because these messages reach a person who typed a time or a
key into the trigger form.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Protocol, TypeVar

from backupkit.catalog import Catalog
from backupkit.config import Config, Source
from backupkit.model import Backup as CatalogBackup
from backupkit.naming import NamePattern
from backupkit.storage.objectstore import Bucket

WHICH = ("latest", "latest_before", "key")
_BAD_KEY_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


class Backup(Protocol):
    name: str
    timestamp: datetime


B = TypeVar("B", bound=Backup)


class SelectionError(ValueError):
    """No backup matches the request; the message says why in terms the requester used."""


def _utc(when: datetime) -> datetime:
    """Naive times are taken as UTC (the trigger form's date-time field may omit the zone)."""
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when


def parse_form_time(value: object, what: str, error: type[ValueError] = SelectionError) -> datetime | None:
    """A date-time a person typed (``2025-03-01T12:00:00Z``; no zone = UTC), None when blank.

    ``error`` is the caller's own refusal type, so the message reaches the person in its terms.
    """
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return _utc(value)
    try:
        return _utc(datetime.fromisoformat(str(value).strip().replace("Z", "+00:00")))
    except ValueError:
        raise error(f"{what} is not a date-time: {value!r} (use e.g. 2025-03-01T12:00:00Z)") from None


def _fmt(when: datetime) -> str:
    return _utc(when).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _newest(backups: Sequence[B]) -> B:
    return max(backups, key=lambda b: (_utc(b.timestamp), b.name))


def check_key(key: str, allowed_prefixes: Sequence[str]) -> tuple[str, str]:
    """Validate an S3 key typed by a person: returns (prefix, name) or raises.

    The key must be a plain relative key (no leading ``/``, no ``..``, ``.`` or empty
    segments, no control characters) directly under one of ``allowed_prefixes``.
    """
    if not isinstance(key, str) or not key.strip():
        raise SelectionError("malformed key: empty")
    if key != key.strip() or _BAD_KEY_CHARS.search(key):
        raise SelectionError(f"malformed key {key!r}: surrounding spaces, control characters or backslashes")
    if key.startswith("s3://"):
        raise SelectionError(f"malformed key {key!r}: give the key inside the bucket, not an s3:// URI")
    segments = key.split("/")
    if key.startswith("/") or any(s in ("", ".", "..") for s in segments):
        raise SelectionError(f"malformed key {key!r}: must be a relative key without empty, '.' or '..' segments")
    prefixes = [p if p.endswith("/") or not p else p + "/" for p in allowed_prefixes]
    for prefix in prefixes:
        if key.startswith(prefix):
            name = key[len(prefix):]
            if "/" in name:
                raise SelectionError(f"key {key!r} is not directly under the configured prefix {prefix!r}")
            return prefix, name
    shown = ", ".join(repr(p) for p in prefixes) or "(none configured)"
    raise SelectionError(f"key {key!r} is outside the configured prefixes {shown}")


def select_backup(backups: Sequence[B], *, which: str, before: datetime | None = None, key: str | None = None,
                  allowed_prefixes: Sequence[str] = (), source: str = "", pattern: NamePattern | None = None) -> B:
    """The backup to restore.

    - ``latest``: the newest by the timestamp in its name;
    - ``latest_before``: the newest strictly before ``before`` (naive = UTC);
    - ``key``: the backup whose key is ``key``; the key must lie directly under one of
      ``allowed_prefixes`` and, when ``pattern`` is given, its name must match it.
    """
    what = f"source {source!r}" if source else "the source"
    if which not in WHICH:
        raise SelectionError(f"unknown choice {which!r}: use one of {', '.join(WHICH)}")
    if which == "key":
        if not key:
            raise SelectionError("which='key' needs a key")
        _, name = check_key(key, allowed_prefixes)
        if pattern is not None and pattern.timestamp(name) is None:
            raise SelectionError(f"malformed key {key!r}: {name!r} does not match the backup name pattern "
                                 f"{pattern.template!r} of {what}")
        for b in backups:
            if b.name == name:
                return b
        raise SelectionError(f"no backup {name!r} in {what} (key {key!r}; {len(backups)} backups known)")
    if not backups:
        raise SelectionError(f"{what} has no backups")
    if which == "latest":
        return _newest(backups)
    if before is None:
        raise SelectionError("which='latest_before' needs a time")
    limit = _utc(before)
    earlier = [b for b in backups if _utc(b.timestamp) < limit]
    if not earlier:
        oldest = min(backups, key=lambda b: _utc(b.timestamp))
        raise SelectionError(f"no backup of {what} before {_fmt(limit)} (the oldest is {oldest.name}, "
                             f"{_fmt(oldest.timestamp)})")
    return _newest(earlier)


def random_older(backups: Sequence[B], window_days: float, now: datetime, rng: random.Random) -> B | None:
    """One backup chosen at random among those of the last ``window_days`` days, other than
    the newest (which the restore test restores anyway). None when there is none.

    Restoring what is rarely read catches latent damage (AWS Backup's restore testing
    does the same); pass ``random.Random(run_id)`` for a choice that reruns repeat.
    """
    if window_days <= 0 or not backups:
        return None
    newest = _newest(backups)
    since = _utc(now) - timedelta(days=window_days)
    pool = sorted((b for b in backups if b is not newest and since <= _utc(b.timestamp) <= _utc(now)),
                  key=lambda b: (_utc(b.timestamp), b.name))
    return rng.choice(pool) if pool else None


# -- requests against the catalog --------------------------------------------------------------
RESTORES_INTO_LABEL = {"database": "database", "files": "file set"}


def restorable(config: Config, restores_into: str) -> list[str]:
    """The sources whose kind restores into ``restores_into`` ("database", "files"), in configuration order."""
    return [s.name for s in config.sources if s.kind_impl.restores_into == restores_into]


def find_backup(config: Config, source: Source, name: str, bucket: Bucket | None) -> CatalogBackup:
    """The backup ``name`` of ``source`` on disk or in the bucket, or :class:`SelectionError`."""
    found = Catalog(source, bucket).find(name)
    if found is None:
        raise SelectionError(f"no backup {name!r} of source {source.name!r} on disk ({source.local_dir}) or in "
                             f"s3://{config.bucket}/{source.s3_prefix}")
    return found


def resolve_request(config: Config, source_name: str, *, which: str, before: object = None, key: str | None = None,
                    bucket: Bucket | None = None, restores_into: str = "database") -> CatalogBackup:
    """The backup a person asked for in a trigger form, or :class:`SelectionError` saying why not.

    Checks everything that can be checked before anything changes: the source exists and
    restores into ``restores_into`` (what its kind says), the key is well formed and under the
    source's prefix, a backup exists before the given time.
    """
    names = restorable(config, restores_into)
    if source_name not in names:
        what = RESTORES_INTO_LABEL.get(restores_into, restores_into)
        raise SelectionError(f"unknown {what} {source_name!r} (configured: {', '.join(names) or 'none'})")
    source = config.source(source_name)
    if which == "key":
        if not key:
            raise SelectionError("which='key' needs a key")
        check_key(key, [source.s3_prefix])  # before listing anything
    limit = parse_form_time(before, "'before'") if which == "latest_before" else None
    return select_backup(Catalog(source, bucket).backups(), which=which, before=limit, key=key,
                         allowed_prefixes=[source.s3_prefix], source=source.name, pattern=source.pattern)
