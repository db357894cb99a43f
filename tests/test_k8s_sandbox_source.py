"""The Kubernetes resource source of the repository's configuration (trixtech-k8s): the sandbox's
nightly exports pass the kind's checks, retention keeps 12 weeks, and the file restore (what
backup_file_restore calls) writes chosen manifests into a directory -- nothing is applied."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml

from _clock import SESSION_NOW
from backupkit.config import load_config
from backupkit.jobs.audit import K8S_MANIFESTS, coverage_file_paths
from backupkit.restore.file_restore import restore_files
from backupkit.restore.selection import restorable
from backupkit.retention.plan import Candidate, plan_retention
from backupkit.storage.localfs import sidecar_path
from backupkit.verify import verify_artifact
from sandbox.history import k8s_export, sha256_file, write_archive
from sandbox.stack import CONFIG_FILE


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKUP_ROOT", str(tmp_path / "backups"))
    monkeypatch.setenv("BACKUP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("BACKUP_RESTORE_ROOT", str(tmp_path / "restore"))
    (tmp_path / "restore").mkdir()
    return load_config(CONFIG_FILE)


def nightly(config, nights: int):
    src = config.source("trixtech-k8s")
    src.local_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(nights):
        when = (SESSION_NOW - timedelta(days=nights - i)).replace(hour=2, minute=0, second=0, microsecond=0)
        path = write_archive(src.local_dir / src.pattern.name_for(when), k8s_export(src, i // 30, when), when)
        sidecar_path(path).write_text(f"{sha256_file(path)}  {path.name}\n")
        out.append((path, when))
    return src, out


def test_the_source_is_configured_weekly_and_offered_by_the_file_restore(config):
    src = config.source("trixtech-k8s")
    assert src.kind == "kubernetes" and src.retention.keep_weekly == 12 and not src.retention.keep_daily
    assert "trixtech-k8s" in restorable(config, "files")  # the backup_file_restore form lists it


def test_the_nightly_exports_verify_and_weekly_retention_keeps_twelve(config):
    src, made = nightly(config, 100)
    report = verify_artifact(made[-1][0])  # the archive: safe, whole, matching its sidecar
    assert report.ok, report.problems()
    checks = src.kind_impl.content_checks(src, made[-1][0], "trixtech-k8s/newest")  # what the daily run adds
    assert [c.ok for c in checks] == [True] and "valid for Kubernetes 1.34 and 1.36" in checks[0].detail
    plan = plan_retention([Candidate(p.name, when, "passed", p.stat().st_size, None) for p, when in made],
                          src.retention, now=SESSION_NOW)
    assert plan.summary.by_rule.get("weekly") == 12 and plan.summary.keep <= 13


def test_selected_manifests_are_restored_into_a_directory_and_never_applied(config, tmp_path):
    src, made = nightly(config, 3)
    target = tmp_path / "restore" / "k8s"
    target.mkdir()
    out = restore_files(config, "trixtech-k8s", made[-1][0].name, target=str(target),
                        paths=["trixtech/deployments.yaml"], prefer="local", now=SESSION_NOW,
                        work_dir=tmp_path / "work")
    assert out["written"] == 1 and sorted(p.name for p in target.rglob("*") if p.is_file()) == ["deployments.yaml"]
    doc = yaml.safe_load((target / "trixtech" / "deployments.yaml").read_text())
    assert {i["metadata"]["name"] for i in doc["items"]} == {"trixtech-backend", "trixtech-frontend"}


def test_the_audit_coverage_control_reads_the_newest_export(config):
    nightly(config, 2)
    c = coverage_file_paths(config, now=SESSION_NOW)
    (row,) = [r for r in c.rows if r[0] == "trixtech-k8s"]
    assert row[2] == K8S_MANIFESTS and row[3] == 3 and row[4] == "ok"
    newest = sorted(config.source("trixtech-k8s").local_dir.glob("*.tar.gz"))[-1]
    write_archive(newest, [("README", b"no manifests here\n", SESSION_NOW)], SESSION_NOW)
    c = coverage_file_paths(config, now=SESSION_NOW)
    assert c.status == "fail" and f"trixtech-k8s: the latest archive {newest.name} holds no manifest" in c.summary
