"""On-demand restore of files from a file-set archive, from the Airflow UI.

Parse time reads only the configuration file (the form's choices).
"""

from __future__ import annotations

import logging

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException

from backup_airflow.common import RequestRejected, VerificationFailed, dag_tags
from backup_airflow.hooks import backup_config, bucket
from backup_airflow.restore_operators import lease_backups, release_leases, restore_lock
from backup_airflow.restore_params import (VALIDATE, check_reason, on_demand_dag_args, read_request,
                                            reason_param, which_params)
from backupkit import clock
from backupkit.config import ConfigError
from backupkit.restore.file_restore import check_file_request, restore_files
from backupkit.restore.files import ExtractRefused
from backupkit.restore.journal import RestoreJournal
from backupkit.restore.scratch import run_scratch_dir
from backupkit.restore.selection import SelectionError, resolve_request, restorable

log = logging.getLogger(__name__)

CONFIG = backup_config()  # parse time: the YAML only
_FILE_SETS = restorable(CONFIG, "files") or ["(no file set configured)"]

DOC_MD = """
# Restore files from a file-set archive (on demand)

The runbook's `tar -xzf latest.tar.gz -C /` trusts the archive and writes anywhere. This DAG
restores the chosen archive (newest, newest before a time, or an exact S3 key), all of it or
the listed paths, into a **target directory that must lie under `restore.allowed_file_roots`**:

* the whole archive is read and judged before anything is written: an absolute path, a `..`,
  a link leading outside the target, a damaged archive or one over the size limits refuses
  everything (nothing is written);
* each file is written beside its destination under a temporary name, checked against the
  archive's `SHA256SUMS` when it has one, and only then renamed into place (a file that does not
  match is never installed and fails the run);
* a **Kubernetes resource backup** (`kubernetes_resources:`) is restored the same way: the chosen
  manifests (e.g. `trixtech/deployments.yaml`) land in the target directory for a person to review
  and `kubectl apply`; nothing is ever applied to a cluster by this DAG;
* files already present: `skip` leaves them alone; `overwrite` replaces them, first moving each
  replaced file to `<target>/.restore-backup-<UTC time>/` (same relative path), so the restore
  can be undone.

| Task | What it does |
|---|---|
| `validate_request` | unknown file set, no archive before the time, malformed key or one outside the prefix, target outside the allowed roots, bad paths: fails here, nothing changed |
| `restore_files` | downloads (or reads) the archive, extracts safely, verifies checksums; result and audit record |

Every request (refused ones too) is recorded in the audit log (`<state_dir>/audit/restore.jsonl`): who, why, which archive, what was written, skipped and replaced.

## When it fails

* `validate_request`: the message says which input is wrong; nothing was written.
* `restore_files` *refused, nothing extracted*: the archive holds an unsafe member (named) or the
  target holds a link leading outside it; inspect the archive (`tar -tvzf`) before trusting it.
* `restore_files` *checksums*: the listed files did not match `SHA256SUMS` and were not installed;
  try an older archive.
"""

PARAMS = {
    "file_set": Param(_FILE_SETS[0], type="string", enum=_FILE_SETS, title="File set",
                      description="The configured file set (or Kubernetes resource backup) whose archive is "
                                  "restored.", section="Archive"),
    **which_params("archive", section="Archive",
                   before_help="With 'latest_before': the newest archive taken before this time (UTC when no "
                               "zone is given).",
                   key_help="With 'key': the archive's key, e.g. files/files_20250301_020000.tar.gz."),
    "paths": Param([], type="array", items={"type": "string", "minLength": 1}, title="Paths to restore",
                   description="Paths inside the archive (a directory restores everything below it); empty = all.",
                   section="What"),
    "target_directory": Param(type="string", minLength=1, title="Target directory",
                              description="Absolute directory to restore into; must lie under one of "
                                          f"{list(CONFIG.restore.allowed_file_roots) or '(none configured)'}.",
                              section="What"),
    "existing": Param("skip", type="string", enum=["skip", "overwrite"], title="Existing files",
                      values_display={"skip": "Skip (keep the present file)",
                                      "overwrite": "Overwrite (keep a copy of each replaced file)"},
                      description="What to do with files already present in the target.", section="What"),
    "reason": reason_param("Why these files are restored; recorded in the audit log."),
}


@dag(
    dag_id="backup_file_restore",
    **on_demand_dag_args(CONFIG),
    params=PARAMS,
    tags=dag_tags("restore", "files", "on-demand"),
    doc_md=DOC_MD,
)
def backup_file_restore():
    @task(task_id=VALIDATE, retries=0)
    def validate_request(**context) -> dict:
        config = backup_config()
        request = read_request(context, ("file_set", "which", "before", "key", "target_directory", "existing"),
                               "paths")
        try:
            check_reason(request)
            target = check_file_request(config, target=request["target_directory"], paths=request["paths"],
                                        existing=request["existing"])
            ref = resolve_request(config, request["file_set"], which=request["which"], before=request["before"],
                                  key=request["key"], bucket=bucket(config), restores_into="files")
        except (SelectionError, ExtractRefused, ConfigError, ValueError) as exc:
            RestoreJournal(config.state_dir).append(
                run_id=context["run_id"], source=str(request["file_set"]), action="files_restore_refused",
                triggered_by=request["triggered_by"], reason=request["reason"], detail=str(exc))
            raise RequestRejected(f"invalid file restore request (nothing was changed): {exc}") from exc
        request.update(backup=ref.name, target=str(target), locations=ref.where(config.bucket))
        lease_backups(config, context["run_id"], [(ref.source, ref.name)], purpose="file restore", hours=7)
        RestoreJournal(config.state_dir).append(
            run_id=context["run_id"], source=ref.source, action="files_restore_requested",
            triggered_by=request["triggered_by"], reason=request["reason"], backup=ref.name, target=str(target),
            paths=request["paths"] or "all", existing=request["existing"])
        return request

    @task(retries=0)
    def restore(request: dict, **context) -> dict:
        """Safe extraction into the target; checksum mismatches fail the task (those files are not installed)."""
        config = backup_config()
        journal = RestoreJournal(config.state_dir)
        base = dict(run_id=context["run_id"], source=request["file_set"], triggered_by=request["triggered_by"],
                    reason=request["reason"], backup=request["backup"], target=request["target"])
        try:
            with restore_lock(config, request["file_set"], context["run_id"]):
                result = restore_files(config, request["file_set"], request["backup"], target=request["target"],
                                       paths=request["paths"] or None, existing=request["existing"],
                                       bucket=bucket(config), now=clock.now(),
                                       work_dir=run_scratch_dir(config, context["run_id"]))
        except (ExtractRefused, SelectionError, ValueError) as exc:
            # The message says whether anything was written ("nothing extracted" / "stopped after N").
            journal.append(action="files_restore_failed", detail=str(exc)[:2000], **base)
            raise AirflowFailException(str(exc)) from exc
        finally:
            release_leases(config, context["run_id"])
        changes = [f"wrote {result['written']} files into {request['target']}"]
        if result["replaced"]:
            changes.append(f"replaced {len(result['replaced'])} files, originals kept in {result['backup_dir']}")
        if result["skipped"]:
            changes.append(f"skipped {len(result['skipped'])} existing files")
        problems = [c for c in result["checks"] if not c["ok"]]
        journal.append(action="files_restored" if not problems else "files_restore_failed", changes=changes,
                       detail="; ".join(f"{c['check']}: {c['detail']}" for c in problems)[:2000], **base)
        for line in changes:
            log.info("%s", line)
        if problems:
            raise VerificationFailed(f"restore of {request['backup']}: {problems[0]['check']}: "
                                     f"{problems[0]['detail'][:500]}", problems)
        return result

    restore.override(task_id="restore_files")(validate_request())


backup_file_restore()
