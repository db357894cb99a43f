"""A small real backup history for the daily-service and inventory tests.

Nightly copies of real pg_dump output (custom and plain ``.sql.gz``) and a real
``.tar.gz`` file set, named by the sources' patterns, with ``sha256sum``-style
sidecars; a configuration file pointing at them; and an upload of the copies to the
loopback S3 bucket with SHA-256 checksums, as the cloud-sync job does.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from backupkit.catalog import local_backups, s3_key_for
from backupkit.config import Config, load_config
from sandbox.history import sha256_file

NOW = datetime(2025, 6, 15, 8, 0, tzinfo=timezone.utc)
NIGHTS = 8


def write_sidecar(path: Path) -> None:
    path.with_name(path.name + ".sha256").write_text(f"{sha256_file(path)}  {path.name}\n")


def files_archive(out: Path) -> Path:
    """A .tar.gz with the file set's paths, as the files backup job writes it."""
    with tarfile.open(out, "w:gz") as tar:
        for name, data in (("opt/trixtech/config/app.yaml", b"db: trixtech\nport: 8080\n"),
                           ("opt/trixtech/uploads/logo.png", bytes(range(256)) * 40)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out


@dataclass
class History:
    root: Path
    config_path: Path
    state_dir: Path
    log_dir: Path

    def config(self) -> Config:
        return load_config(self.config_path)


CONFIG = """\
bucket:
  name: trixtech-backups
thresholds:
  max_age_hours: 25
  size_deviation: 0.5
  size_window: 7
databases:
  - name: trixtech-db
    database: trixtech
    dump_format: custom
    local_dir: {root}/database
    s3_prefix: database/
    pattern: trixtech_%Y%m%d_%H%M%S.dump
  - name: trixtech-db-sql
    database: trixtech
    dump_format: plain
    local_dir: {root}/database-sql
    s3_prefix: database-sql/
    pattern: trixtech_%Y%m%d_%H%M%S.sql.gz
file_sets:
  - name: trixtech-files
    local_dir: {root}/files
    s3_prefix: files/
    pattern: files_%Y%m%d_%H%M%S.tar.gz
    paths: [opt/trixtech/config, opt/trixtech/uploads]
logs:
  - name: db_backup
    path: {logs}/db_backup.log
  - name: cloud_sync
    path: {logs}/cloud_sync.log
verification:
  state_dir: {state}
  reread_fraction: {fraction}
"""


def make_history(root: Path, custom_dump: Path, plain_gz_dump: Path, *, nights: int = NIGHTS,
                 fraction: float = 0.25, now: datetime = NOW) -> History:
    """``nights`` nightly backups per source, the newest at the last 02:00 before ``now``."""
    root.mkdir(parents=True, exist_ok=True)
    archive = files_archive(root / "_template.tar.gz")
    templates = {"database": (custom_dump, "trixtech_%Y%m%d_%H%M%S.dump"),
                 "database-sql": (plain_gz_dump, "trixtech_%Y%m%d_%H%M%S.sql.gz"),
                 "files": (archive, "files_%Y%m%d_%H%M%S.tar.gz")}
    newest = now.replace(hour=2, minute=0, second=0, microsecond=0)
    if newest > now:  # before 02:00: last night's backup is yesterday's
        newest -= timedelta(days=1)
    for sub, (template, pattern) in templates.items():
        d = root / sub
        d.mkdir(parents=True, exist_ok=True)
        for i in range(nights):
            out = d / (newest - timedelta(days=i)).strftime(pattern)
            shutil.copyfile(template, out)
            write_sidecar(out)
    archive.unlink()
    logs = root / "logs"
    logs.mkdir()
    (logs / "db_backup.log").write_text("2025-06-15 02:00:00 - Starting backup\n"
                                        "2025-06-15 02:00:09 - backup completed\n")
    (logs / "cloud_sync.log").write_text("2025-06-15 03:00:00 - sync completed\n")
    cfg = root / "backups.yaml"
    cfg.write_text(CONFIG.format(root=root, logs=logs, state=root / "state", fraction=fraction))
    return History(root, cfg, root / "state", logs)


def upload_history(s3, config: Config) -> int:
    """Copy every local backup to the bucket with a stored SHA-256 (single-part uploads)."""
    n = 0
    for source in config.sources:
        for b in local_backups(source):
            with open(b.path, "rb") as f:
                s3.put_object(Bucket=config.bucket, Key=s3_key_for(source, b.name), Body=f,
                              ChecksumAlgorithm="SHA256")
            n += 1
    return n
