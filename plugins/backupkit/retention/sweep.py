"""Retention sweeps: delete exactly what a plan that passed the guard rails lists, and no more.

One sweep handles one source, its local directory and its S3 prefix together. A backup
is identified by its file name: the local file ``NAME`` with its companions
``NAME.sha256`` and ``NAME.manifest.json``, and the S3 object ``s3_prefix + NAME`` with the
same companions. Steps:

1. List both sides (S3 streamed, 1000 keys a page) and index them by name; the
   candidates are the union. A listing that fails refuses the plan.
2. Plan (:func:`~backupkit.retention.plan.plan_retention`) with the verification
   state from the store (only ``passed`` counts as verified) and the configured hold
   list.
   Holds known before planning (:mod:`.holds`): the hold list, leases (backups in use by
   a restore, an approval, a restore test) and the hold records under ``holds/<source>/``
   in the bucket (one listing; a listing that fails refuses the plan too).
3. For the backups that plan would delete, and only those (cost): with
   ``hold_discovery: objects``, ask S3 for each one's legal hold and hold tag -> **held**;
   and protect local copies: a backup whose S3 copy is missing, or whose S3 copy does
   not match the verified SHA-256, is **kept** whole ("S3 copy missing; local copy
   kept"). Plan again with those: holds only ever remove deletions. S3 Object Lock
   retention is not a hold (a lock cannot keep what the policy dropped; see :mod:`.holds`).
4. A refused plan deletes nothing: the report is finished (and, applied, a ``refused``
   audit record written and mirrored), then :class:`SweepRefused` is raised.
5. Apply, in chunks of at most ``batch_size`` S3 keys (1000: one DeleteObjects
   request): append and fsync an ``intent`` audit record per backup, delete the S3
   objects (batched, per-key errors retried), then the local files (companions first,
   the backup last, so a crash leaves it listed), then append ``deleted`` / ``failed``.
   A backup whose S3 deletion failed keeps its local copy.
6. Finish interrupted deletions: a backup whose last audit record is ``intent`` or
   ``failed`` is planned again by name like any other (its missing S3 copy does not
   protect the local one, since the sweep deleted it); if nothing but companions is
   left, those are deleted; if the plan keeps it now, it is recorded ``abandoned``.
7. Optionally purge noncurrent versions (``retention.purge_noncurrent_after_days``).
   On a versioned bucket step 5 only adds delete markers: the bytes stay, as noncurrent
   versions, until that purge or an S3 lifecycle rule removes them (:mod:`.purge`).
8. Lock what you keep (``retention.lock_kept``): extend the retain-until of kept backups.
9. Write the ``run`` record and mirror the run's audit lines to the bucket.

One sweep per source at a time: an applied sweep holds ``SourceLock(state_dir, source,
"sweep")`` from before its listing to after its audit mirror; a second one waits up to
``lock_timeout`` seconds, then raises :class:`SweepBusy` naming the holder. Dry runs take
no lock (they delete nothing and write nothing).

Verification comes from the state store, keyed ``SOURCE/NAME``. A backup that exists
only in S3 counts as verified only while its record is there (the daily integrity
check drops records of backups without a local file), else it is unverified and kept
until its period has a verified representative.

Crash safety: every deletion is preceded by a durable ``intent``; a re-run after a
crash at any point plans the same backups by name (a plan over the kept backups plus
some of the deleted ones deletes exactly those), finishes them, and deletes nothing
the first plan kept. Dry runs read (listing, holds, S3 copy checksums) but write
nothing, not even the audit log.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from backupkit import clock
from backupkit.catalog import Catalog, split_companion
from backupkit.config import Config, Source
from backupkit.retention.audit import AuditLog, make_record, safe_run_id
from backupkit.retention.holds import extend_locks, recorded_holds
from backupkit.retention.plan import Candidate, Decision, Plan, plan_retention
from backupkit.retention.policy import apply_policy, describe_policy
from backupkit.retention.purge import purge_noncurrent
from backupkit.retention.report import SweepBusy, SweepError, SweepFailed, SweepRefused, SweepReport, utc_text
from backupkit.storage.localfs import COMPANIONS, read_sidecar
from backupkit.storage.locks import Leases, LockBusy, SourceLock
from backupkit.storage.objectstore import (
    HOLD_TAG,
    MAX_BATCH,
    BatchResult,
    Bucket,
    ObjectRef,
    RequestCounter,
    Version,
    client_errors,
    error_code,
)

PROTECT_RULE = "s3-copy"


class _Entry:
    """What exists of one backup name; lean, since a source may have 100 000."""

    __slots__ = ("local", "local_extra", "local_companions", "s3_size", "s3_dir", "s3_extra", "s3_companions")

    def __init__(self) -> None:
        self.local: Any = None  # a Backup with its local copy
        self.local_extra = 0  # bytes of the local companions
        self.local_companions = 0  # bit i set: NAME + COMPANIONS[i] exists locally
        self.s3_size = -1  # size of the S3 object, -1 when there is none
        self.s3_dir = False  # the S3 copy is a directory dump (objects under NAME/)
        self.s3_extra = 0  # bytes of the S3 companions
        self.s3_companions = 0  # bit i set: NAME + COMPANIONS[i] exists in S3


def _decision(plan: Plan, name: str) -> Decision | None:
    try:
        return plan.decision(name)
    except KeyError:
        return None


def _remove(path: Path) -> int:
    """Delete a file or directory; the bytes it held (0 if already gone)."""
    try:
        if path.is_dir() and not path.is_symlink():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            shutil.rmtree(path)
            return size
        size = path.stat().st_size
        path.unlink()
        return size
    except FileNotFoundError:
        return 0


@dataclass
class _Work:
    """One backup to delete in this chunk."""

    name: str
    decision: Decision | None
    refs: list[ObjectRef]
    paths: list[Path]  # companions first, the backup last
    size: int  # of the backup file (local, else S3)
    total: int  # bytes of everything listed above, on both sides
    s3_bytes: int
    sha256: str | None
    finishing: bool = False  # only leftovers of an interrupted deletion


class _Sweep:
    def __init__(self, config: Config, source: Source, *, bucket: Bucket, state: Any, dry_run: bool, run_id: str,
                 now: datetime, audit: AuditLog, batch_size: int, hold_tag: str | None, workers: int,
                 attempts: int, backoff: float, sleep: Callable[[float], None], triggered_by: str | None = None):
        self.config, self.source, self.s3, self.state = config, source, bucket, state
        self.triggered_by = triggered_by
        self.dry_run, self.run_id, self.now, self.audit = dry_run, run_id, now, audit
        self.batch_size, self.hold_tag, self.workers = batch_size, hold_tag, workers
        self.attempts, self.backoff, self.sleep = attempts, backoff, sleep
        self.bucket, self.prefix = bucket.name, source.s3_prefix
        self.catalog = Catalog(source, bucket)
        self.index: dict[str, _Entry] = {}
        self.pending: dict[str, dict] = {}
        self.known_holds: dict[str, str] = {}
        self._lock_enabled: bool | None = None
        self.report = SweepReport(source=source.name, run_id=run_id, dry_run=dry_run, bucket=self.bucket,
                                  prefix=self.prefix, local_dir=str(source.local_dir),
                                  policy=describe_policy(source.retention), started=utc_text(),
                                  audit_log="" if dry_run else str(audit.path))

    # -- helpers -----------------------------------------------------------------------
    def key(self, name: str) -> str:
        return self.catalog.s3_key(name)

    def state_key(self, name: str) -> str:
        return f"{self.source.name}/{name}"

    def entry(self, name: str) -> _Entry:
        e = self.index.get(name)
        if e is None:
            e = self.index[name] = _Entry()
        return e

    def lock_enabled(self) -> bool:
        if self._lock_enabled is None:
            self._lock_enabled = self.s3.object_lock_enabled()
        return self._lock_enabled

    def record(self, action: str, **kw: Any) -> dict:
        return make_record(run_id=self.run_id, source=self.source.name, action=action, dry_run=self.dry_run,
                           bucket=self.bucket, triggered_by=self.triggered_by, **kw)

    def write(self, records: list[dict]) -> None:
        if not self.dry_run and records:
            self.audit.append(records)

    def sha256(self, name: str, entry: _Entry) -> str | None:
        """The backup's SHA-256 as last verified (the store), else its sidecar."""
        rec = self.state.get(self.state_key(name))
        if rec is not None and rec.ok and rec.sha256 and (entry.local is None or rec.size == entry.local.size):
            return rec.sha256
        if entry.local is not None and not entry.local.is_dir:
            try:
                return read_sidecar(entry.local.path)
            except (ValueError, OSError):
                return None
        return None

    # -- 1. listing --------------------------------------------------------------------
    def list_all(self) -> bool:
        """Index both sides by name through the catalog; False when a listing failed."""
        complete = True
        local: dict = {}
        remote: dict = {}
        try:
            local = self.catalog.scan_local()
        except OSError as exc:
            complete = False
            self.report.error(None, f"cannot list {self.source.local_dir}: {exc}", code="LocalListing")
        try:
            remote = self.catalog.scan_s3()
        except client_errors() as exc:
            complete = False
            code, msg = error_code(exc)
            self.report.error(None, f"cannot list s3://{self.bucket}/{self.prefix}: {msg}", code=code)
        for name, side in local.items():
            e = self.entry(name)
            e.local = next(iter(self.catalog.merged({name: side}, {})), None)
            e.local_companions = (side.sidecar << 0) | (side.manifest << 1)
            e.local_extra = side.companion_bytes
        for name, side in remote.items():
            e = self.entry(name)
            e.s3_size = side.size
            e.s3_dir = side.is_dir
            e.s3_companions = (side.sidecar << 0) | (side.manifest << 1)
            e.s3_extra = side.companion_bytes
        return complete

    def learn_holds(self) -> bool:
        """Leases and the hold records in the bucket; False when the records could not be listed."""
        self.known_holds = dict(Leases(self.config.state_dir).held(self.source.name))
        try:
            self.known_holds.update(recorded_holds(self.s3, self.source.name))
        except client_errors() as exc:
            code, msg = error_code(exc)
            self.report.error(None, f"cannot read the hold records under s3://{self.bucket}/holds/"
                                    f"{self.source.name}/: {msg}", code=code)
            return False
        return True

    def candidates(self) -> list[Candidate]:
        hold_list = set(self.config.hold_list)
        out = []
        for name, e in self.index.items():
            if e.local is None and e.s3_size < 0:
                continue  # companions only: not a backup (left by an interrupted deletion, see apply)
            verdict = self.state.verdict(self.state_key(name)) or "unverified"
            size = (e.local.size + e.local_extra if e.local is not None else 0) + max(e.s3_size, 0) + e.s3_extra
            held = "on the configured hold list" if (name in hold_list or self.key(name) in hold_list) else None
            held = held or self.known_holds.get(name)
            out.append(Candidate(name, self.source.pattern.timestamp(name), verdict, size, held))
        extra = self.source.kind_impl.retention_holds(self.source, out, self.now)  # e.g. a PITR window's base
        return [replace(c, held_reason=extra[c.name]) if c.name in extra and not c.held_reason else c for c in out]

    # -- 3. holds and local-copy protection --------------------------------------------
    def inspect(self, plan: Plan) -> tuple[dict[str, str], dict[str, str]]:
        """(holds, protections) by name for the backups ``plan`` would delete."""
        from backupkit.checks.s3copy import s3_copy_report

        planned = plan.planned_deletions()
        remote = [d.name for d in planned if self.index[d.name].s3_size >= 0]
        holds: dict[str, str] = {}
        per_object = self.source.retention.hold_discovery == "objects"
        check_lock = per_object and bool(remote) and self.lock_enabled()  # legal holds
        if remote and per_object and (check_lock or self.hold_tag):
            found = self.s3.inspect_holds([self.key(n) for n in remote], now=clock.now(), check_lock=check_lock,
                                          hold_tag=self.hold_tag, workers=self.workers, retention=False)
            for name in remote:
                reason, err = found.get(self.key(name), (None, None))
                if err is not None:
                    holds[name] = f"hold status unknown ({err})"
                    self.report.error(name, f"hold status could not be read; kept: {err}", key=self.key(name),
                                      code="HoldInspection")
                elif reason:
                    holds[name] = reason
        protections: dict[str, str] = {}
        for d in planned:
            e = self.index[d.name]
            if e.local is None or d.name in holds or d.name in self.pending:
                continue
            if e.s3_size < 0:
                protections[d.name] = "S3 copy missing; local copy kept until it is uploaded and verified"
                continue
            if e.local.is_dir:  # a directory (pg_dump -Fd, pg_basebackup): every file's copy, as the daily check
                from backupkit.jobs.daily import dir_files

                reports = [s3_copy_report(self.s3, f"{self.key(d.name)}/{rel}", local_size=f.stat().st_size,
                                          local_sha256=None, local_path=f, artifact=self.state_key(d.name),
                                          composite_cache=self.state.checksum_cache)
                           for rel, f in dir_files(e.local.path)]
            else:
                reports = [s3_copy_report(self.s3, self.key(d.name), local_size=e.local.size,
                                          local_sha256=self.sha256(d.name, e), local_path=e.local.path,
                                          artifact=self.state_key(d.name), composite_cache=self.state.checksum_cache)]
            for rep in reports or [None]:
                results = list(rep.results) if rep is not None else []
                bad = [r for r in results if not r.ok]
                unchecked = [r for r in results if r.check == "s3_checksum" and r.detail.startswith("not compared")]
                if bad or unchecked or len(results) < 3:
                    why = (bad or unchecked or results)[0].detail if results else "the directory holds no files"
                    protections[d.name] = f"S3 copy unverified ({why}); local copy kept"
                    break
        return holds, protections

    def final_plan(self, candidates: list[Candidate], plan: Plan, complete: bool,
                   holds: dict[str, str], protections: dict[str, str]) -> Plan:
        if not holds and not protections:
            return plan
        marked = [replace(c, held_reason=holds.get(c.name) or protections.get(c.name) or c.held_reason)
                  if (c.name in holds or c.name in protections) else c for c in candidates]
        again = plan_retention(marked, self.source.retention, now=self.now, listing_complete=complete)
        decisions = []
        for d in again.decisions:
            if d.name in protections:
                before = plan.decision(d.name)
                d = replace(d, action="keep", rules=(PROTECT_RULE, *before.rules),
                            reasons=(f"{protections[d.name]} (the policy alone would delete it: "
                                     f"{'; '.join(before.reasons)})",))
            decisions.append(d)
        return Plan(tuple(decisions), again.violations, again.policy, again.now, {d.name: d for d in decisions})

    # -- 5. deletion -------------------------------------------------------------------
    def work_for(self, name: str, decision: Decision | None) -> _Work:
        e = self.index.get(name) or _Entry()
        refs = []
        if e.s3_size >= 0:
            if e.s3_dir:  # a directory dump: every object under NAME/
                refs += [ObjectRef(o.key) for o in self.s3.objects(self.key(name) + "/")]
            else:
                refs.append(ObjectRef(self.key(name)))
        refs += [ObjectRef(self.key(name + suffix)) for i, suffix in enumerate(COMPANIONS)
                 if e.s3_companions & (1 << i)]
        paths = [self.source.local_dir / (name + suffix) for i, suffix in enumerate(COMPANIONS)
                 if e.local_companions & (1 << i)]
        if e.local is not None:
            paths.append(e.local.path)
        size = e.local.size if e.local is not None else max(e.s3_size, 0)
        total = (e.local.size + e.local_extra if e.local is not None else 0) + max(e.s3_size, 0) + e.s3_extra
        return _Work(name, decision, refs, paths, size, total, max(e.s3_size, 0) + e.s3_extra,
                     self.sha256(name, e), finishing=decision is None)

    def chunks(self, works: Iterable[_Work]) -> Iterator[list[_Work]]:
        chunk: list[_Work] = []
        keys = 0
        for w in works:
            if chunk and keys + len(w.refs) > self.batch_size:
                yield chunk
                chunk, keys = [], 0
            chunk.append(w)
            keys += len(w.refs)
        if chunk:
            yield chunk

    def delete_chunk(self, chunk: list[_Work]) -> bool:
        """Intent, S3, local, done for one chunk; False when S3 became unreachable."""
        r = self.report
        self.write([self.record("intent", artifact=w.name, keys=[x.key for x in w.refs],
                                paths=[str(p) for p in w.paths], size=w.size, bytes=w.total, sha256=w.sha256,
                                reasons=list(w.decision.reasons) if w.decision else ["finish an interrupted deletion"])
                    for w in chunk])
        refs = [x for w in chunk for x in w.refs]
        result = BatchResult()
        for start in range(0, len(refs), MAX_BATCH):  # a directory dump may exceed one request
            part = self.s3.delete_batch(refs[start:start + MAX_BATCH], attempts=self.attempts,
                                        backoff=self.backoff, sleep=self.sleep)
            result.failed.update(part.failed)
            result.requests += part.requests
            result.unreachable = part.unreachable
        done, forget = [], []
        for w in chunk:
            common = dict(artifact=w.name, keys=[x.key for x in w.refs], paths=[str(p) for p in w.paths],
                          size=w.size, bytes=w.total, sha256=w.sha256,
                          reasons=list(w.decision.reasons) if w.decision else [])
            failed = [(x, result.failed[x]) for x in w.refs if x in result.failed]
            if failed:
                detail = "; ".join(f"s3://{self.bucket}/{x.key}: {c}: {m}" for x, (c, m) in failed)
                detail = f"S3 deletion failed ({detail}); local copy kept"
                for x, (c, m) in failed:
                    r.error(w.name, m, key=x.key, code=c)
                r.failed.append({"name": w.name, "detail": detail})
                done.append(self.record("failed", detail=detail, **common))
                continue
            try:
                local_bytes = sum(_remove(p) for p in w.paths)
            except OSError as exc:
                detail = f"S3 objects deleted; local deletion failed: {exc}"
                r.error(w.name, detail, code="LocalDeletion")
                r.failed.append({"name": w.name, "detail": detail})
                done.append(self.record("failed", detail=detail, **common))
                continue
            r.bytes_freed += w.s3_bytes + local_bytes
            if w.finishing or w.name in self.pending:
                r.finished_pending.append(w.name)
            if not w.finishing:
                r.deleted.append(w.name)
            done.append(self.record("deleted", detail="finished an interrupted deletion" if w.finishing else "",
                                    **common))
            forget.append(self.state_key(w.name))
        self.write(done)
        if forget:
            self.state.forget(forget)
        return not result.unreachable

    def apply(self, plan: Plan) -> None:
        r = self.report
        # The plan's deletions, then interrupted deletions of backups no longer listed (only
        # companions, or nothing, are left of those). Work items are built chunk by chunk.
        todo: list[tuple[str, Decision | None]] = [(d.name, d) for d in plan.deletions()]
        todo += [(n, None) for n in sorted(self.pending) if _decision(plan, n) is None]
        reachable = True
        attempted = 0
        for chunk in self.chunks(self.work_for(n, d) for n, d in todo):
            reachable = self.delete_chunk(chunk)
            attempted += len(chunk)
            if not reachable:
                break
        if not reachable and attempted < len(todo):
            r.not_attempted = [n for n, _ in todo[attempted:]]
            r.error(None, f"S3 unreachable: {len(r.not_attempted)} deletions not attempted", code="NotAttempted")
        # Interrupted deletions that the plan now keeps: say so, do not delete.
        abandon = []
        for name, rec in sorted(self.pending.items()):
            d = _decision(plan, name)
            if d is not None and d.action != "delete":
                abandon.append(self.record("abandoned", artifact=name, keys=rec.get("keys", []),
                                           paths=rec.get("paths", []), size=rec.get("size", 0),
                                           sha256=rec.get("sha256"), reasons=list(d.reasons),
                                           detail=f"no longer planned for deletion ({d.action}); whatever the "
                                                  f"interrupted run deleted stays deleted"))
                r.abandoned.append(name)
        self.write(abandon)

    # -- 7. noncurrent versions --------------------------------------------------------
    def purge(self, plan: Plan) -> None:
        days = self.source.retention.purge_noncurrent_after_days
        if days is None:
            return
        retained = {d.name for d in plan.decisions if d.action != "delete"}
        planned = {d.name for d in plan.decisions if d.action == "delete"}
        kept_passed = [d for d in plan.decisions if d.action != "delete" and d.verified == "passed"]
        outcome = apply_policy(kept_passed, self.source.retention, now=self.now)

        def eligible(key: str) -> bool:
            rel = key[len(self.prefix):]
            comp = split_companion(self.source, rel)
            name = comp[0] if comp else rel
            ts = self.source.pattern.timestamp(name) if "/" not in name else None
            if ts is None or name in retained:
                return False
            return name in planned or not outcome.would_keep(ts, name)

        def name_of(key: str) -> str:
            rel = key[len(self.prefix):]
            comp = split_companion(self.source, rel)
            return comp[0] if comp else rel.split("/", 1)[0]

        def on_intent(batch: list[Version]) -> None:
            self.write([self.record("purge_intent", artifact=name_of(v.key), keys=[v.key], size=v.size,
                                    version_id=v.version_id, delete_marker=v.is_marker) for v in batch])

        def on_done(batch: list[Version], failed: dict) -> None:
            recs = []
            for v in batch:
                err = failed.get(ObjectRef(v.key, v.version_id))
                recs.append(self.record("purge_failed" if err else "purged", artifact=name_of(v.key), keys=[v.key],
                                        size=v.size, version_id=v.version_id, delete_marker=v.is_marker,
                                        detail=f"{err[0]}: {err[1]}" if err else ""))
            self.write(recs)

        try:
            res = purge_noncurrent(
                self.s3, self.prefix, older_than=timedelta(days=days), now=clock.now(),
                eligible=eligible, check_lock=self.lock_enabled(), hold_tag=self.hold_tag,
                batch_size=self.batch_size, attempts=self.attempts, backoff=self.backoff, sleep=self.sleep,
                dry_run=self.dry_run, on_intent=on_intent, on_done=on_done)
        except client_errors() as exc:
            code, msg = error_code(exc)
            self.report.error(None, f"noncurrent-version purge: cannot list versions: {msg}", code=code)
            return
        for e in res.errors:
            self.report.error(name_of(e["key"]), f"noncurrent version {e['version_id']}: {e['message']}",
                              key=e["key"], code=e["code"])
        self.report.purge = {"after_days": days, **res.to_dict()}
        if not self.dry_run:
            self.report.bytes_freed += res.bytes_freed

    # -- 8. lock what you keep ----------------------------------------------------------
    def lock_kept(self, plan: Plan) -> None:
        """Extend the S3 retain-until of every kept backup to its ``keep_until`` (never shorten)."""
        mode = self.source.retention.lock_kept
        if mode is None:
            return
        if not self.lock_enabled():
            self.report.error(None, f"retention.lock_kept is {mode} but s3://{self.bucket} has no object lock: "
                                    f"nothing can be locked", code="NoObjectLock")
            return
        targets = []
        for d in plan.decisions:
            e = self.index.get(d.name)
            if d.action != "keep" or d.keep_until is None or e is None or e.s3_size < 0:
                continue
            keys = ([o.key for o in self.s3.objects(self.key(d.name) + "/")] if e.s3_dir else [self.key(d.name)])
            keys += [self.key(d.name + sfx) for i, sfx in enumerate(COMPANIONS) if e.s3_companions & (1 << i)]
            targets += [(d.name, k, d.keep_until) for k in keys]
        for change in extend_locks(self.s3, targets, mode=mode, now=clock.now(), dry_run=self.dry_run):
            if change.error:
                self.report.error(change.name, f"retain-until not extended to {change.until.isoformat()}: "
                                               f"{change.error}", key=change.key, code="ObjectLock")
            else:
                self.report.locks.append(change.to_dict())
        if self.report.locks:
            self.write([self.record("locked", detail=f"{len(self.report.locks)} retain-until dates extended",
                                    locks=self.report.locks)])

    # -- 9. audit mirror ---------------------------------------------------------------
    def finish_audit(self) -> None:
        r = self.report
        r.finished = utc_text()
        if self.dry_run:
            return
        self.write([self.record("run", detail="refused" if r.refused else ("ok" if r.ok else "errors"),
                                counts=r.counts(), bytes_freed=r.bytes_freed, violations=list(r.violations),
                                errors=len(r.errors))])
        self.mirror()

    def mirror(self) -> None:
        # This run's file, then this source's files of earlier runs whose upload failed (other
        # sources' files may belong to sweeps running right now: their own run uploads them).
        todo = [(self.run_id, self.source.name)]
        todo += [t for t in self.audit.unmirrored()
                 if t[1] == self.source.name and t[0] != safe_run_id(self.run_id)]
        for run_id, source in todo:
            try:
                key = self.audit.mirror(self.s3, run_id, source)
            except Exception as exc:  # boto3's S3UploadFailedError is neither ClientError nor BotoCoreError
                code, msg = error_code(exc)
                self.report.error(None, f"audit log not mirrored to the bucket (kept locally for the next run): "
                                        f"{msg}", key=self.audit.mirror_key(run_id, source), code=code)
                continue
            if run_id == self.run_id and source == self.source.name:
                self.report.audit_mirror = f"s3://{self.bucket}/{key}" if key else ""

    # -- the whole sweep ---------------------------------------------------------------
    def phase(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.report.seconds[name] = self.report.seconds.get(name, 0.0) + now - since
        return now

    def run(self) -> SweepReport:
        r = self.report
        t = time.perf_counter()
        # WAL files have their own part (retention/wal.py), which re-plans them every run.
        self.pending = {n: rec for n, rec in self.audit.pending(self.source.name).items() if not n.startswith("wal/")}
        r.warnings += self.audit.torn_warnings()
        complete = self.list_all()
        complete = self.learn_holds() and complete
        r.listing_complete = complete
        t = self.phase("list", t)
        candidates = self.candidates()
        plan = plan_retention(candidates, self.source.retention, now=self.now, listing_complete=complete)
        if complete:
            holds, protections = self.inspect(plan)
            plan = self.final_plan(candidates, plan, complete, holds, protections)
        else:
            protections = {}
        del candidates
        t = self.phase("plan", t)
        r.plan = plan
        summary = plan.summary
        r.total, r.by_rule, r.bytes_to_free = summary.total, summary.by_rule, summary.bytes_to_free
        for d in plan.decisions:
            if d.action == "keep":
                r.kept.append(d.name)
                if d.name in protections:
                    r.protected.append({"name": d.name, "reason": protections[d.name]})
            elif d.action == "held":
                r.held.append({"name": d.name, "reason": d.reasons[0].removeprefix("held: ")})
        r.future = [d.name for d in plan.future()]
        if plan.refused or self.dry_run:
            r.would_delete = [d.name for d in plan.planned_deletions()]
        if plan.refused:
            r.refused, r.violations = True, list(plan.violations)
            if not self.dry_run:
                self.write([self.record("refused", reasons=list(plan.violations),
                                        detail="guard rails refused the plan; nothing deleted")])
            self.finish_audit()
            self.phase("audit", t)
            raise SweepRefused(r)
        if not self.dry_run:
            self.apply(plan)
            t = self.phase("delete", t)
        if not r.not_attempted:
            self.source.kind_impl.after_sweep(self, plan)  # a WAL archive's segments
            t = self.phase("wal", t)
        if not r.not_attempted and self.source.retention.purge_noncurrent_after_days is not None:
            self.purge(plan)
            t = self.phase("purge", t)
        if not r.not_attempted:
            self.lock_kept(plan)
            t = self.phase("lock", t)
        self.finish_audit()
        self.phase("audit", t)
        if r.errors:
            raise SweepFailed(f"retention sweep of {self.source.name}: {len(r.errors)} errors "
                              f"({len(r.failed)} backups not deleted, {len(r.not_attempted)} not attempted)", r)
        return r


def sweep_source(config: Config, source_name: str, *, bucket: Bucket, state: Any, dry_run: bool, run_id: str,
                 now: datetime | None = None, audit: AuditLog, batch_size: int = MAX_BATCH,
                 hold_tag: str | None = HOLD_TAG, workers: int = 8, attempts: int = 4,
                 backoff: float = 0.5, sleep: Callable[[float], None] = time.sleep,
                 lock_timeout: float = 60.0, triggered_by: str | None = None) -> SweepReport:
    """Apply (or, ``dry_run``, show) the source's retention policy to its local and S3 backups.

    ``state`` is the :class:`~backupkit.state.VerificationState`; ``now`` the time the
    policy is evaluated at (default: now; holds and noncurrent ages always use the real
    clock). ``batch_size``: S3 keys per DeleteObjects request (<= 1000). ``hold_tag``:
    the object tag that marks a hold (None: tags are not inspected, one request less per
    deleted object). ``attempts`` / ``backoff``: retries of failed keys. ``lock_timeout``:
    seconds an applied sweep waits for another sweep of the source to finish before
    raising :class:`SweepBusy`. ``triggered_by``: who started the run (the Airflow user,
    ``backupctl``'s OS user), written into every audit record.

    Returns the report; raises :class:`SweepRefused` (nothing deleted) when a guard rail
    refuses the plan and :class:`SweepFailed` when anything could not be done, both
    carrying the finished report as ``.report``.
    """
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}, got {batch_size}")
    now = now or clock.now()
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    source = config.source(source_name)
    sweep = _Sweep(config, source, bucket=bucket, state=state, dry_run=dry_run, run_id=run_id, now=now,
                   audit=audit, batch_size=batch_size, hold_tag=hold_tag, workers=workers, attempts=attempts,
                   backoff=backoff, sleep=sleep, triggered_by=triggered_by)
    counter = RequestCounter()
    lock = None
    if not dry_run:
        lock = SourceLock(config.state_dir, source.name, "sweep", owner=run_id, timeout=lock_timeout)
        try:
            lock.acquire()
        except LockBusy as exc:
            sweep.report.error(None, str(exc), code="LockBusy")
            sweep.report.finished = utc_text()
            raise SweepBusy(str(exc), sweep.report) from None
    try:
        with bucket.counting(counter):
            try:
                return sweep.run()
            except SweepError:
                raise
            except Exception as exc:  # a bug or an unexpected error: still leave the audit trail in the bucket
                sweep.report.error(None, f"sweep aborted: {type(exc).__name__}: {exc}", code="Aborted")
                if not dry_run:
                    try:
                        sweep.mirror()
                    except Exception:
                        pass
                raise
    finally:
        sweep.report.requests = counter.as_dict()
        if lock is not None:
            lock.release()


__all__ = ["sweep_source", "SweepReport", "SweepError", "SweepRefused", "SweepFailed", "SweepBusy", "COMPANIONS"]
