"""Defects on demand in a running sandbox, and their exact undo (``make defect`` / ``make heal``).

``python -m sandbox defect NAME [--source S]`` injects one of the faults the tests generate
(:class:`sandbox.history.Defects`) into the live history; ``python -m sandbox heal`` undoes
every active one, newest first. What was done is kept in ``.sandbox/defects/active.json`` and
the originals in ``.sandbox/defects/stash/``, so healing is an exact undo: local files come
back byte for byte, and in S3 the delete markers and bad versions a defect added are deleted
by version id (the good versions under them were never touched). Nothing here uploads a local
file over an S3 copy.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from backupkit import clock
from backupkit.catalog import local_backups, s3_key_for
from backupkit.storage.localfs import MANIFEST_SUFFIX, sidecar_path
from backupkit.config import Config, Source

STALE_NIGHTS = 2  # a stale history: the newest backups are more than max_age_hours (25 h) old


@dataclass(frozen=True)
class Defect:
    name: str
    default_source: str | None  # None: every source
    what: str


DEFECTS = {d.name: d for d in (
    Defect("missing-night", None, "no backup at all three nights before the newest (local and S3, every source)"),
    Defect("damaged-newest", "trixtech-db", "the newest local backup cut short by a third (S3 copy intact)"),
    Defect("bitflip", "trixtech-db", "one bit flipped in the newest local backup: same size, sidecar no longer "
                                     "matches (S3 copy intact)"),
    Defect("stale-history", None, f"the newest {STALE_NIGHTS} nights gone (local and S3, every source): "
                                  "the newest backup is older than 25 h"),
    Defect("missing-in-s3", "trixtech-files", "the newest backup's S3 copy deleted (a delete marker on top)"),
    Defect("wrong-s3-checksum", "trixtech-db-sql", "a new S3 version of the newest backup with other bytes of "
                                                   "the same size"),
    Defect("wal-gap", "trixtech-wal", "a segment of the WAL archive deleted after the newest base backup's start "
                                      "(recovery past it is impossible; its S3 copy stays)"),
)}


class DefectError(RuntimeError):
    pass


class Defects:
    """The active defects of one sandbox (``root`` = ``.sandbox/defects``)."""

    def __init__(self, root: Path, config: Config, client: Any):
        self.root, self.config, self.client = Path(root), config, client
        self.file = self.root / "active.json"

    def active(self) -> list[dict]:
        if not self.file.exists():
            return []
        try:
            data = json.loads(self.file.read_text())
            return [d for d in data if isinstance(d, dict) and d.get("name") in DEFECTS]
        except ValueError as exc:
            raise DefectError(f"{self.file} is not readable JSON ({exc}); fix or delete it") from None

    def _save(self, records: list[dict]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(records, indent=2) + "\n")
        tmp.replace(self.file)

    # -- helpers ------------------------------------------------------------------------------
    def _files(self, source: Source, backup_path: Path) -> list[Path]:
        return [p for p in (backup_path, sidecar_path(backup_path),
                            backup_path.with_name(backup_path.name + MANIFEST_SUFFIX)) if p.exists()]

    def _stash(self, record: dict, paths: list[Path]) -> None:
        stash = self.root / "stash" / record["id"]
        stash.mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copy2(p, stash / p.name)
            record.setdefault("stashed", []).append([str(p), str(stash / p.name)])

    def _delete_marker(self, record: dict, key: str) -> None:
        resp = self.client.delete_object(Bucket=self.config.bucket, Key=key)
        record.setdefault("s3_added", []).append([key, resp["VersionId"]])

    def _sources(self, defect: Defect, name: str | None) -> list[Source]:
        from sandbox.history import generated_sources

        wanted = name or defect.default_source
        return [self.config.source(wanted)] if wanted else list(generated_sources(self.config).sources)

    def _uploaded(self, source: Source) -> bool:
        return source.dump_format != "directory"

    # -- inject -----------------------------------------------------------------------------------
    def inject(self, name: str, source_name: str | None = None) -> dict:
        if name not in DEFECTS:
            raise DefectError(f"unknown defect {name!r}; known: {', '.join(DEFECTS)}")
        active = self.active()
        if any(d["name"] == name for d in active):
            raise DefectError(f"defect {name} is already active; `make heal` first")
        defect = DEFECTS[name]
        record: dict = {"name": name, "id": f"{len(active) + 1:02d}-{name}", "at": clock.now().isoformat(),
                        "what": defect.what}
        inject: Callable[[dict, list[Source]], None] = getattr(self, "_" + name.replace("-", "_"))
        sources = self._sources(defect, source_name)
        for s in sources:
            if not local_backups(s):
                raise DefectError(f"source {s.name} has no backups to damage")
        inject(record, sources)
        self._save([*active, record])
        return record

    def _remove_nights(self, record: dict, sources: list[Source], pick: Callable[[list], list]) -> None:
        for s in sources:
            for b in pick(local_backups(s)):
                files = self._files(s, b.path)
                self._stash(record, files)
                for p in files:
                    if self._uploaded(s):
                        self._delete_marker(record, s3_key_for(s, p.name))
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                record.setdefault("backups", []).append(f"{s.name}/{b.name}")

    def _missing_night(self, record: dict, sources: list[Source]) -> None:
        self._remove_nights(record, sources, lambda bs: [bs[-4]] if len(bs) >= 4 else [])

    def _stale_history(self, record: dict, sources: list[Source]) -> None:
        self._remove_nights(record, sources, lambda bs: bs[-STALE_NIGHTS:])

    def _newest(self, sources: list[Source]) -> tuple[Source, Path]:
        s = sources[0]
        return s, local_backups(s)[-1].path

    def _damaged_newest(self, record: dict, sources: list[Source]) -> None:
        s, path = self._newest(sources)
        self._stash(record, [path])
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        record["backups"] = [f"{s.name}/{path.name}"]

    def _bitflip(self, record: dict, sources: list[Source]) -> None:
        from sandbox.history import _flip_bit

        s, path = self._newest(sources)
        self._stash(record, [path])
        _flip_bit(path)
        record["backups"] = [f"{s.name}/{path.name}"]

    def _missing_in_s3(self, record: dict, sources: list[Source]) -> None:
        s, path = self._newest(sources)
        self._delete_marker(record, s3_key_for(s, path.name))
        record["backups"] = [f"{s.name}/{path.name}"]

    def _wrong_s3_checksum(self, record: dict, sources: list[Source]) -> None:
        s, path = self._newest(sources)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        key = s3_key_for(s, path.name)
        resp = self.client.put_object(Bucket=self.config.bucket, Key=key, Body=bytes(data), ChecksumAlgorithm="SHA256")
        record["s3_added"] = [[key, resp["VersionId"]]]
        record["backups"] = [f"{s.name}/{path.name}"]

    def _wal_gap(self, record: dict, sources: list[Source]) -> None:
        from backupkit.wal.backups import read_base_backup
        from backupkit.wal.naming import classify, segment_number, segment_of

        s = sources[0]
        if s.kind != "wal_archive":
            raise DefectError(f"wal-gap needs a WAL archive source, not {s.name} ({s.kind})")
        start = read_base_backup(local_backups(s)[-1].path).start_lsn
        segs = sorted(p for p in s.spec.archive_dir.iterdir() if (c := classify(p.name)) and c.kind == "segment")
        size = segs[0].stat().st_size if segs else 0
        after = [p for p in segs if size and segment_number(classify(p.name), size) > segment_of(start, size)]
        if len(after) < 2:
            raise DefectError(f"fewer than two segments archived after the newest base backup of {s.name}: "
                              f"wait for the next archive_timeout (or run SELECT pg_switch_wal()) and try again")
        victim = after[len(after) // 2 - 1]
        self._stash(record, [victim])
        victim.unlink()
        record["backups"] = [f"{s.name}/{victim.name}"]

    # -- heal -------------------------------------------------------------------------------------
    def heal(self) -> list[dict]:
        """Undo every active defect, newest first; returns what was healed."""
        active = self.active()
        for record in reversed(active):
            for key, version in record.get("s3_added", []):
                # A bad version is under the bucket's default retention (GOVERNANCE): bypass it for our own.
                self.client.delete_object(Bucket=self.config.bucket, Key=key, VersionId=version,
                                          BypassGovernanceRetention=True)
            for original, stashed in record.get("stashed", []):
                Path(original).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(stashed, original)
            shutil.rmtree(self.root / "stash" / record["id"], ignore_errors=True)
        self._save([])
        return active


def describe(active: list[dict]) -> list[str]:
    lines = []
    on = {d["name"]: d for d in active}
    for name, d in DEFECTS.items():
        state = f"ACTIVE since {datetime.fromisoformat(on[name]['at']):%Y-%m-%d %H:%M} UTC" if name in on else "off"
        lines.append(f"  {name:18} {state:30} {d.what}")
    return lines


__all__ = ["DEFECTS", "Defect", "Defects", "DefectError", "describe"]
