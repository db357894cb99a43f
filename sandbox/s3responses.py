"""Adaptation 7 of :mod:`sandbox.s3moto`: responses that cost what S3's cost, with moto's bytes.

* **Quiet DeleteObjects answers only the errors**, as S3 does ("in quiet mode the response
  includes only keys where the delete operation encountered an error"); moto listed every
  deleted key anyway: 1000 entries to serialize, and for the client to parse, per request.
* **ListObjectsV2 entries written directly.** moto's generic serializer walks the botocore
  model for every field of every ``Contents`` entry (about 0.1 ms per key, most of a page's
  cost once the listing itself is indexed: :mod:`sandbox.s3listing`). Here the rest of the
  answer is still serialized by moto, and the entries, which have a fixed shape, are written
  into it by :func:`contents_xml`; ``tests/test_sandbox_s3listing.py`` compares the bodies
  with moto's own, byte for byte, on random keys (markup characters, URL encoding, checksums,
  owners). An entry with any other field goes to moto's serializer.
* **moto's timestamps parsed directly.** The serializer turns each ``LastModified`` moto wrote
  as text back into a datetime with botocore's general parser (dateutil); the one format
  moto writes is parsed by ``datetime.fromisoformat``, anything else by botocore.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape

_MOTO_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")


def _fast_aware_datetime(original):
    def parse_to_aware_datetime(value: Any) -> Any:
        if isinstance(value, str) and _MOTO_TIMESTAMP.fullmatch(value):
            from dateutil.tz import tzutc

            try:
                return datetime.fromisoformat(value[:-1]).replace(tzinfo=tzutc())
            except ValueError:
                pass  # e.g. a 31st of February: the general parser says what is wrong
        return original(value)

    parse_to_aware_datetime.shipped = original
    return parse_to_aware_datetime


def _quiet(body: Any) -> bool:
    """Whether a DeleteObjects body asks for Quiet mode (``<Delete><Quiet>true</Quiet>``)."""
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(body)
    except (ElementTree.ParseError, TypeError, ValueError):
        return False  # moto's own parser answers a malformed body
    return any(child.tag.rpartition("}")[2] == "Quiet" and (child.text or "").strip() == "true" for child in root)


def _wrap_delete_keys(original):
    def delete_keys(self, *args: Any, **kwargs: Any):
        from moto.core.responses import ActionResult

        if not _quiet(self.body):
            return original(self, *args, **kwargs)
        serialized = self.serialized

        def only_errors(action_result: Any) -> Any:
            result = action_result.result
            if isinstance(result, dict) and "Deleted" in result:
                action_result = ActionResult({k: v for k, v in result.items() if k != "Deleted"})
            return serialized(action_result)

        self.serialized = only_errors  # this request's response object only
        return original(self, *args, **kwargs)

    return delete_keys


# The fields moto 5.2.5 puts in a ListObjectsV2 entry, in the order of botocore's Object shape.
CONTENT_FIELDS = ("Key", "LastModified", "ETag", "ChecksumAlgorithm", "Size", "StorageClass", "Owner")
_SPLICE_AFTER = "</IsTruncated>"  # Contents follow IsTruncated in ListBucketResult


def _text(value: Any) -> str:
    return escape(value if isinstance(value, str) else str(value))


def contents_xml(entries: list[dict]) -> str:
    """The ``<Contents>`` elements moto's serializer writes for these entries."""
    out = []
    for e in entries:
        out.append(f"<Contents><Key>{_text(e['Key'])}</Key><LastModified>{e['LastModified']}</LastModified>"
                   f"<ETag>{_text(e['ETag'])}</ETag>")
        out += [f"<ChecksumAlgorithm>{_text(a)}</ChecksumAlgorithm>" for a in e.get("ChecksumAlgorithm") or ()]
        out.append(f"<Size>{int(e['Size'])}</Size><StorageClass>{_text(e['StorageClass'])}</StorageClass>")
        if "Owner" in e:
            owner = e["Owner"]
            out.append(f"<Owner><DisplayName>{_text(owner['DisplayName'])}</DisplayName>"
                       f"<ID>{_text(owner['ID'])}</ID></Owner>")
        out.append("</Contents>")
    return "".join(out)


_ISO_ZEROED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z")


def _plain(entry: Any) -> bool:
    """Whether :func:`contents_xml` writes this entry as moto would (else moto's serializer does)."""
    if not isinstance(entry, dict) or not set(entry) <= set(CONTENT_FIELDS):
        return False
    if not all(isinstance(entry.get(k), str) for k in ("Key", "LastModified", "ETag", "StorageClass")):
        return False
    if not _ISO_ZEROED.fullmatch(entry["LastModified"]) or type(entry.get("Size")) is not int:
        return False
    owner = entry.get("Owner", {"DisplayName": "", "ID": ""})
    algorithms = entry.get("ChecksumAlgorithm", [])
    return (isinstance(owner, dict) and set(owner) == {"DisplayName", "ID"}
            and all(isinstance(v, str) for v in owner.values())
            and isinstance(algorithms, list) and all(isinstance(a, str) for a in algorithms))


def _wrap_list_v2(original):
    def list_objects_v2(self: Any) -> Any:
        from moto.core.responses import ActionResult

        serialized = self.serialized

        def spliced(action_result: Any) -> Any:
            result = action_result.result
            entries = result.get("Contents") if isinstance(result, dict) else None
            if not entries or not all(_plain(e) for e in entries):
                return serialized(action_result)
            status, headers, body = serialized(ActionResult({k: v for k, v in result.items() if k != "Contents"}))
            at = body.find(_SPLICE_AFTER) if isinstance(body, str) else -1
            if at < 0:
                return serialized(action_result)
            at += len(_SPLICE_AFTER)
            return status, headers, body[:at] + contents_xml(entries) + body[at:]

        self.serialized = spliced  # this request's response object only
        return original(self)

    list_objects_v2.shipped = original
    return list_objects_v2


def patch_responses(serialize: Any, s3_response: type) -> None:
    """Apply the three response adaptations (module docstring) to moto's serializer and S3Response."""
    serialize.parse_to_aware_datetime = _fast_aware_datetime(serialize.parse_to_aware_datetime)
    s3_response._bucket_response_delete_keys = _wrap_delete_keys(s3_response._bucket_response_delete_keys)
    s3_response.list_objects_v2 = _wrap_list_v2(s3_response.list_objects_v2)
