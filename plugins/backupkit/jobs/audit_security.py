"""The quarterly audit's security controls over the bucket (see :mod:`backupkit.jobs.audit`).

  ``security.recovery_points_encrypted`` -- bucket default encryption of the configured
  kind (``reports.sse_algorithm``), and every backup object encrypted with it.
  ``security.manual_deletion_prevented`` -- versioning enabled, object lock enabled
  with a default retention rule (without one, objects are not locked).
  ``security.public_access_blocked`` -- all four Block Public Access settings on, no
  public grant in the bucket ACL, the bucket policy not public, and no backup object
  with an ACL grant to everyone.
  ``security.secure_transport_required`` -- the bucket policy denies requests with
  ``aws:SecureTransport = false`` (``info`` instead of ``fail`` with
  ``reports.require_secure_transport: false``, for an endpoint that has no TLS at all).
  ``security.cross_region_copy`` -- a replication rule copies the bucket (required only
  with ``reports.require_cross_region_copy``; else reported as ``info``).
"""

from __future__ import annotations

import json
from typing import Any

from backupkit.config import Config
from backupkit.jobs.audit import Control, _error
from backupkit.reports.weekly import MAX_LISTED
from backupkit.storage.inspect import bucket_encryption, public_grants, scan_objects
from backupkit.storage.objectstore import Bucket


def _setting(bucket: Bucket, name: str) -> tuple[dict | None, str | None]:
    """A bucket setting, or the error ``CODE: message`` that S3 answered instead."""
    answer, err = bucket.setting(name)
    return answer, (f"{err[0]}: {err[1]}" if err else None)


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def denies_insecure_transport(policy_text: str | None, bucket: str) -> tuple[bool, str]:
    """Does the bucket policy deny every request made without TLS, for the bucket and its objects?"""
    if not policy_text:
        return False, "no bucket policy"
    try:
        policy = json.loads(policy_text)
    except ValueError as exc:
        return False, f"bucket policy is not JSON: {exc}"
    objects_arn = f"arn:aws:s3:::{bucket}/*"
    for st in _as_list(policy.get("Statement", [])):
        if not isinstance(st, dict) or st.get("Effect") != "Deny":
            continue
        principal = st.get("Principal")
        if not (principal == "*" or (isinstance(principal, dict) and "*" in _as_list(principal.get("AWS")))):
            continue
        actions = [a.lower() for a in _as_list(st.get("Action", []))]
        if not any(a in ("*", "s3:*") for a in actions):
            continue
        resources = _as_list(st.get("Resource", []))
        if not any(r in ("*", "arn:aws:s3:::*", objects_arn) for r in resources):
            continue
        for op in ("Bool", "BoolIfExists"):
            cond = (st.get("Condition") or {}).get(op) or {}
            values = {k.lower(): [str(v).lower() for v in _as_list(val)] for k, val in cond.items()}
            if values.get("aws:securetransport") == ["false"]:
                return True, f"statement {st.get('Sid') or '(no Sid)'} denies s3:* when aws:SecureTransport is false"
    return False, "no Deny statement for aws:SecureTransport = false covering the bucket's objects"


def security_controls(config: Config, store: Bucket) -> list[Control]:
    """Encryption, deletion protection, public access, TLS-only policy and replication of the bucket."""
    bucket = store.name
    expected = config.reports.sse_algorithm
    prefixes = sorted({p for s in config.sources for p in s.s3_prefixes})
    pab, pab_err = _setting(store, "public_access_block")
    flags = (pab or {}).get("PublicAccessBlockConfiguration") or {}
    owner, _ = _setting(store, "ownership_controls")
    acls_disabled = any(r.get("ObjectOwnership") == "BucketOwnerEnforced"
                        for r in ((owner or {}).get("OwnershipControls") or {}).get("Rules", []))
    # Object ACLs are read only where S3 honours them: IgnorePublicAcls or disabled ACLs (bucket owner
    # enforced) make every public grant ineffective, and skipping them halves the requests.
    check_acls = not (flags.get("IgnorePublicAcls") or acls_disabled)
    scan = scan_objects(store, prefixes, expected, acls=check_acls)

    # encryption
    enc_fail, enc_ev = [], []
    try:
        default = bucket_encryption(store, expected)
        if default["ok"]:
            enc_ev.append(f"bucket default: {default['detail']}")
        else:
            enc_fail.append(default["detail"])
    except Exception as exc:
        enc_fail.append(f"cannot read the bucket encryption: {_error(exc)}")
    enc_ev.append(f"{scan['objects']} backup object(s) under {', '.join(prefixes)}: "
                  + (", ".join(f"{k}: {v}" for k, v in sorted(scan["by_algorithm"].items())) or "none"))
    if scan["unencrypted"]:
        enc_fail.append(f"{scan['counts']['unencrypted']} object(s) without server-side encryption: "
                        + ", ".join(scan["unencrypted"][:MAX_LISTED]))
    if scan["wrong_kind"]:
        enc_fail.append(f"{scan['counts']['wrong_kind']} object(s) not encrypted with {expected}: "
                        + ", ".join(f"{k} ({a})" for k, a in scan["wrong_kind"][:MAX_LISTED]))
    if scan["errors"]:
        enc_fail.append(f"{scan['counts']['errors']} object(s) could not be inspected: "
                        + ", ".join(f"{k}: {e}" for k, e in scan["errors"][:5]))
    controls = [Control("security.recovery_points_encrypted", "security", "Recovery points are encrypted",
                        "BACKUP_RECOVERY_POINT_ENCRYPTED", "fail" if enc_fail else "pass",
                        "; ".join(enc_fail)[:600] if enc_fail else f"bucket default and all {scan['objects']} backup "
                                                                  f"objects use {expected}", enc_ev + enc_fail)]

    # versioning and object lock
    del_fail, del_ev = [], []
    versioning, err = _setting(store, "versioning")
    if err:
        del_fail.append(f"cannot read versioning: {err}")
    else:
        status = versioning.get("Status", "never enabled")
        del_ev.append(f"versioning: {status}; MFA delete: {versioning.get('MFADelete', 'Disabled')}")
        if status != "Enabled":
            del_fail.append(f"versioning is {status}: an overwrite or delete destroys the backup")
    lock, err = _setting(store, "object_lock")
    if err and "ObjectLockConfigurationNotFound" in err:
        del_fail.append("object lock is not enabled on the bucket")
    elif err:
        del_fail.append(f"cannot read the object lock configuration: {err}")
    else:
        conf = lock.get("ObjectLockConfiguration") or {}
        retention = (conf.get("Rule") or {}).get("DefaultRetention")
        del_ev.append(f"object lock: {conf.get('ObjectLockEnabled', 'not enabled')}; default retention: "
                      + (f"{retention.get('Mode')} {retention.get('Days') or retention.get('Years')} "
                         f"{'days' if retention.get('Days') else 'years'}" if retention else "none"))
        if conf.get("ObjectLockEnabled") != "Enabled":
            del_fail.append("object lock is not enabled on the bucket")
        elif not retention:
            del_fail.append("object lock has no default retention: new backups are not locked")
    controls.append(Control("security.manual_deletion_prevented", "security",
                            "Backups cannot be deleted or overwritten by hand", "BACKUP_RECOVERY_POINT_MANUAL_"
                            "DELETION_DISABLED / BACKUP_RESOURCES_PROTECTED_BY_BACKUP_VAULT_LOCK",
                            "fail" if del_fail else "pass",
                            "; ".join(del_fail) if del_fail else "versioning and object lock with default "
                                                                 "retention are enabled", del_ev + del_fail))

    # public access
    pub_fail, pub_ev = [], []
    if pab_err and "NoSuchPublicAccessBlockConfiguration" in pab_err:
        pub_fail.append("no Block Public Access configuration on the bucket")
    elif pab_err:
        pub_fail.append(f"cannot read Block Public Access: {pab_err}")
    else:
        pub_ev.append("Block Public Access: " + ", ".join(f"{k}={v}" for k, v in sorted(flags.items())))
        off = [k for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
               if not flags.get(k)]
        if off:
            pub_fail.append(f"Block Public Access settings off: {', '.join(off)}")
    acl, err = _setting(store, "acl")
    if err:
        pub_fail.append(f"cannot read the bucket ACL: {err}")
    else:
        grants = public_grants(acl.get("Grants", ()))
        pub_ev.append(f"bucket ACL public grants: {', '.join(grants) or 'none'}")
        if grants:
            pub_fail.append(f"the bucket ACL grants {', '.join(grants)}")
    status, err = _setting(store, "policy_status")
    if err and "NoSuchBucketPolicy" in err:
        pub_ev.append("bucket policy: none (not public)")
    elif err:
        pub_fail.append(f"cannot read the bucket policy status: {err}")
    else:
        public = bool((status.get("PolicyStatus") or {}).get("IsPublic"))
        pub_ev.append(f"bucket policy public: {public}")
        if public:
            pub_fail.append("the bucket policy makes the bucket public")
    if check_acls:
        pub_ev.append(f"{scan['objects']} backup object ACL(s) inspected, {scan['counts']['public']} with "
                      f"public grants")
    else:
        pub_ev.append("object ACLs not inspected: " + ("ACLs are disabled (BucketOwnerEnforced)" if acls_disabled
                                                       else "IgnorePublicAcls is on") + ", so no ACL can make an "
                      "object public")
    if scan["public"]:
        pub_fail.append(f"{scan['counts']['public']} backup object(s) readable by everyone: "
                        + ", ".join(f"{k} ({g})" for k, g in scan["public"][:MAX_LISTED]))
    controls.append(Control("security.public_access_blocked", "security", "No backup is readable by everyone",
                            "S3_BUCKET_LEVEL_PUBLIC_ACCESS_PROHIBITED / S3_BUCKET_PUBLIC_READ_PROHIBITED",
                            "fail" if pub_fail else "pass",
                            "; ".join(pub_fail)[:600] if pub_fail else "public access blocked; no public grant on "
                                                                       "the bucket or any backup object",
                            pub_ev + pub_fail))

    # TLS only
    pol, err = _setting(store, "policy")
    if err and "NoSuchBucketPolicy" not in err:
        tls_ok, tls_detail = False, f"cannot read the bucket policy: {err}"
    else:
        tls_ok, tls_detail = denies_insecure_transport((pol or {}).get("Policy"), bucket)
    tls_required = config.reports.require_secure_transport
    controls.append(Control("security.secure_transport_required", "security",
                            "The bucket policy denies unencrypted transport", "S3_BUCKET_SSL_REQUESTS_ONLY",
                            "pass" if tls_ok else ("fail" if tls_required else "info"),
                            tls_detail + ("" if tls_ok or tls_required else
                                          " (not required: reports.require_secure_transport is false)"),
                            [tls_detail]))

    # copy in another region or account
    repl, err = _setting(store, "replication")
    required = config.reports.require_cross_region_copy
    if err and "ReplicationConfigurationNotFound" not in err:
        rep_ok, rep_detail = False, f"cannot read the replication configuration: {err}"
    else:
        rules = [r for r in ((repl or {}).get("ReplicationConfiguration") or {}).get("Rules", [])
                 if r.get("Status") == "Enabled"]
        rep_ok = bool(rules)
        rep_detail = (f"{len(rules)} enabled replication rule(s) to "
                      + ", ".join(sorted({(r.get("Destination") or {}).get("Bucket", "?") for r in rules}))
                      if rules else "no replication rule: the backups exist in one region and account only")
    controls.append(Control("security.cross_region_copy", "security", "A copy exists in another region or account",
                            "BACKUP_RESOURCES_PROTECTED_BY_CROSS_REGION / _CROSS_ACCOUNT",
                            "pass" if rep_ok else ("fail" if required else "info"),
                            rep_detail + ("" if rep_ok or required else
                                          " (not required: reports.require_cross_region_copy is false)"),
                            [rep_detail]))
    return controls


__all__ = ["security_controls", "denies_insecure_transport"]
