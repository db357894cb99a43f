"""Facts about the bucket and its objects that the weekly report and the quarterly audit judge.

Default encryption, server-side encryption and public ACL grants of every backup object
(one HeadObject, and with ``acls`` one GetObjectAcl, per object, a small pool at a time).
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

from backupkit.storage.objectstore import Bucket, error_code, is_not_found

MAX_KEPT = 1000  # object keys kept per finding in the scan result
HEAD_WORKERS = 8


# -- encryption ----------------------------------------------------------------------------------
def sse_matches(actual: str | None, expected: str) -> bool:
    """DSSE-KMS is KMS encryption (with two layers), so it satisfies ``aws:kms``."""
    if actual is None:
        return False
    return actual == expected or (expected == "aws:kms" and actual == "aws:kms:dsse")


def bucket_encryption(bucket: Bucket, expected: str) -> dict:
    """The bucket's default encryption rule and whether it is of the ``expected`` kind."""
    resp, err = bucket.setting("encryption")
    if err is not None:
        if err[0] == "ServerSideEncryptionConfigurationNotFoundError":
            return {"ok": False, "algorithm": None, "detail": f"s3://{bucket.name} has no default encryption "
                                                              f"(expected {expected})"}
        raise RuntimeError(f"cannot read the default encryption of s3://{bucket.name}: {err[0]}: {err[1]}")
    rules = (resp.get("ServerSideEncryptionConfiguration") or {}).get("Rules") or []
    default = (rules[0].get("ApplyServerSideEncryptionByDefault") or {}) if rules else {}
    alg = default.get("SSEAlgorithm")
    ok = sse_matches(alg, expected)
    detail = (f"default encryption {alg}" + (f" with key {default['KMSMasterKeyID']}" if default.get("KMSMasterKeyID")
                                             else "") + ("" if ok else f", expected {expected}"))
    return {"ok": ok, "algorithm": alg, "kms_key": default.get("KMSMasterKeyID"),
            "bucket_key": bool(rules and rules[0].get("BucketKeyEnabled")), "detail": detail}


PUBLIC_GRANTEES = ("http://acs.amazonaws.com/groups/global/AllUsers",
                   "http://acs.amazonaws.com/groups/global/AuthenticatedUsers")


def public_grants(grants: Iterable[dict]) -> list[str]:
    """``GRANTEE:PERMISSION`` of every ACL grant to everyone or to any AWS account."""
    out = []
    for g in grants:
        uri = (g.get("Grantee") or {}).get("URI")
        if uri in PUBLIC_GRANTEES:
            out.append(f"{uri.rsplit('/', 1)[-1]}:{g.get('Permission')}")
    return out


def scan_objects(bucket: Bucket, prefixes: Sequence[str], expected: str, *, acls: bool = False,
                 workers: int = HEAD_WORKERS) -> dict:
    """HEAD (and with ``acls`` GetObjectAcl) every current object under ``prefixes``.

    Returns ``counts`` and (the first :data:`MAX_KEPT` of) the keys ``unencrypted``, ``wrong_kind``
    (``[key, algorithm]``), ``public`` (``[key, grants]``) and ``errors`` (``[key, error]``). One request per object
    (two with ACLs), ``workers`` at a time: a few seconds per ten thousand objects.
    """
    keys = [o.key for p in prefixes for o in bucket.objects(p)]

    def one(key: str) -> tuple[str, str | None, list[str], str | None]:
        try:
            head = bucket.head(key)
            if head is None:
                return key, None, [], "NoSuchKey: deleted since the listing"
            grants = public_grants(bucket.object_acl(key)) if acls else []
            return key, head.get("ServerSideEncryption"), grants, None
        except Exception as exc:
            if is_not_found(exc):
                return key, None, [], "NoSuchKey: deleted since the listing"
            return key, None, [], f"{error_code(exc)[0]}: {exc}"

    unencrypted, wrong, public, errors = [], [], [], []
    by_alg: Counter = Counter()
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys) or 1))) as pool:
        for key, alg, grants, err in pool.map(one, keys):
            if err is not None:
                if "NoSuchKey" in err or "404" in err:
                    continue  # deleted since the listing (a retention sweep): nothing to judge
                errors.append([key, err])
                continue
            by_alg[alg or "none"] += 1
            if alg is None:
                unencrypted.append(key)
            elif not sse_matches(alg, expected):
                wrong.append([key, alg])
            if grants:
                public.append([key, ", ".join(grants)])
    found = {"unencrypted": sorted(unencrypted), "wrong_kind": sorted(wrong), "public": sorted(public),
             "errors": errors}
    # Counts are complete; the lists are capped so a wholly unencrypted bucket stays a small XCom.
    return {"objects": len(keys), "by_algorithm": dict(by_alg), "counts": {k: len(v) for k, v in found.items()},
            **{k: v[:MAX_KEPT] for k, v in found.items()}, "expected": expected, "prefixes": list(prefixes)}
