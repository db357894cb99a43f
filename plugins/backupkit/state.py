"""What has been verified, remembered between runs (one SQLite file).

The daily run reads new backups in full and only a rolling share of the older ones
(restic's ``check --read-data-subset`` idea): each run re-reads the ``ceil(fraction *
total)`` backups whose last full read is the oldest, so with ``fraction = 1/30`` every
backup is re-read for bit rot within about a month while the daily cost stays flat as
the history grows. The same file keeps the byte offsets of the backup logs (so only new
lines are reported) and the composite S3 checksums already matched (so multipart copies
are not recomputed from the local file every day).

SQLite in WAL mode with a busy timeout: the per-source tasks of one DAG run may write
concurrently from separate processes.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from backupkit.storage.statedir import StateDir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verifications (
    key TEXT PRIMARY KEY,
    sha256 TEXT,
    size INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    verified_at TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    identity TEXT
);
CREATE TABLE IF NOT EXISTS log_offsets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checksum_cache (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS wal_scans (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _retry_locked(fn, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    delay = 0.01
    while True:
        try:
            fn()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _iso(dt: datetime) -> str:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: pass an aware (UTC) time")
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class FileIdentity:
    """What a file (or a pg_dump directory) looked like when it was read: any change means re-read.

    ``size``, ``mtime_ns``, ``ctime_ns`` and ``inode``: a same-size bit flip written in place
    changes the mtime (or, if someone resets it, the ctime, which no user can set); a
    replaced file changes the inode. A directory's identity is its files' total size, their
    newest mtime and ctime, and the directory's inode.
    """

    size: int
    mtime_ns: int = 0
    ctime_ns: int = 0
    inode: int = 0

    @classmethod
    def of(cls, path: Path) -> "FileIdentity":
        st = path.stat()
        if not path.is_dir():
            return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        size, mtime, ctime = 0, st.st_mtime_ns, st.st_ctime_ns
        for p in path.rglob("*"):
            ps = p.lstat()
            size += ps.st_size if p.is_file() else 0
            mtime, ctime = max(mtime, ps.st_mtime_ns), max(ctime, ps.st_ctime_ns)
        return cls(size, mtime, ctime, st.st_ino)

    @property
    def token(self) -> str:
        return f"{self.mtime_ns}:{self.ctime_ns}:{self.inode}"


@dataclass(frozen=True)
class Record:
    """The last full read of one backup."""

    key: str
    sha256: str | None
    size: int
    ok: bool
    verified_at: datetime
    detail: str = ""
    identity: str | None = None  # FileIdentity.token at the read (None: recorded before it was kept)

    def unchanged(self, current: "FileIdentity | int") -> bool:
        """The file is as it was when this record was made (size, and identity where both are known)."""
        if isinstance(current, int):
            return current == self.size
        return current.size == self.size and (self.identity is None or self.identity == current.token)

    @property
    def verdict(self) -> str:
        return "passed" if self.ok else "failed"

    def to_dict(self) -> dict:
        return {"key": self.key, "sha256": self.sha256, "size": self.size, "ok": self.ok,
                "verified_at": self.verified_at.isoformat(), "detail": self.detail}


class VerificationState:
    """The verification memory in ``state_dir/verification.sqlite`` (created on first use)."""

    def __init__(self, state_dir: Path | str):
        self.state_dir = Path(state_dir)
        self.path = StateDir(self.state_dir).verification_db
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        # Switching to WAL and creating the schema take locks the busy timeout does not always
        # cover (SQLite answers "database is locked" at once when writers race on a new file).
        _retry_locked(lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
        self._conn.execute("PRAGMA synchronous=NORMAL")
        _retry_locked(lambda: self._conn.executescript(_SCHEMA))
        _retry_locked(self._migrate)

    def _migrate(self) -> None:
        """Add the ``identity`` column to a store made before it existed."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(verifications)")}
        if "identity" not in columns:
            self._conn.execute("ALTER TABLE verifications ADD COLUMN identity TEXT")

    @classmethod
    def existing(cls, state_dir: Path | str) -> "VerificationState | None":
        """The store if one was created already, else None (read-only callers create nothing)."""
        return cls(state_dir) if StateDir(state_dir).verification_db.is_file() else None

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "VerificationState":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, params: Iterable = ()) -> None:
        with self._conn:  # BEGIN ... COMMIT (or ROLLBACK on error)
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(sql, tuple(params))

    # -- verification records --------------------------------------------------------
    def record(self, key: str, sha256: str | None, size: int | FileIdentity, ok: bool, verified_at: datetime,
               detail: str = "") -> None:
        """Remember the outcome of a full read of ``key`` (``size``: the file's identity, or just its size)."""
        identity = size.token if isinstance(size, FileIdentity) else None
        size = size.size if isinstance(size, FileIdentity) else size
        self._write(
            "INSERT INTO verifications(key, sha256, size, ok, verified_at, detail, identity) VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT(key) DO UPDATE SET sha256=excluded.sha256, size=excluded.size, ok=excluded.ok, "
            "verified_at=excluded.verified_at, detail=excluded.detail, identity=excluded.identity",
            (key, sha256, int(size), int(bool(ok)), _iso(verified_at), detail, identity))

    def record_many(self, rows: Iterable[tuple[str, FileIdentity, bool, datetime, str]],
                    extras: Mapping[str, str] | None = None, extras_table: str = "wal_scans") -> None:
        """Many outcomes (key, identity, ok, time, detail) in one transaction, with optional JSON
        ``extras`` per key (e.g. what a WAL segment holds); a failed key loses its extra."""
        rows, extras = list(rows), dict(extras or {})
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT INTO verifications(key, sha256, size, ok, verified_at, detail, identity) "
                "VALUES (?,NULL,?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET sha256=NULL, size=excluded.size, "
                "ok=excluded.ok, verified_at=excluded.verified_at, detail=excluded.detail, identity=excluded.identity",
                [(k, i.size, int(bool(ok)), _iso(at), d, i.token) for k, i, ok, at, d in rows])
            self._conn.executemany(f"DELETE FROM {extras_table} WHERE key = ?",
                                   [(k,) for k, _, ok, _, _ in rows if not ok])
            self._conn.executemany(f"INSERT OR REPLACE INTO {extras_table}(key, value) VALUES (?, ?)",
                                   list(extras.items()))

    _COLUMNS = "key, sha256, size, ok, verified_at, detail, identity"

    @staticmethod
    def _row(row: tuple) -> Record:
        key, sha, size, ok, at, detail, identity = row
        return Record(key, sha, int(size), bool(ok), datetime.fromisoformat(at), detail, identity)

    def get(self, key: str) -> Record | None:
        row = self._conn.execute(f"SELECT {self._COLUMNS} FROM verifications WHERE key = ?", (key,)).fetchone()
        return self._row(row) if row else None

    def verdict(self, key: str) -> str | None:
        """``"passed"``, ``"failed"``, or None when ``key`` was never read in full."""
        rec = self.get(key)
        return rec.verdict if rec else None

    def records(self, prefix: str = "") -> dict[str, Record]:
        """Every record whose key starts with ``prefix``."""
        rows = self._conn.execute(
            f"SELECT {self._COLUMNS} FROM verifications WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix))
        return {r[0]: self._row(r) for r in rows}

    def forget(self, keys: Iterable[str]) -> int:
        """Drop records of backups that no longer exist (retention deleted them)."""
        keys = list(keys)
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("DELETE FROM verifications WHERE key = ?", [(k,) for k in keys])
            self._conn.executemany("DELETE FROM wal_scans WHERE key = ?", [(k,) for k in keys])
        return len(keys)

    def select_full_reads(self, keys_with_sizes: Mapping[str, int | FileIdentity] |
                          Iterable[tuple[str, int | FileIdentity]], *, fraction: float, now: datetime) -> list[str]:
        """Which backups to read in full this run.

        Always: backups never read, changed since (size, or the :class:`FileIdentity` when
        given and recorded), or whose last read failed (a damaged backup keeps failing the
        run until it is replaced or removed). Plus the
        rolling share: of the backups that passed, the ``ceil(fraction * total)`` with the
        oldest last full read (ties by key, so the choice is deterministic). A read
        stamped after ``now`` (clock skew) counts as a read at ``now``.
        """
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
        items = dict(keys_with_sizes.items() if isinstance(keys_with_sizes, Mapping) else keys_with_sizes)
        known = self.records()
        must, rolling = [], []
        for key in sorted(items):
            rec = known.get(key)
            if rec is None or not rec.unchanged(items[key]) or not rec.ok:
                must.append(key)
            else:
                rolling.append((min(rec.verified_at, now), key))
        # The epsilon keeps 0.1 * 30 from rounding up to 4.
        quota = math.ceil(fraction * len(items) - 1e-9) if fraction > 0 else 0
        rolling.sort()
        return must + [key for _, key in rolling[:quota]]

    # -- log offsets -----------------------------------------------------------------
    def load_log_offsets(self) -> dict[str, dict]:
        return {name: json.loads(value) for name, value in
                self._conn.execute("SELECT name, value FROM log_offsets ORDER BY name")}

    def save_log_offsets(self, offsets: Mapping[str, Mapping]) -> None:
        """Replace the stored offsets with ``offsets`` (name -> {path, inode, offset, ...})."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM log_offsets")
            self._conn.executemany("INSERT INTO log_offsets(name, value) VALUES (?, ?)",
                                   [(k, json.dumps(dict(v), sort_keys=True)) for k, v in offsets.items()])

    # -- checksum cache --------------------------------------------------------------
    @property
    def checksum_cache(self) -> MutableMapping[str, str]:
        """Composite S3 checksums already matched, keyed by local SHA-256 and part layout."""
        return _SqliteMap(self, "checksum_cache")

    @property
    def wal_scans(self) -> MutableMapping[str, str]:
        """What each WAL segment that passed holds (JSON, :mod:`backupkit.wal.memory`), by record key."""
        return _SqliteMap(self, "wal_scans")


class _SqliteMap(MutableMapping):
    def __init__(self, state: VerificationState, table: str):
        self._state = state
        self._conn = state._conn
        self._table = table

    def __getitem__(self, key: str) -> str:
        row = self._conn.execute(f"SELECT value FROM {self._table} WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return row[0]

    def __setitem__(self, key: str, value: str) -> None:
        self._state._write(f"INSERT OR REPLACE INTO {self._table}(key, value) VALUES (?, ?)", (key, value))

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._state._write(f"DELETE FROM {self._table} WHERE key = ?", (key,))

    def __iter__(self) -> Iterator[str]:
        return iter([r[0] for r in self._conn.execute(f"SELECT key FROM {self._table} ORDER BY key")])

    def __len__(self) -> int:
        return self._conn.execute(f"SELECT count(*) FROM {self._table}").fetchone()[0]


__all__ = ["VerificationState", "Record", "FileIdentity"]
