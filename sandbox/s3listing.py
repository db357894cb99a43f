"""Adaptation 6 of :mod:`sandbox.s3moto`: S3 listings from a sorted index of each bucket's key names.

moto 5.2.5 answers *every page* of a listing by walking the whole bucket (``moto/s3/models.py``):
``list_objects_v2`` calls ``list_objects``, which copies the key dict, takes the newest version
of every key, filters by prefix, sorts, then sorts again with the common prefixes and finds the
continuation point by a linear scan; ``list_object_versions`` deep-copies and sorts every version
of the bucket. Listing N keys 1000 a page costs O(N^2 / 1000); real S3 serves a page in the time
of the page. Here each bucket's ``_VersionedKeyStore`` keeps the sorted list of its key names
(a new name is inserted by bisection, a removed one deleted, any other change of the name set
drops the list, rebuilt at the next listing), and a page starts by bisection at the later of the
prefix and the continuation point and walks only what it returns; the members of a common
prefix are skipped by bisection too.

The answers are moto's own, quirks included, so nothing else in the sandbox changes:
``tests/test_sandbox_s3listing.py`` compares both functions with moto's as shipped, on the same
state built by seeded random puts, overwrites, deletes, delete markers and version deletions.
The quirks kept: a key whose newest version is a delete marker still yields its common prefix
(ListObjectsV2 with a delimiter); ListObjectVersions with a ``key-marker`` and no
``version-id-marker`` also leaves out the first version at or after the marker; versions of
one key are ordered by last-modified millisecond, older first on a tie. Inputs whose answer is
an error or an edge (an unknown continuation token, ``max-keys`` of 0 or less, a table bucket)
go to moto's own function.
"""

from __future__ import annotations

import copy
import threading
from bisect import bisect_left, bisect_right
from typing import Any, Iterator

INDEX_ATTR = "_sandbox_names"  # the sorted key names, an attribute of the store (never pickled)
_LOCK = threading.Lock()  # index changes and page walks (both short) run one at a time
_MAX_CHAR = chr(0x10FFFF)


# -- the index -------------------------------------------------------------------------------------
def names(store: dict) -> list[str]:
    """The store's key names, sorted (built now if a change dropped the list). Call under _LOCK."""
    index = store.__dict__.get(INDEX_ATTR)
    if index is None:
        index = sorted(dict.keys(store))
        store.__dict__[INDEX_ATTR] = index
    return index


def _added(store: dict, name: str) -> None:
    index = store.__dict__.get(INDEX_ATTR)
    if index is not None:
        i = bisect_left(index, name)
        if i == len(index) or index[i] != name:
            index.insert(i, name)


def _removed(store: dict, name: str) -> None:
    index = store.__dict__.get(INDEX_ATTR)
    if index is not None:
        i = bisect_left(index, name)
        if i < len(index) and index[i] == name:
            del index[i]


def _dropped(store: dict) -> None:
    store.__dict__.pop(INDEX_ATTR, None)


def _adding(original):
    def wrapper(self, key, *args, **kwargs):
        with _LOCK:
            new = not dict.__contains__(self, key)
            result = original(self, key, *args, **kwargs)
            if new and dict.__contains__(self, key):
                _added(self, key)
            return result

    return wrapper


def _removing(original):
    def wrapper(self, key, *args, **kwargs):
        with _LOCK:
            result = original(self, key, *args, **kwargs)
            if not dict.__contains__(self, key):
                _removed(self, key)
            return result

    return wrapper


def _dropping(original):
    def wrapper(self, *args, **kwargs):
        with _LOCK:
            _dropped(self)
            return original(self, *args, **kwargs)

    return wrapper


def patch_store(store_cls: type) -> None:
    """Keep the index through every method that can change a store's set of names."""
    store_cls.__setitem__ = _adding(store_cls.__setitem__)
    store_cls.setlist = _adding(store_cls.setlist)
    store_cls.setdefault = _adding(dict.setdefault)
    store_cls.pop = _removing(store_cls.pop)
    store_cls.__delitem__ = _removing(dict.__delitem__)
    for method in ("clear", "update", "popitem", "__ior__"):
        store_cls_method = getattr(store_cls, method, None) or getattr(dict, method)
        setattr(store_cls, method, _dropping(store_cls_method))
    store_cls.__setstate__ = _dropping(store_cls.__setstate__)


# -- a page of current objects (ListObjectsV2) -----------------------------------------------------
def _past(index: list[str], prefix: str, i: int) -> int:
    """The position after the names that start with ``prefix``, searching from ``i``."""
    if prefix and prefix[-1] != _MAX_CHAR:
        return bisect_left(index, prefix[:-1] + chr(ord(prefix[-1]) + 1), i)
    while i < len(index) and index[i].startswith(prefix):
        i += 1
    return i


def current_page(store: dict, prefix: str, delimiter: str | None, after: str | None, want: int,
                 delete_marker: type) -> list[Any]:
    """Up to ``want`` entries in name order: newest versions that are not delete markers, and
    common prefixes (strings), of the names under ``prefix`` that sort after ``after``."""
    out: list[Any] = []
    with _LOCK:
        index = names(store)
        i = bisect_left(index, prefix)
        if after is not None:
            i = max(i, bisect_right(index, after))
        while i < len(index) and len(out) < want:
            name = index[i]
            if not name.startswith(prefix):
                break
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                folder = name[:cut + len(delimiter)]
                if after is None or folder > after:
                    out.append(folder)
                i = _past(index, folder, i)
                continue
            versions = dict.get(store, name)
            if versions and not isinstance(versions[-1], delete_marker):
                out.append(versions[-1])
            i += 1
    return out


def list_objects_v2(original):
    def list_objects_v2(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys):
        from moto.s3.models import FakeDeleteMarker, FakeTableStorageBucket

        after = None
        if continuation_token or start_after:
            after = self._pagination_tokens.get(continuation_token) if continuation_token else start_after
        if isinstance(bucket, FakeTableStorageBucket) or max_keys <= 0 or (after is None and (
                continuation_token or start_after)):
            return original(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
        page = current_page(bucket.keys, prefix or "", delimiter, after, max_keys + 1, FakeDeleteMarker)
        return self._truncate_result(page, max_keys)

    list_objects_v2.shipped = original  # moto's own, for the tests that compare the two
    return list_objects_v2


# -- a page of versions (ListObjectVersions) -------------------------------------------------------
def _newest_first(versions: list[Any]) -> list[Any]:
    from moto.core.utils import unix_time_millis

    return sorted(versions, key=lambda v: -unix_time_millis(v.last_modified))  # stable: older first on a tie


def _start(store: dict, index: list[str], key_marker: str | None, version_id_marker: str | None,
           prefix: str) -> tuple[int, int] | None:
    """Where moto's page begins: (name position, versions of that name to leave out), None: an empty page."""
    if key_marker is None:
        return bisect_left(index, prefix), 0
    i = bisect_left(index, key_marker)
    if not version_id_marker:
        return i, 1  # moto leaves out the first version at or after the key marker too
    if i == len(index) or index[i] != key_marker:
        return None
    for rank, version in enumerate(_newest_first(dict.get(store, key_marker) or [])):
        if version.version_id == version_id_marker:
            return i, rank + 1
    return None


def _any_version(store: dict, index: list[str], i: int, skip: int, end: int) -> bool:
    """Whether a version is left in ``index[i:end]`` once ``skip`` versions of ``index[i]`` are left out."""
    if len(dict.get(store, index[i]) or ()) > skip:
        return True
    return any(dict.get(store, index[j]) for j in range(i + 1, end))


class _VersionsPage:
    """One ListObjectVersions page as moto 5.2.5 answers it, walking only the names it returns."""

    def __init__(self, prefix: str, delimiter: str | None, key_marker: str | None, max_keys: int | None,
                 fake_key: type):
        self.prefix, self.delimiter, self.key_marker, self.max_keys = prefix, delimiter, key_marker, max_keys
        self.fake_key = fake_key
        self.versions: list[Any] = []
        self.markers: list[Any] = []
        self.prefixes: set[str] = set()
        self.next_key: str | None = None
        self.next_version: str | None = None
        self.last: Any = None  # the last version added

    def answer(self) -> tuple:
        return self.versions, sorted(self.prefixes), self.markers, self.next_key, self.next_version

    def full(self, name: str, folder: str | None) -> bool:
        """Whether the page is full before this entry; then the next markers are set."""
        if self.max_keys is None or len(self.versions) + len(self.markers) + len(self.prefixes) < self.max_keys:
            return False
        if folder is not None:
            self.next_key, self.next_version = folder, None
        elif self.last is not None:
            self.next_key, self.next_version = self.last.name, self.last.version_id
        else:
            self.next_key, self.next_version = name, None
        return True

    def fill(self, store: dict, index: list[str], i: int, skip: int) -> None:
        prefix = self.prefix
        while i < len(index):
            name = index[i]
            if not name.startswith(prefix):
                if name > prefix:
                    return  # past every name under the prefix
                i, skip = max(i + 1, bisect_left(index, prefix)), 0
                continue
            cut = name.find(self.delimiter, len(prefix)) if self.delimiter else -1
            if cut >= 0:  # a common prefix: its first version counts, the others change nothing
                folder = name[:cut + len(self.delimiter)]
                end = _past(index, folder, i)
                if folder != self.key_marker and _any_version(store, index, i, skip, end):
                    self.prefixes.add(folder)
                    if self.full(name, folder):
                        return
                i, skip = end, 0
                continue
            ordered = _newest_first(dict.get(store, name) or [])
            for rank in range(skip, len(ordered)):
                version = ordered[rank]
                if self.full(name, None):
                    return
                entry = copy.copy(version)  # moto answers with copies, marked latest or not
                entry.is_latest = rank == 0
                self.last = version
                (self.versions if isinstance(version, self.fake_key) else self.markers).append(entry)
            i, skip = i + 1, 0


def list_object_versions(original):
    def list_object_versions(self, bucket_name, delimiter=None, key_marker=None, max_keys=1000, prefix="",
                             version_id_marker=None):
        from moto.s3.models import FakeKey

        bucket = self.get_bucket(bucket_name)
        if not isinstance(prefix, str):
            return original(self, bucket_name, delimiter, key_marker, max_keys, prefix, version_id_marker)
        page = _VersionsPage(prefix, delimiter, key_marker, max_keys, FakeKey)
        with _LOCK:
            index = names(bucket.keys)
            begin = _start(bucket.keys, index, key_marker, version_id_marker, prefix)
            if begin is not None:
                page.fill(bucket.keys, index, *begin)
        return page.answer()

    list_object_versions.shipped = original
    return list_object_versions


def patch_backend(backend_cls: type) -> None:
    """Serve ListObjectsV2 and ListObjectVersions pages from the index."""
    backend_cls.list_objects_v2 = list_objects_v2(backend_cls.list_objects_v2)
    backend_cls.list_object_versions = list_object_versions(backend_cls.list_object_versions)
