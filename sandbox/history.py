"""A realistic nightly backup history for the sandbox and the tests, with switchable defects.

Why generated and not faked: every artifact is a real ``pg_dump`` of a real, growing
database or a real ``.tar.gz`` of an application file tree, so the verification,
retention and restore code runs against what production has, only smaller.

Speed without losing realism: the database grows once per *data epoch*
(:data:`EPOCH_DAYS` nights) and is dumped for real once per epoch and format; the nights
of an epoch get byte copies of that dump, so sizes grow month by month as in
production while a 400-night history needs only ~14 real dumps per format.

Kubernetes resource sources get what a nightly ``kubectl get deploy,svc,cm -n trixtech -o yaml``
writes, one ``List`` per kind and file (:func:`k8s_export`), released (image tags) monthly.

Layout written for each configured source (names from ``source.pattern`` at
02:00 UTC, file mtimes = the backup's timestamp)::

    <local_dir>/<name>                  the backup (file; a directory for directory dumps)
    <local_dir>/<name>.sha256           sidecar, sha256sum format: "<hex>  <name>\\n"
    <local_dir>/<name>.manifest.json    database backups only (format below)

Manifest format (``format`` 1), written next to every database backup; restore tests
compare the restored row counts to ``tables``::

    {"format": 1,
     "database": "trixtech",                 # database that was dumped
     "created_at": "2025-01-31T02:00:00+00:00",  # the backup's timestamp (as in its name)
     "pg_dump_version": "18.1",               # version of the pg_dump that wrote it
     "tables": {"public.bookings": 80000, "public.services": 200, "public.users": 20000},
                                              # exact count(*) per table at dump time (docs/manifest.md)
     "duration_seconds": 0.41}                # measured pg_dump time, with nightly jitter

Backup logs (``config.logs``) get one line per night and source, format
``YYYY-MM-DD HH:MM:SS LEVEL message``, e.g.
``2025-01-31 02:00:01 INFO backup completed source=trixtech-db file=... duration=0.41s size=2936074``;
a log whose name contains "db"/"database" gets the database sources, "file" the file
sets, "sync"/"cloud" one ``cloud sync completed`` line per night. Two WARNING lines are
written early in the history (long before "now"), none for the defects: a defect is
silent in the logs, as bit rot and a skipped upload are in real life.

S3 (when a client is given): every backup, sidecar and manifest is uploaded to
``config.bucket`` at :func:`backupkit.catalog.s3_key_for` with ``ChecksumAlgorithm=SHA256``
through boto3's managed transfer, so files above ``multipart_threshold`` are multipart
uploads whose stored SHA-256 is a composite of the part checksums. Directory-format
dumps are not uploaded (S3 has no directories; production would tar them first) and
have no sidecar (sha256sum hashes files).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

from backupkit.catalog import local_backups, s3_key_for
from backupkit.storage.localfs import MANIFEST_SUFFIX, sidecar_path
from backupkit.storage.objectstore import Bucket
from backupkit.config import REPO_ROOT, Config, Source
from backupkit.pgbin import pg_bin
from backupkit.pgserver import LocalPostgres
from sandbox.bookingdb import pg_dump

BACKUP_HOUR = 2  # UTC, the nightly cron of the runbook's backup scripts
EPOCH_DAYS = 30  # nights that share one real dump (the database grows between epochs)
MANIFEST_FORMAT = 1
DEFAULT_MULTIPART = 8 * 1024 * 1024  # the AWS CLI / boto3 default threshold and part size
UPLOAD_WORKERS = 8
ASSETS = REPO_ROOT / "include" / "sandbox" / "files"


@dataclass(frozen=True)
class Defects:
    """Realistic faults to switch on; every one is silent in the backup logs."""

    missing_night: date | None = None  # no backup at all that night (local and S3)
    damaged: str | None = None  # source whose newest backup gets a bit flip after its sidecar and S3 copy
    stale_days: int = 0  # the history stops this many days before `now`
    missing_in_s3: str | None = None  # source whose newest backup was never uploaded
    wrong_s3_checksum: str | None = None  # source whose newest S3 copy has other bytes of the same size


@dataclass
class History:
    """What :func:`generate_history` wrote."""

    root: Path
    sources: dict[str, list[Path]]  # per source, its backups oldest first
    nights: list[datetime] = field(default_factory=list)  # nights written (a missing night is absent)
    bucket: str | None = None  # None when nothing was uploaded
    s3_keys: dict[str, list[str]] = field(default_factory=dict)  # per source, keys of uploaded backups
    defects: Defects = field(default_factory=Defects)
    database: str = "trixtech"

    def newest(self, source: str) -> Path:
        return self.sources[source][-1]


# -- time -----------------------------------------------------------------------------
def generated_sources(config: Config) -> Config:
    """``config`` without its WAL archives: those are real, made by the sandbox's server
    (:mod:`sandbox.walarchive`), never generated or synced here."""
    return replace(config, sources=tuple(s for s in config.sources if s.kind != "wal_archive"))


def backup_nights(now: datetime, days: int, stale_days: int = 0) -> list[datetime]:
    """The ``days`` nightly 02:00 UTC timestamps ending ``stale_days`` before the last one <= now."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    now = now.astimezone(timezone.utc)
    last = now.replace(hour=BACKUP_HOUR, minute=0, second=0, microsecond=0)
    if last > now:
        last -= timedelta(days=1)
    last -= timedelta(days=stale_days)
    return [last - timedelta(days=i) for i in reversed(range(days))]


def _set_mtime(path: Path, when: datetime) -> None:
    ts = when.timestamp()
    if path.is_dir():
        for p in path.rglob("*"):
            os.utime(p, (ts, ts))
    os.utime(path, (ts, ts))


# -- database side --------------------------------------------------------------------
def table_counts(pg: LocalPostgres, database: str) -> dict[str, int]:
    """Exact ``count(*)`` of every ordinary table, keyed ``schema.table``, from one snapshot.

    The restore side's own query (:mod:`backupkit.restore.verify_rows`), so a manifest
    and a restored database are always counted the same way.
    """
    from backupkit.restore.verify_rows import exact_row_counts

    return exact_row_counts(pg, database)


def pg_dump_version() -> str:
    out = subprocess.run([pg_bin("pg_dump"), "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"\(PostgreSQL\)\s+(\S+)", out)
    return m.group(1) if m else out.strip()


def grow_booking_db(pg: LocalPostgres, database: str, *, when: datetime, users: int, bookings: int) -> None:
    """A month of business: new customers and bookings as of ``when``; past bookings complete."""
    ts = when.astimezone(timezone.utc).isoformat()
    tag = when.strftime("%Y%m%d%H%M")
    pg.psql(f"""
BEGIN;
INSERT INTO users (email, full_name, created_at)
SELECT 'customer-{tag}-' || g || '@example.com', 'Customer {tag}-' || g,
       timestamptz '{ts}' - ((g * 13 % 43200) || ' minutes')::interval
FROM generate_series(1, {int(users)}) AS g
ON CONFLICT (email) DO NOTHING;
WITH u AS (SELECT array_agg(id ORDER BY id) AS ids FROM users),
     s AS (SELECT array_agg(id ORDER BY id) AS ids FROM services)
INSERT INTO bookings (user_id, service_id, starts_at, status, notes, created_at)
SELECT u.ids[1 + (g * 7919) % cardinality(u.ids)],
       s.ids[1 + (g * 31) % cardinality(s.ids)],
       timestamptz '{ts}' + ((g * 37 % 1440) || ' hours')::interval,
       CASE WHEN g % 9 = 0 THEN 'cancelled' ELSE 'confirmed' END,
       md5('{tag}' || g),
       timestamptz '{ts}' - ((g * 17 % 43200) || ' minutes')::interval
FROM u, s, generate_series(1, {int(bookings)}) AS g;
UPDATE bookings SET status = 'completed' WHERE status = 'confirmed' AND starts_at < timestamptz '{ts}';
COMMIT;
ANALYZE users;
ANALYZE bookings;
""", database)


# -- file-set side --------------------------------------------------------------------
_UPLOAD_KINDS = (("receipt", "pdf", b"%PDF-1.4\n"), ("photo", "jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"))


UPLOADS_START = 60  # customer uploads in the first epoch
UPLOADS_GROWTH = 1.16  # per epoch: archives never jump past the size check's tolerance


def _uploads_upto(epoch: int) -> int:
    return round(UPLOADS_START * UPLOADS_GROWTH ** epoch)


def _uploads(rel: str, epoch: int, when: datetime) -> list[tuple[str, bytes, datetime]]:
    """Customer uploads, cumulative and growing ~16% a month: 8-40 KiB each, incompressible like PDFs."""
    members = []
    for j in range(epoch + 1):
        added = when - timedelta(days=EPOCH_DAYS * (epoch - j))
        for i in range(_uploads_upto(j - 1) if j else 0, _uploads_upto(j)):
            rng = random.Random(f"{rel}/{i}")
            kind, ext, magic = _UPLOAD_KINDS[i % 2]
            data = magic + rng.randbytes(rng.randint(8 * 1024, 40 * 1024))
            members.append((f"{rel}/{added:%Y/%m}/{kind}-{i:05d}.{ext}", data, added))
    return members


def file_tree(source: Source, epoch: int, when: datetime) -> list[tuple[str, bytes, datetime]]:
    """(member path, content, mtime) of the application files under ``source.paths`` at ``epoch``."""
    release = f"{when:%Y.%m}"
    members: list[tuple[str, bytes, datetime]] = []
    for raw in source.paths:
        rel = raw.strip("/")
        assets = ASSETS / rel
        if "upload" in Path(rel).name:
            members += _uploads(rel, epoch, when)
        elif assets.is_dir():
            for f in sorted(p for p in assets.rglob("*") if p.is_file()):
                data = f.read_bytes().replace(b"@RELEASE@", release.encode())
                members.append((f"{rel}/{f.relative_to(assets).as_posix()}", data, when))
        else:
            members.append((f"{rel}/README", f"{rel} (sandbox release {release})\n".encode(), when))
    return members


K8S_NAMESPACE = "trixtech"


def _k8s_meta(name: str, when: datetime, epoch: int, labels: dict[str, str]) -> dict:
    """Metadata as ``kubectl get -o yaml`` writes it (uid, resourceVersion, creation time)."""
    uid = hashlib.sha256(f"{K8S_NAMESPACE}/{name}".encode()).hexdigest()
    return {"name": name, "namespace": K8S_NAMESPACE, "labels": labels,
            "uid": f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:32]}",
            "resourceVersion": str(1000 + epoch), "generation": epoch + 1,
            "creationTimestamp": (when - timedelta(days=EPOCH_DAYS * epoch)).strftime("%Y-%m-%dT%H:%M:%SZ")}


def k8s_export(source: Source, epoch: int, when: datetime) -> list[tuple[str, bytes, datetime]]:
    """The booking application's resources as a nightly ``kubectl get deploy,svc,cm -n trixtech -o yaml``
    per kind (one ``List`` per file, with status), released monthly: every object passes the official
    schemas (``backupkit.checks.k8smanifests``)."""
    import yaml

    release = f"1.{epoch}.0"
    deployments, services = [], []
    for app, port, replicas in (("backend", 8091, 2), ("frontend", 8092, 1)):
        labels = {"app.kubernetes.io/name": f"trixtech-{app}", "app.kubernetes.io/version": release}
        env = [{"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "trixtech-db", "key": "url"}}}] \
            if app == "backend" else [{"name": "API_URL", "value": "http://trixtech-backend"}]
        deployments.append({"apiVersion": "apps/v1", "kind": "Deployment",
                            "metadata": _k8s_meta(f"trixtech-{app}", when, epoch, labels),
                            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app.kubernetes.io/name":
                                                                                          f"trixtech-{app}"}},
                                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                                         "name": app, "image": f"registry.trixtech.local/{app}:{release}",
                                         "ports": [{"containerPort": port, "protocol": "TCP"}], "env": env,
                                         "readinessProbe": {"httpGet": {"path": "/health", "port": port}},
                                         "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}}},
                            "status": {"replicas": replicas, "readyReplicas": replicas,
                                       "updatedReplicas": replicas, "observedGeneration": epoch + 1}})
        services.append({"apiVersion": "v1", "kind": "Service",
                         "metadata": _k8s_meta(f"trixtech-{app}", when, epoch, labels),
                         "spec": {"selector": {"app.kubernetes.io/name": f"trixtech-{app}"}, "type": "ClusterIP",
                                  "ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]}})
    # One ConfigMap of release notes per monthly release so far: the export grows as the cluster does.
    config = [{"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": _k8s_meta("trixtech-config", when, epoch, {"app.kubernetes.io/part-of": "trixtech"}),
               "data": {"LOG_LEVEL": "info", "RELEASE": release}}] + [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": _k8s_meta(f"trixtech-release-1-{j}-0", when, j, {"app.kubernetes.io/part-of": "trixtech"}),
         "data": {"notes": random.Random(f"release-{j}").randbytes(300).hex()}} for j in range(epoch + 1)]
    return [(f"{K8S_NAMESPACE}/{kind}.yaml",
             yaml.safe_dump({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
                             "items": json.loads(json.dumps(items))},  # no shared dicts: kubectl writes no aliases
                            sort_keys=False).encode(), when)
            for kind, items in (("deployments", deployments), ("services", services), ("configmaps", config))]


def write_archive(out: Path, members: Iterable[tuple[str, bytes, datetime]], when: datetime) -> Path:
    """A ``.tar.gz`` with relative member paths, directory entries and a fixed gzip mtime."""
    dirs: set[str] = set()
    with open(out, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=int(when.timestamp()), compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mtime in members:
            parts = name.split("/")
            for depth in range(1, len(parts)):
                d = "/".join(parts[:depth])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(when.timestamp())
                    info.uid = info.gid = 1000
                    info.uname = info.gname = "trixtech"
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(mtime.timestamp())
            info.uid = info.gid = 1000
            info.uname = info.gname = "trixtech"
            tar.addfile(info, io.BytesIO(data))
    return out


# -- artifacts ------------------------------------------------------------------------
@dataclass
class _Artifact:
    """One real backup made for an epoch; its nights get byte copies."""

    path: Path
    sha256: str | None  # None for directory dumps
    size: int
    duration: float  # measured seconds to make it
    tables: dict[str, int] | None = None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _make_artifacts(config: Config, pg: LocalPostgres, database: str, epoch: int, when: datetime,
                    work: Path) -> dict[str, _Artifact]:
    made: dict[str, _Artifact] = {}
    counts = table_counts(pg, database) if config.databases else None
    for src in config.sources:
        out = work / f"{epoch:03d}-{src.name}"
        t0 = time.monotonic()
        if src.is_database:
            gz = src.pattern.template.endswith(".gz")
            pg_dump(pg, database, out, src.dump_format or "custom", gzip_plain=gz)
        elif src.kind == "kubernetes":
            write_archive(out, k8s_export(src, epoch, when), when)
        else:
            write_archive(out, file_tree(src, epoch, when), when)
        duration = time.monotonic() - t0
        digest = None if out.is_dir() else sha256_file(out)
        made[src.name] = _Artifact(out, digest, _tree_size(out), duration, counts if src.is_database else None)
    return made


def _jitter(source: str, when: datetime) -> float:
    """A deterministic nightly factor on durations (load differs from night to night)."""
    return random.Random(f"{source}@{when.isoformat()}").uniform(0.85, 1.3)


# -- logs -----------------------------------------------------------------------------
def _log_kind(name: str) -> str:
    n = name.lower()
    if "sync" in n or "cloud" in n:
        return "sync"
    if "file" in n:
        return "files"
    if "db" in n or "database" in n:
        return "database"
    return "other"


def _line(when: datetime, level: str, message: str) -> str:
    return f"{when:%Y-%m-%d %H:%M:%S} {level} {message}\n"


# -- S3 -------------------------------------------------------------------------------
def upload_files(client: Any, bucket: str, items: list[tuple[Path, str]], *,
                 multipart_threshold: int = DEFAULT_MULTIPART, workers: int = UPLOAD_WORKERS) -> None:
    """Upload (path, key) pairs with S3's SHA-256 checksum, ``workers`` at a time."""
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=multipart_threshold,
                         use_threads=False)

    def one(item: tuple[Path, str]) -> None:
        path, key = item
        client.upload_file(str(path), bucket, key, ExtraArgs={"ChecksumAlgorithm": "SHA256"}, Config=cfg)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for fut in [pool.submit(one, it) for it in items]:
            fut.result()


def _companions(path: Path) -> list[Path]:
    side = sidecar_path(path)
    man = path.with_name(path.name + MANIFEST_SUFFIX)
    return [p for p in (side, man) if p.exists()]


@dataclass
class SyncReport:
    """What :func:`sync_to_s3` did: uploads, and the keys it left alone and why."""

    uploaded: int = 0
    differing: list[str] = field(default_factory=list)  # S3 copy of another size than the local file
    deleted_in_s3: list[str] = field(default_factory=list)  # newest version is a delete marker


def sync_to_s3(config: Config, client: Any, *, multipart_threshold: int = DEFAULT_MULTIPART) -> SyncReport:
    """Upload the local backups, sidecars and manifests the bucket has never had.

    A key with any version in the bucket is never uploaded again: not over a current copy
    (a local file damaged since must not replace a good S3 copy; the daily verification
    reports the difference), and not over a delete marker (someone, or retention, deleted
    it). So ``make up`` after a restart only adds the nights generated since.
    """
    report = SyncReport()
    items: list[tuple[Path, str]] = []
    config = generated_sources(config)
    for src in config.sources:
        if src.dump_format == "directory":
            continue
        known = {g[0].key: g[0] for g in Bucket(client, config.bucket).version_groups(src.s3_prefix)}
        for b in local_backups(src):
            for p in (b.path, *_companions(b.path)):
                key = s3_key_for(src, p.name)
                newest = known.get(key)
                if newest is None:
                    items.append((p, key))
                elif newest.is_marker:
                    report.deleted_in_s3.append(key)
                elif newest.size != p.stat().st_size:
                    report.differing.append(key)
    upload_files(client, config.bucket, items, multipart_threshold=multipart_threshold)
    report.uploaded = len(items)
    return report


def _flip_bit(path: Path) -> None:
    """Flip one bit in the middle of the data (of the largest file of a directory dump); keep the mtime."""
    target = max((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size) \
        if path.is_dir() else path
    st = target.stat()
    with open(target, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0x10]))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


# -- the generator --------------------------------------------------------------------
def _validate(config: Config, defects: Defects, nights: list[datetime]) -> None:
    for name in (defects.damaged, defects.missing_in_s3, defects.wrong_s3_checksum):
        if name is not None:
            config.source(name)  # raises ConfigError naming the configured sources
    if defects.stale_days < 0:
        raise ValueError("stale_days must be >= 0")
    if defects.missing_night is not None and defects.missing_night not in {n.date() for n in nights}:
        raise ValueError(f"missing_night {defects.missing_night} is not one of the generated nights "
                         f"({nights[0].date()} .. {nights[-1].date()})")


def generate_history(config: Config, pg: LocalPostgres, *, now: datetime, days: int, s3_client: Any = None,
                     defects: Defects = Defects(), database: str = "trixtech",
                     multipart_threshold: int = DEFAULT_MULTIPART, growth: float = 0.03) -> History:
    """Write ``days`` nights of backups of every configured source (see the module doc).

    ``database`` on ``pg`` is dumped for every database source and GROWS by ``growth``
    (share of its users at the start, with five bookings per new user) at each new
    epoch, so after the call the live database equals the newest dumps. Existing log
    files are replaced.
    """
    if days < 1:
        raise ValueError("days must be >= 1")
    config = generated_sources(config)
    nights = backup_nights(now, days, defects.stale_days)
    _validate(config, defects, nights)
    return _generate(config, pg, nights, s3_client=s3_client, defects=defects, database=database,
                     multipart_threshold=multipart_threshold, growth=growth, first_epoch=0,
                     grow_first=False, append_logs=False)


def extend_history(config: Config, pg: LocalPostgres, *, now: datetime, s3_client: Any = None,
                   database: str = "trixtech", multipart_threshold: int = DEFAULT_MULTIPART,
                   growth: float = 0.03) -> History | None:
    """Add the nights between the newest existing backup and ``now`` (a sandbox started again
    after a break), appending to the logs; None when the history is already current."""
    config = generated_sources(config)
    existing = [local_backups(s) for s in config.sources]
    newest = max((b[-1].timestamp for b in existing if b), default=None)
    if newest is None:
        raise ValueError("no existing history to extend; use generate_history")
    nights = [n for n in backup_nights(now, max(1, (now - newest).days + 2)) if n > newest]
    if not nights:
        return None
    first_epoch = max(len(b) for b in existing) // EPOCH_DAYS + 1
    return _generate(config, pg, nights, s3_client=s3_client, defects=Defects(), database=database,
                     multipart_threshold=multipart_threshold, growth=growth, first_epoch=first_epoch,
                     grow_first=True, append_logs=True)


def add_new_sources(config: Config, pg: LocalPostgres, *, now: datetime, days: int, s3_client: Any = None,
                    database: str = "trixtech") -> tuple[History | None, list[str]]:
    """Give sources configured after the history was made (an upgrade added them) ``days`` nights of
    their own; (the history written or None, the database sources left without one).

    File sets and Kubernetes exports are generated; a new *database* source is not (its dumps
    grow the live database, which the existing dumps already match): it is named so that
    ``make clean`` can be suggested. The backup logs are left as they are.
    """
    config = generated_sources(config)
    empty = [s for s in config.sources if not local_backups(s)]
    files_only = tuple(s for s in empty if not s.is_database)
    skipped = [s.name for s in empty if s.is_database]
    if not files_only:
        return None, skipped
    sub = replace(config, sources=files_only, logs=())
    nights = backup_nights(now, days)
    return _generate(sub, pg, nights, s3_client=s3_client, defects=Defects(), database=database,
                     multipart_threshold=DEFAULT_MULTIPART, growth=0.0, first_epoch=0, grow_first=False,
                     append_logs=True), skipped


def _history_root(config: Config) -> Path:
    return Path(os.path.commonpath([str(s.local_dir.parent) for s in config.sources]))


def _generate(config: Config, pg: LocalPostgres, nights: list[datetime], *, s3_client: Any, defects: Defects,
              database: str, multipart_threshold: int, growth: float, first_epoch: int, grow_first: bool,
              append_logs: bool) -> History:
    root = _history_root(config)
    for src in config.sources:
        src.local_dir.mkdir(parents=True, exist_ok=True)
    version = pg_dump_version() if config.databases else None
    start_users = 0
    if config.databases:
        start_users = int(pg.psql("SELECT count(*) FROM users", database).strip() or 0)
    add_users = max(5, round(start_users * growth))

    written: dict[str, list[Path]] = {s.name: [] for s in config.sources}
    log_lines: dict[str, list[str]] = {lg.name: [] for lg in config.logs}
    upload: list[tuple[Path, str]] = []
    s3_keys: dict[str, list[str]] = {s.name: [] for s in config.sources}
    newest_of = {s.name: nights[-1] for s in config.sources}
    if defects.missing_night is not None and nights[-1].date() == defects.missing_night:
        newest_of = {s.name: nights[-2] for s in config.sources} if len(nights) > 1 else {}
    work = Path(tempfile.mkdtemp(prefix=".history-", dir=root))
    written_nights: list[datetime] = []
    try:
        artifacts: dict[str, _Artifact] = {}
        for i, night in enumerate(nights):
            epoch = first_epoch + i // EPOCH_DAYS
            if i % EPOCH_DAYS == 0:
                for a in artifacts.values():
                    shutil.rmtree(a.path) if a.path.is_dir() else a.path.unlink()
                if config.databases and (i > 0 or grow_first):
                    grow_booking_db(pg, database, when=night, users=add_users, bookings=5 * add_users)
                artifacts = _make_artifacts(config, pg, database, epoch, night, work)
            if defects.missing_night is not None and night.date() == defects.missing_night:
                continue
            written_nights.append(night)
            synced, synced_bytes = 0, 0
            for src in config.sources:
                art = artifacts[src.name]
                name = src.pattern.name_for(night)
                dest = src.local_dir / name
                if art.path.is_dir():
                    shutil.rmtree(dest, ignore_errors=True)
                    shutil.copytree(art.path, dest)
                else:
                    shutil.copyfile(art.path, dest)
                files = [dest]
                if art.sha256 is not None:
                    side = sidecar_path(dest)
                    side.write_text(f"{art.sha256}  {name}\n")
                    files.append(side)
                duration = round(art.duration * _jitter(src.name, night), 3)
                if src.is_database:
                    man = dest.with_name(name + MANIFEST_SUFFIX)
                    man.write_text(json.dumps({
                        "format": MANIFEST_FORMAT, "database": database, "created_at": night.isoformat(),
                        "pg_dump_version": version, "tables": art.tables, "duration_seconds": duration,
                    }, indent=2, sort_keys=True) + "\n")
                    files.append(man)
                for f in files:
                    _set_mtime(f, night)
                written[src.name].append(dest)
                done = night + timedelta(seconds=max(1.0, duration))
                for lg in config.logs:
                    kind = _log_kind(lg.name)
                    if kind == {"database": "database", "files": "files"}.get(src.kind):  # k8s exports: no log
                        log_lines[lg.name].append(_line(done, "INFO", (
                            f"backup completed source={src.name} file={name} duration={duration:.2f}s "
                            f"size={art.size}")))
                if s3_client is None or art.path.is_dir():
                    continue
                is_newest = newest_of.get(src.name) == night
                if is_newest and defects.missing_in_s3 == src.name:
                    continue
                for f in files:
                    body = f
                    if f == dest and is_newest and defects.wrong_s3_checksum == src.name:
                        body = work / f"wrong-{name}"
                        shutil.copyfile(dest, body)
                        _flip_bit(body)
                    upload.append((body, s3_key_for(src, f.name)))
                    synced += 1
                    synced_bytes += f.stat().st_size
                s3_keys[src.name].append(s3_key_for(src, name))
            for lg in config.logs:
                kind = _log_kind(lg.name)
                when = night + timedelta(minutes=30)
                if kind == "sync":
                    log_lines[lg.name].append(_line(when, "INFO", (
                        f"cloud sync completed bucket={config.bucket} objects={synced} size={synced_bytes} "
                        f"duration={1 + synced_bytes / 40e6:.1f}s")))
                elif kind == "other":
                    log_lines[lg.name].append(_line(when, "INFO", f"nightly backup run completed sources={len(config.sources)}"))
        if s3_client is not None and upload:
            upload_files(s3_client, config.bucket, upload, multipart_threshold=multipart_threshold)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if defects.damaged is not None and written[defects.damaged]:
        _flip_bit(written[defects.damaged][-1])
    _write_logs(config, log_lines, written_nights, append=append_logs)
    return History(root=root, sources=written, nights=written_nights,
                   bucket=config.bucket if s3_client is not None else None,
                   s3_keys={k: v for k, v in s3_keys.items() if v} if s3_client is not None else {},
                   defects=defects, database=database)


def _write_logs(config: Config, lines: dict[str, list[str]], nights: list[datetime], *, append: bool) -> None:
    if not append and len(nights) >= 3:
        # Two warnings early in the history: long resolved, they must not alarm today's check.
        early = nights[len(nights) // 5], nights[len(nights) // 4]
        for lg in config.logs:
            kind = _log_kind(lg.name)
            if kind == "database":
                lines[lg.name].append(_line(early[0] + timedelta(seconds=31), "WARNING",
                                            'pg_dump: could not obtain lock on relation "bookings", '
                                            "retrying in 30s (attempt 1/3)"))
            elif kind == "sync":
                lines[lg.name].append(_line(early[1] + timedelta(minutes=12), "WARNING",
                                            "upload slow: RequestTimeout on part 1, retrying (attempt 1/5)"))
    for lg in config.logs:
        entries = sorted(lines[lg.name])  # lines start with their timestamp
        if not entries and append:
            continue
        lg.path.parent.mkdir(parents=True, exist_ok=True)
        with open(lg.path, "a" if append else "w") as f:
            f.writelines(entries)
        if entries:
            last = datetime.strptime(entries[-1][:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
            os.utime(lg.path, (last.timestamp(), last.timestamp()))


__all__ = ["Defects", "History", "SyncReport", "generate_history", "extend_history", "sync_to_s3", "upload_files",
           "backup_nights", "table_counts", "grow_booking_db", "file_tree", "write_archive", "sha256_file",
           "EPOCH_DAYS", "MANIFEST_FORMAT"]
