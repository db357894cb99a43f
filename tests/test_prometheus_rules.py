"""Prometheus rules and config: promtool's own checks and rule unit tests, run inside `make test`.

promtool is installed by the set-up (`make venv`, Makefile target ``$(BIN)/promtool``); a
missing promtool fails these tests instead of skipping them, so CI can never pass without
having evaluated the alerts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from backupkit import metric_names

REPO = Path(__file__).resolve().parents[1]
PROM = REPO / "include" / "prometheus"
RULES = PROM / "backup_rules.yml"
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))

# A metric name in a PromQL expression (not a function name, not part of a recorded name).
METRIC_NAME = re.compile(r"(?<![\w:])(backup_[a-z0-9_]+)\b(?!\s*\()")


def promtool() -> str:
    """The set-up's promtool (next to this interpreter), else one on PATH; a test failure, never a skip."""
    candidates = [Path(sys.executable).parent / "promtool", shutil.which("promtool")]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return str(c)
    pytest.fail("promtool not found (neither in the venv nor on PATH): run `make venv`, which installs it "
                "from Debian's prometheus package")


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=REPO)


def load_rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_rules_pass_promtool_check():
    proc = run("check", "rules", RULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in proc.stdout


def test_rule_unit_tests_pass():
    assert len(RULE_TESTS) >= 2, RULE_TESTS
    proc = run("test", "rules", *RULE_TESTS)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.count("SUCCESS") == len(RULE_TESTS) and "FAILED" not in out, out


WRONG_EXPECTATIONS = {
    # Expected before `for: 5m` has elapsed.
    "fires_too_early": """
  - interval: 1m
    input_series:
      - series: 'backup_verification_status{job="backup_daily_verification", source="database"}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 4m
        alertname: BackupVerificationFailed
        exp_alerts:
          - exp_labels: {severity: critical, job: backup_daily_verification, source: database}
""",
    # The runbook's rendering of the storage ratio ("0.95%") instead of humanizePercentage.
    "ratio_printed_as_percent": """
  - interval: 1m
    input_series:
      - series: 'backup_storage_filesystem_size_bytes{location="local"}'
        values: '100x30'
      - series: 'backup_storage_filesystem_free_bytes{location="local"}'
        values: '5x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: BackupStorageAlmostFull
        exp_alerts:
          - exp_labels: {severity: warning, location: local}
            exp_annotations:
              summary: "Backup storage local is above 90% full"
              description: "Backup storage local is 0.95% full. Check the retention sweeps (backup_retention_*) before the next backup fails for lack of space."
""",
}


@pytest.mark.parametrize("case", sorted(WRONG_EXPECTATIONS))
def test_rule_unit_tests_can_fail(tmp_path, case):
    """A deliberately wrong expectation makes `promtool test rules` fail (the tests are not vacuous)."""
    test_file = tmp_path / f"{case}.yml"
    test_file.write_text(f"rule_files:\n  - {RULES}\nevaluation_interval: 1m\ntests:{WRONG_EXPECTATIONS[case]}")
    proc = run("test", "rules", test_file)
    assert proc.returncode != 0, proc.stdout
    assert "FAILED" in proc.stdout + proc.stderr


def test_prometheus_config_is_valid_and_loads_the_rules():
    proc = run("check", "config", PROM / "prometheus.yml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "SUCCESS: 1 rule files found" in out and "backup_rules.yml" in out


def _unit_tests() -> list[dict]:
    return [t for f in RULE_TESTS for t in yaml.safe_load(f.read_text())["tests"]]


def test_every_alert_is_tested_firing_and_not_firing():
    firing, silent = set(), set()
    for t in _unit_tests():
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    alerts = {r["alert"] for r in load_rules() if "alert" in r}
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - silent == set(), "alerts never tested not firing"
    assert firing | silent <= alerts, "tests name alerts that do not exist"


def test_every_recording_rule_is_tested():
    exprs = " ".join(case["expr"] for t in _unit_tests() for case in t.get("promql_expr_test", []))
    records = {r["record"] for r in load_rules() if "record" in r}
    assert {r for r in records if r not in exprs} == set()


def test_alerts_are_actionable():
    """Severity, a `for:` (no paging on one scrape), and text that names what failed."""
    for rule in (r for r in load_rules() if "alert" in r):
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert re.fullmatch(r"\d+[mhd]", rule.get("for", "")), name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        for label in ("source", "location"):
            if re.search(rf"by \({label}\)", rule["expr"]) or label in _labels_of_tested_alert(name):
                assert f"$labels.{label}" in annotations["summary"], (name, label)
        # The runbook's mistakes: rate() of a status gauge, a ratio printed with a bare "%".
        assert not re.search(r"\brate\(\s*backup_\w*status", rule["expr"]), name
        assert not re.search(r"\{\{\s*\$value\s*\}\}\s*%", annotations["description"]), name


def _labels_of_tested_alert(name: str) -> set[str]:
    return {k for t in _unit_tests() for case in t.get("alert_rule_test", []) if case["alertname"] == name
            for alert in case.get("exp_alerts") or [] for k in alert.get("exp_labels", {})}


def test_success_ratio_uses_avg_over_time_of_the_status_gauge():
    [rule] = [r for r in load_rules() if r.get("record", "").startswith("source:backup_verification_success_ratio")]
    assert "avg_over_time(backup_verification_status[7d])" in rule["expr"]


def test_rules_only_use_metric_names_the_project_exports():
    """A typo in a metric name makes an alert silently never fire: every name a rule reads must be
    listed (with its help text) in backupkit.metric_names, the one place metrics are named."""
    used = {m for r in load_rules() for m in METRIC_NAME.findall(r["expr"])}
    listed = set(metric_names.HELP)
    assert sorted(used - listed) == [], "metrics used by the rules that backupkit.metric_names does not list"


def test_too_old_alert_reads_each_sources_own_maximum_age():
    """Issue 10: not a constant 25 h but the exported thresholds.max_age_hours of each source."""
    [rule] = [r for r in load_rules() if r.get("alert") == "BackupTooOld"]
    assert metric_names.MAX_AGE in rule["expr"] and "3600" not in rule["expr"]
