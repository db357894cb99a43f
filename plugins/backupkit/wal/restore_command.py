"""The ``restore_command`` of a point-in-time restore: our code copies one archived file, nothing else runs.

PostgreSQL runs ``python -m backupkit.wal.restore_command --socket PATH --segment-size N %f %p``
(:mod:`backupkit.restore.pitr` writes it; no shell command from a backup or a configuration
file of one is ever used): the file comes from the restore's :class:`~backupkit.wal.fetcher.WalFetcher`,
which reads the archive (a directory or S3) and checks it; this process holds no credential.
``--archive DIR`` instead copies from a local directory itself (by hand, or for tests).
Rules (docs/wal.md, "Point-in-time restore"):

- ``%f`` must be a name the archive holds (a segment, ``.partial``, ``.history`` or
  ``.backup``, :func:`backupkit.wal.naming.classify`); anything else is refused;
- ``%p`` must be ``pg_wal/NAME`` relative to the server's data directory (its working
  directory), without ``..``;
- the file is read through the verifier's readers, the uncompressed copy first, then
  ``.zst``, then ``.gz``; a segment must inflate to exactly the segment size, a history or
  label stays under its limit (from the fetcher: what it sends must be exactly that long);
- it is written to a temporary name beside ``%p`` and renamed, so the server never reads half.

Exit 0: copied. 1: not in the archive (normal: recovery asks for files that do not exist
yet, e.g. the next timeline's history) or refused; the reason goes to stderr, the server log.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from backupkit.wal.archive import LocalArchive, Unreadable, read_small, read_windows
from backupkit.wal.history import MAX_HISTORY_BYTES
from backupkit.wal.naming import classify, valid_segment_size

COMPRESSIONS = ("", ".zst", ".gz")


def open_reader(location: str):
    """A local archive directory (S3 is read by the fetcher, never with credentials here)."""
    if location.startswith("s3://"):
        raise ValueError("an archive in S3 is served through --socket (the restore's fetcher), not read here")
    return LocalArchive(Path(location))


def check_destination(dest: str) -> Path:
    p = Path(dest)
    if p.is_absolute() or p.parts[:1] != ("pg_wal",) or ".." in p.parts or len(p.parts) != 2:
        raise ValueError(f"refusing destination {dest!r}: expected pg_wal/NAME in the data directory")
    return p


def fetch(reader, name: str, dest: Path, segment_size: int,
          inspect: Callable[[str, memoryview | bytes], None] | None = None) -> None:
    """Copy archived ``name`` to ``dest`` (raises FileNotFoundError, ValueError or Unreadable).

    ``inspect(stored_name, chunk)`` sees every chunk before it is written (the fetcher's checks
    of :mod:`backupkit.wal.fetcher`); it raises :class:`Unreadable` to refuse the file."""
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
                        if inspect is not None:
                            inspect(name + suffix, window)
                        out.write(window)
                else:
                    data = read_small(reader, name + suffix, suffix, MAX_HISTORY_BYTES)
                    if inspect is not None:
                        inspect(name + suffix, data)
                    out.write(data)
            os.replace(tmp, dest)
            return
        except Unreadable as exc:
            last = exc
            tmp.unlink(missing_ok=True)
            if exc.kind != "gap":  # present but damaged: do not fall back to another copy silently
                raise
    raise FileNotFoundError(f"{name} is not in {reader.location}") from last


def receive(socket_path: str, name: str, dest: Path, segment_size: int, timeout: float = 3600.0) -> None:
    """Ask the fetcher for ``name`` and write its answer to ``dest`` (same errors as :func:`fetch`)."""
    import socket

    c = classify(name)
    if c is None or c.compression:
        raise ValueError(f"refusing {name!r}: not a WAL file name PostgreSQL asks for")
    expected = segment_size if c.kind == "segment" else None
    limit = expected if expected is not None else MAX_HISTORY_BYTES
    tmp = dest.with_name(f".{dest.name}.part")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(name.encode("ascii") + b"\n")
        stream = sock.makefile("rb")
        line = stream.readline(4097).decode("utf-8", "replace").rstrip("\n")
        verdict, _, rest = line.partition(" ")
        if verdict == "NO":
            raise FileNotFoundError(rest)
        if verdict != "OK" or not rest.isdigit():
            raise ValueError(rest or "the fetcher gave no answer")
        size = int(rest)
        if size > limit or (expected is not None and size != expected):
            raise ValueError(f"the fetcher announced {size} bytes, expected {expected or f'at most {limit}'}")
        got = 0
        try:
            with open(tmp, "wb") as out:
                while got < size:
                    chunk = stream.read(min(1 << 20, size - got))
                    if not chunk:
                        raise ValueError(f"the fetcher sent {got} of {size} bytes")
                    out.write(chunk)
                    got += len(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backupkit.wal.restore_command")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="the restore's fetcher (backupkit.wal.fetcher)")
    where.add_argument("--archive", help="a local archive directory")
    p.add_argument("--segment-size", type=int, required=True)
    p.add_argument("name")
    p.add_argument("dest")
    args = p.parse_args(argv)
    try:
        if not valid_segment_size(args.segment_size):
            raise ValueError(f"segment size {args.segment_size} is not a power of two from 1 MB to 1 GB")
        dest = check_destination(args.dest)
        if args.socket:
            receive(args.socket, args.name, dest, args.segment_size)
        else:
            fetch(open_reader(args.archive), args.name, dest, args.segment_size)
    except FileNotFoundError as exc:
        print(f"backupkit restore_command: {exc}", file=sys.stderr)
        return 1
    except (ValueError, Unreadable, OSError) as exc:
        print(f"backupkit restore_command: {args.name}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
