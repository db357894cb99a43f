"""The ``restore_command`` of a point-in-time restore: our code copies one archived file, nothing else runs.

PostgreSQL runs ``python -m backupkit.wal.restore_command --archive LOCATION --segment-size N %f %p``
(:mod:`backupkit.restore.pitr` writes it; no shell command from a backup or a configuration
file of one is ever used). Rules (docs/wal.md, "Point-in-time restore"):

- ``%f`` must be a name the archive holds (a segment, ``.partial``, ``.history`` or
  ``.backup``, :func:`backupkit.wal.naming.classify`); anything else is refused;
- ``%p`` must be ``pg_wal/NAME`` relative to the server's data directory (its working
  directory), without ``..``;
- the file is read through the verifier's readers (a directory or ``s3://bucket/prefix``),
  the uncompressed copy first, then ``.zst``, then ``.gz``; a segment must inflate to exactly
  the segment size, a history or label stays under its limit;
- it is written to a temporary name beside ``%p`` and renamed, so the server never reads half.

Exit 0: copied. 1: not in the archive (normal: recovery asks for files that do not exist
yet, e.g. the next timeline's history) or refused; the reason goes to stderr, the server log.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from backupkit.wal.archive import LocalArchive, Unreadable, read_small, read_windows
from backupkit.wal.history import MAX_HISTORY_BYTES
from backupkit.wal.naming import classify, valid_segment_size

COMPRESSIONS = ("", ".zst", ".gz")


def open_reader(location: str):
    if location.startswith("s3://"):
        from backupkit.storage.objectstore import Bucket, s3_client
        from backupkit.wal.s3 import S3Archive, split_prefix

        bucket, prefix = split_prefix(location)
        return S3Archive(Bucket(s3_client(endpoint_url=os.environ.get("AWS_ENDPOINT_URL")), bucket), prefix)
    return LocalArchive(Path(location))


def check_destination(dest: str) -> Path:
    p = Path(dest)
    if p.is_absolute() or p.parts[:1] != ("pg_wal",) or ".." in p.parts or len(p.parts) != 2:
        raise ValueError(f"refusing destination {dest!r}: expected pg_wal/NAME in the data directory")
    return p


def fetch(reader, name: str, dest: Path, segment_size: int) -> None:
    """Copy archived ``name`` to ``dest`` (raises FileNotFoundError, ValueError or Unreadable)."""
    c = classify(name)
    if c is None or c.compression:
        raise ValueError(f"refusing {name!r}: not a WAL file name PostgreSQL asks for")
    tmp = dest.with_name(f".{dest.name}.part")
    last: Exception | None = None
    for suffix in COMPRESSIONS:
        try:
            with open(tmp, "wb") as out:
                if c.kind == "segment":
                    for window in read_windows(reader, name + suffix, suffix, segment_size):
                        out.write(window)
                else:
                    out.write(read_small(reader, name + suffix, suffix, MAX_HISTORY_BYTES))
            os.replace(tmp, dest)
            return
        except Unreadable as exc:
            last = exc
            tmp.unlink(missing_ok=True)
            if exc.kind != "gap":  # present but damaged: do not fall back to another copy silently
                raise
    raise FileNotFoundError(f"{name} is not in {reader.location}") from last


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backupkit.wal.restore_command")
    p.add_argument("--archive", required=True, help="the archive: a directory or s3://bucket/prefix")
    p.add_argument("--segment-size", type=int, required=True)
    p.add_argument("name")
    p.add_argument("dest")
    args = p.parse_args(argv)
    try:
        if not valid_segment_size(args.segment_size):
            raise ValueError(f"segment size {args.segment_size} is not a power of two from 1 MB to 1 GB")
        fetch(open_reader(args.archive), args.name, check_destination(args.dest), args.segment_size)
    except FileNotFoundError as exc:
        print(f"backupkit restore_command: {exc}", file=sys.stderr)
        return 1
    except (ValueError, Unreadable, OSError) as exc:
        print(f"backupkit restore_command: {args.name}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
