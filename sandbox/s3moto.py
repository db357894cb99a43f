"""moto 5.2.5's S3 served from our own process, adapted for a sandbox that runs for days.

``python -m sandbox.s3moto --port P --data DIR`` is the sandbox's (and the tests') S3
endpoint: moto's own WSGI application and request handler, with these adaptations, each
found in moto's source (``moto/s3/models.py``, ``moto/core/common_models.py``):

1. **Bodies on disk, once.** ``FakeKey`` keeps its body in a ``SpooledTemporaryFile``;
   ``ListObjectVersions`` deep-copies *every* version of the bucket for every page, and
   ``FakeKey.__getstate__``/``__setstate__`` make each copy read the whole body and write it
   to a new temporary file (deleted at once, kept open). Here the buffer is a
   :class:`~sandbox.s3blobs.BlobBuffer` (an immutable named file, opened only while read)
   and a key's state carries the buffer, not the bytes: a copy costs metadata only.
2. **No immortal copies.** ``BaseModel.__new__`` appends every instance to the class's
   ``instances_tracked`` list (for moto's dashboard), so those copies were never freed:
   the open files piled up until the server stopped (75 GB in a day). ``FakeKey``,
   ``FakeMultipart`` and ``FakeDeleteMarker`` are not tracked here.
3. **Multipart parts are ranges of the object.** A completed upload keeps its parts (for
   ``HeadObject(PartNumber=N)``); their bodies become views of the object's blob instead of
   a second copy of the data.
4. **Object lock on multipart uploads.** moto applies the bucket's default retention and
   the ``x-amz-object-lock-*`` headers only to ``PutObject``; S3 applies them to
   ``CompleteMultipartUpload`` too (the lock mode and date are given at
   ``CreateMultipartUpload``). Without it the sandbox's larger backups were never locked.

5. **Versions survive pickling.** ``_VersionedKeyStore`` (a bucket's keys) is a dict whose
   ``items()`` yields only each key's newest version, so pickling it dropped every noncurrent
   version and delete marker; it is pickled with its full lists here.
6. **Listings cost the page, not the bucket.** moto walks, filters and sorts the whole bucket
   for every ListObjectsV2 page and deep-copies every version for every ListObjectVersions
   page; :mod:`sandbox.s3listing` answers both from a sorted index of the key names, with
   moto's exact answers.
7. **Responses** (:mod:`sandbox.s3responses`): Quiet DeleteObjects answers only the errors,
   as S3 does; ListObjectsV2's entries and moto's timestamps are written without moto's
   generic serializer, byte for byte as it writes them.

State survives restarts (format and acceptance rules: docs/sandbox-s3-state.md): every request runs under the shared side of a lock; at most once
a second after a change, the exclusive side pickles the S3 backends (metadata only; bodies
are referenced by blob name) to ``DIR/state.pickle`` atomically, then deletes the blobs
nothing references any more. SIGTERM writes a last snapshot. A snapshot that cannot be read
(or that another moto version wrote) stops the server with a message instead of silently
starting empty: the bucket's history (versions, lock dates, tags) is not rebuilt from files.
The snapshot is a pickle: only ever load one this process wrote (it lives in ``.sandbox/``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from sandbox import s3listing, s3responses
from sandbox.s3blobs import BlobBuffer, BlobStore

MOTO_VERSION = "5.2.5"
SNAPSHOT_FORMAT = 1
SNAPSHOT_FILE = "state.pickle"
CHECKPOINT_DELAY = 1.0  # seconds after a change before the snapshot (a burst becomes one)
# Not persisting, a checkpoint only collects unreferenced bodies, and it costs the whole state
# (0.8 s under the exclusive lock at 20,000 keys): wait this many times its last cost, so it
# takes at most ~1/(1+N) of the server's time instead of most of it.
EPHEMERAL_COST_FACTOR = 20
POLL = 0.1  # seconds between looks at the change flag


def _sleep_unless(stop: threading.Event, seconds: float) -> None:
    """Sleep ``seconds``, returning early once ``stop`` is set."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < deadline:
        time.sleep(min(POLL, seconds))
LOCK_HEADERS = ("HTTP_X_AMZ_OBJECT_LOCK_MODE", "HTTP_X_AMZ_OBJECT_LOCK_RETAIN_UNTIL_DATE",
                "HTTP_X_AMZ_OBJECT_LOCK_LEGAL_HOLD")

_request = threading.local()  # the WSGI environ of the request this thread serves


class SnapshotError(RuntimeError):
    """The saved S3 state cannot be loaded; the message says what to do."""


class SharedExclusiveLock:
    """Many requests at once (shared) or one snapshot (exclusive); a waiting snapshot goes first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


# -- the adaptations -----------------------------------------------------------------------------
def _key_getstate(self: Any) -> dict:
    state = self.__dict__.copy()
    state.pop("lock", None)
    return state


def _key_setstate(self: Any, state: dict) -> None:
    self.__dict__.update(state)
    buf = self.__dict__.get("_value_buffer")
    if isinstance(buf, BlobBuffer):
        self._value_buffer = buf.view()  # never share a read position with another key
    self.lock = threading.Lock()


def _versions_reduce(self: Any) -> tuple:
    # A dict subclass pickles through items(), which this one overrides to give only the newest
    # version of each key: every noncurrent version and delete marker would be lost.
    return type(self), (), {"lists": dict(dict.items(self))}


def _versions_setstate(self: Any, state: dict) -> None:
    dict.update(self, state["lists"])


def _untracked_new(cls: type, *args: Any, **kwargs: Any) -> Any:
    return object.__new__(cls)


class _TempfileShim:
    """What ``moto.s3.models`` sees as ``tempfile``: its spooled buffers become blob buffers."""

    def __init__(self, store: BlobStore):
        self._store = store

    def SpooledTemporaryFile(self, *args: Any, **kwargs: Any) -> BlobBuffer:  # noqa: N802 - moto's name
        return BlobBuffer(self._store)

    def __getattr__(self, name: str) -> Any:
        import tempfile

        return getattr(tempfile, name)


def _lock_from_request() -> tuple[str | None, str | None, str | None]:
    environ = getattr(_request, "environ", None) or {}
    mode, until, hold = (environ.get(h) or None for h in LOCK_HEADERS)
    return mode, until, hold


def _wrap_create_multipart(original):
    def create_multipart_upload(self, bucket_name: str, *args: Any, **kwargs: Any):
        from moto.s3.exceptions import LockNotEnabled

        mode, until, hold = _lock_from_request()
        if (mode or until or hold == "ON") and not self.get_bucket(bucket_name).object_lock_enabled:
            raise LockNotEnabled
        multipart = original(self, bucket_name, *args, **kwargs)
        multipart.sandbox_lock = (mode, until, hold)
        return multipart

    return create_multipart_upload


def _wrap_complete_multipart(original):
    def complete_multipart_upload(self, bucket_name: str, multipart_id: str, body):
        bucket = self.get_bucket(bucket_name)
        multipart = bucket.multiparts.get(multipart_id)
        listed: list[int] = []

        def tee():
            for number, etag in body:
                listed.append(number)
                yield number, etag

        key = original(self, bucket_name, multipart_id, tee())
        if key is None or multipart is None:
            return key
        parts_as_views(key, multipart, listed)
        mode, until, hold = getattr(multipart, "sandbox_lock", (None, None, None))
        if not (mode or until or hold == "ON") and bucket.has_default_lock:
            mode, until = bucket.default_lock_mode, bucket.default_retention()
        key.lock_mode, key.lock_until = mode or key.lock_mode, until or key.lock_until
        key.lock_legal_status = hold or key.lock_legal_status
        return key

    return complete_multipart_upload


def parts_as_views(key: Any, multipart: Any, listed: list[int]) -> None:
    """Point the listed parts' bodies at their range of the completed object's blob."""
    offset = 0
    whole = key._value_buffer
    if not isinstance(whole, BlobBuffer):
        return
    sizes = [multipart.parts[n].contentsize for n in listed]
    if sum(sizes) != whole.length:
        return  # not the layout we expect: keep the parts as they are
    for number, size in zip(listed, sizes):
        multipart.parts[number]._value_buffer = whole.view(offset, size)
        offset += size


def patch_moto(store: BlobStore) -> None:
    """Apply the adaptations (module docstring) to the imported moto; refuses another version."""
    import moto
    from moto.core import serialize
    from moto.s3 import models, responses

    if moto.__version__ != MOTO_VERSION:
        raise RuntimeError(f"sandbox.s3moto adapts moto {MOTO_VERSION}'s internals; moto {moto.__version__} is "
                           "installed: check the adaptations against its source before changing the pin")
    if getattr(models, "_sandbox_patched", False):
        models.tempfile._store = store
        return
    models.tempfile = _TempfileShim(store)
    models.FakeKey.__getstate__ = _key_getstate
    models.FakeKey.__setstate__ = _key_setstate
    models.FakeKey.__del__ = lambda self: None  # disposing at garbage collection closed temp files; blobs need not
    models._VersionedKeyStore.__reduce__ = _versions_reduce
    models._VersionedKeyStore.__setstate__ = _versions_setstate
    s3listing.patch_store(models._VersionedKeyStore)
    for cls in (models.FakeKey, models.FakeMultipart, models.FakeDeleteMarker):
        cls.__new__ = staticmethod(_untracked_new)
    backend = models.S3Backend
    backend.create_multipart_upload = _wrap_create_multipart(backend.create_multipart_upload)
    backend.complete_multipart_upload = _wrap_complete_multipart(backend.complete_multipart_upload)
    s3listing.patch_backend(backend)
    s3responses.patch_responses(serialize, responses.S3Response)
    models._sandbox_patched = True


# -- the state on disk -----------------------------------------------------------------------------
class _Pickler(pickle.Pickler):
    def __init__(self, fh: io.BytesIO, refs: set[str]):
        super().__init__(fh, protocol=pickle.HIGHEST_PROTOCOL)
        self.refs = refs

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, BlobBuffer):
            if obj.blob:
                self.refs.add(obj.blob)
            return ("blob", obj.blob, obj.offset, obj.length)
        return None


# What a snapshot may name: moto's models and the few standard types their state holds.
SNAPSHOT_MODULES = ("collections", "datetime", "requests.structures")
SNAPSHOT_BUILTINS = ("set", "frozenset", "bytearray", "complex", "slice")


class _Unpickler(pickle.Unpickler):
    """Loads only what :func:`S3State._dump` writes (docs/sandbox-s3-state.md): classes of moto
    and :data:`SNAPSHOT_MODULES`, bodies as blob references that must exist."""

    def __init__(self, fh: Any, store: BlobStore):
        super().__init__(fh)
        self.store = store

    def find_class(self, module: str, name: str) -> Any:
        allowed = (module.startswith("moto.") or module in SNAPSHOT_MODULES
                   or (module == "builtins" and name in SNAPSHOT_BUILTINS)
                   or (module == "copyreg" and name == "_reconstructor"))
        if not allowed or name.startswith("__"):
            raise pickle.UnpicklingError(f"{module}.{name} is not part of an S3 snapshot")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        kind, blob, offset, length = pid
        if kind != "blob":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        if blob is not None and not self.store.path(blob).is_file():
            raise pickle.UnpicklingError(f"body {blob} is missing from {self.store.root}")
        return BlobBuffer(self.store, blob, offset, length)


class S3State:
    """The S3 backends of this process, their snapshot file and their body store."""

    def __init__(self, data_dir: str | Path, *, persist: bool = True, log=print):
        self.dir = Path(data_dir)
        self.store = BlobStore(self.dir / "blobs")
        self.file = self.dir / SNAPSHOT_FILE
        self.persist, self.log = persist, log
        self.lock = SharedExclusiveLock()
        self.changed = threading.Event()

    @staticmethod
    def _backends() -> dict:
        from moto.s3.models import s3_backends

        return {(account, partition): backend for account, per in s3_backends.items() for partition, backend in per.items()}

    def _dump(self) -> tuple[bytes, set[str], int]:
        from moto.s3.models import s3_backends

        backends = self._backends()
        state = {"format": SNAPSHOT_FORMAT, "moto": MOTO_VERSION, "backends": backends,
                 "bucket_accounts": dict(s3_backends.bucket_accounts)}
        refs: set[str] = set()
        buf = io.BytesIO()
        _Pickler(buf, refs).dump(state)
        keys = sum(len(b.keys) for be in backends.values() for b in be.buckets.values())
        return buf.getvalue(), refs, keys

    def load(self) -> int:
        """Load the snapshot if there is one (number of buckets), then drop unreferenced blobs."""
        from moto.s3.models import s3_backends

        if not self.persist or not self.file.exists():
            return 0
        try:
            with open(self.file, "rb") as fh:
                state = _Unpickler(fh, self.store).load()
            if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"not a format-{SNAPSHOT_FORMAT} snapshot")
            if state.get("moto") != MOTO_VERSION:
                raise ValueError(f"written with moto {state.get('moto')}, this is moto {MOTO_VERSION}")
        except Exception as exc:  # noqa: BLE001 - every way a snapshot can be unreadable ends here
            raise SnapshotError(f"the saved S3 state {self.file} cannot be loaded ({type(exc).__name__}: {exc}). "
                                "Nothing was changed. Move the file away to start with an empty bucket "
                                "(`make up` then uploads the local history again, with new versions and lock "
                                "dates), or `make clean` to start the whole sandbox over.") from None
        buckets = 0
        for (account, partition), saved in state["backends"].items():
            live = s3_backends[account][partition]
            live.__dict__.clear()
            live.__dict__.update(saved.__dict__)
            buckets += len(live.buckets)
        s3_backends.bucket_accounts.update(state["bucket_accounts"])
        self.checkpoint()
        return buckets

    def checkpoint(self) -> dict:
        """Snapshot (when persisting) and delete unreferenced blobs; returns what was done."""
        t0 = time.monotonic()
        with self.lock.exclusive():
            self.changed.clear()
            data, refs, keys = self._dump()
            orphans = self.store.unreferenced(refs)
        if self.persist:
            tmp = self.file.with_name(self.file.name + ".tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.file)
        removed, freed = self.store.remove(orphans)  # only once the new snapshot is in place
        report = {"keys": keys, "blobs": len(refs), "snapshot_bytes": len(data), "removed_blobs": removed,
                  "freed_bytes": freed, "seconds": round(time.monotonic() - t0, 3)}
        if removed:
            self.log(f"s3 state: {keys} key(s), {len(refs)} blob(s); removed {removed} unreferenced blob(s), "
                     f"{freed} bytes ({report['seconds']}s)")
        return report

    def run_checkpoints(self, stop: threading.Event, delay: float = CHECKPOINT_DELAY) -> None:
        # Polled with time.sleep, not Event.wait(timeout): under libfaketime (the suite's date
        # proofs) a timed Event.wait never times out, so snapshots would wait for shutdown and
        # shutdown for this thread.
        last_cost = 0.0
        while not stop.is_set():
            if not self.changed.is_set():
                time.sleep(POLL)
                continue
            _sleep_unless(stop, delay if self.persist else max(delay, EPHEMERAL_COST_FACTOR * last_cost))
            try:
                last_cost = self.checkpoint()["seconds"]
            except Exception as exc:  # noqa: BLE001 - keep serving; the next change tries again
                self.log(f"s3 state: snapshot failed: {type(exc).__name__}: {exc}")
                self.changed.set()
                _sleep_unless(stop, 5)

    def wsgi(self, app: Any) -> Any:
        """``app`` run under the shared lock; anything but GET/HEAD marks the state changed."""

        def guarded(environ: dict, start_response: Any) -> Any:
            _request.environ = environ
            try:
                with self.lock.shared():
                    result = app(environ, start_response)
                    if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
                        self.changed.set()
                    return result
            finally:
                _request.environ = None

        return guarded


def serve(host: str, port: int, data_dir: Path, *, persist: bool = True, ephemeral: bool = False) -> int:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    data_dir.mkdir(parents=True, exist_ok=True)
    state = S3State(data_dir, persist=persist, log=log)
    patch_moto(state.store)
    try:
        buckets = state.load()
    except SnapshotError as exc:
        log(f"sandbox S3 server not started: {exc}")
        return 3
    app = state.wsgi(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)

    def stop_serving(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop_serving)
    signal.signal(signal.SIGINT, stop_serving)
    stop = threading.Event()
    checkpoints = threading.Thread(target=state.run_checkpoints, args=(stop,), daemon=True)
    checkpoints.start()
    log(f"sandbox S3 server (moto {MOTO_VERSION}) on http://{host}:{port}, data {data_dir}"
        + (f", {buckets} bucket(s) restored" if buckets else "") + ("" if persist else ", not persisted"))
    try:
        server.serve_forever()
    finally:
        stop.set()
        checkpoints.join(10)
        if persist:
            state.checkpoint()
        log("sandbox S3 server stopped; state saved" if persist else "sandbox S3 server stopped")
        if ephemeral:  # no last collection first: the bodies go with the directory
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.s3moto", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="directory of the bodies and the snapshot")
    parser.add_argument("--ephemeral", action="store_true",
                        help="no snapshot, and delete --data on exit (tests, benchmarks)")
    args = parser.parse_args(argv)
    return serve(args.host, args.port, args.data, persist=not args.ephemeral, ephemeral=args.ephemeral)


if __name__ == "__main__":
    sys.exit(main())
