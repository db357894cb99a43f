"""``restore.approvers``, ``restore.four_eyes``, ``restore.approval_timeout`` and the alert channels:
strict parsing, errors naming file, key and problem (rules: docs/restore.md, "Approval")."""

from __future__ import annotations

import pytest

from backupkit.config import Approvers, ConfigError, load_config

BASE = """
bucket: {name: trixtech-backups}
databases:
  - name: db
    database: trixtech
    dump_format: custom
    local_dir: /tmp/bk-approvals
    s3_prefix: database/
    pattern: trixtech_%Y%m%d_%H%M%S.dump
"""


def load(tmp_path, restore="", alerting=""):
    path = tmp_path / "backups.yaml"
    path.write_text(BASE + (f"restore:\n{restore}" if restore else "") + (f"alerting:\n{alerting}" if alerting else ""))
    return load_config(path)


def test_defaults_four_eyes_four_hours_anyone():
    r = load_config().restore  # the shipped file, outside the sandbox
    assert r.four_eyes is True and r.approval_timeout_seconds == 4 * 3600 and r.approvers == Approvers()


def test_users_as_a_list_or_from_the_environment(tmp_path, monkeypatch):
    assert load(tmp_path, "  approvers: {users: [bob, carol@example.com], role: Op}\n").restore.approvers == \
        Approvers(users=("bob", "carol@example.com"), role="Op")
    monkeypatch.setenv("BK_APPROVERS", "bob, dba-oncall")
    r = load(tmp_path, "  approvers: {users: '${BK_APPROVERS}'}\n  four_eyes: false\n  approval_timeout: 90min\n").restore
    assert r.approvers.users == ("bob", "dba-oncall") and r.four_eyes is False and r.approval_timeout_seconds == 5400
    monkeypatch.setenv("BK_APPROVERS", "")
    assert load(tmp_path, "  approvers: {users: '${BK_APPROVERS}'}\n").restore.approvers == Approvers()


@pytest.mark.parametrize("restore, key, problem", [
    ("  approvers: {users: [bob, bob]}\n", "restore.approvers.users[1]", "listed twice"),
    ("  approvers: {users: ['bob smith']}\n", "restore.approvers.users[0]", "not an Airflow user name"),
    ("  approvers: {users: [42]}\n", "restore.approvers.users[0]", "not an Airflow user name"),
    ("  approvers: {role: 'ops; drop'}\n", "restore.approvers.role", "not an Airflow role name"),
    ("  approvers: {user: [bob]}\n", "restore.approvers.user", "unknown key"),
    ("  approvers: [bob]\n", "restore.approvers", "expected a mapping"),
    ("  four_eyes: maybe\n", "restore.four_eyes", "expected true or false"),
    ("  approval_timeout: 30m\n", "restore.approval_timeout", "write min for minutes"),
    ("  approval_timeout: 0s\n", "restore.approval_timeout", "more than 0 and at most 7d"),
    ("  approval_timeout: 8d\n", "restore.approval_timeout", "more than 0 and at most 7d"),
    ("  approval_timeout: true\n", "restore.approval_timeout", "more than 0"),
])
def test_bad_values_name_the_key(tmp_path, restore, key, problem):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, restore)
    assert err.value.key == key and problem in err.value.problem and "backups.yaml" in str(err.value)


def test_alert_channels_are_read(tmp_path):
    a = load(tmp_path, alerting="  slack_conn_id: backup_slack\n  pagerduty_conn_id: backup_pd\n").alerting
    assert (a.slack_conn_id, a.pagerduty_conn_id, a.webhook_conn_id) == ("backup_slack", "backup_pd", None)
    with pytest.raises(ConfigError, match="alerting.opsgenie_conn_id: unknown key"):
        load(tmp_path, alerting="  opsgenie_conn_id: x\n")
