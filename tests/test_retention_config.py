"""Configuration edges retention depends on (issue 9 item 15): what main's config/ and naming.py
do, checked here: `retention: []`, non-UTF-8 files, `${VAR:-default}`, ASCII digits, name zones,
and the new retention keys."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from backupkit.config import ConfigError, load_config
from backupkit.naming import NamePattern
from zoneinfo import ZoneInfo


def write(tmp_path, retention="{keep_daily: 7}", extra="", name_zone=""):
    text = f"""
bucket: {{name: trixtech-backups}}
databases:
  - name: db
    database: trixtech
    dump_format: custom
    local_dir: "${{BK_TEST_DIR:-/tmp/bk-default}}"
    s3_prefix: database/
    pattern: trixtech_%Y%m%d_%H%M%S.dump
    {name_zone}
    retention: {retention}
{extra}
"""
    path = tmp_path / "backups.yaml"
    path.write_text(text)
    return path


def test_retention_as_a_list_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, retention="[]"))
    assert "databases[0].retention" in str(info.value) and "expected a mapping" in str(info.value)


def test_non_utf8_configuration_is_an_error_not_a_traceback(tmp_path):
    path = write(tmp_path)
    path.write_bytes(path.read_bytes().replace(b"trixtech-backups", b"trixtech-b\xe4ckups"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "is not UTF-8 text" in str(info.value)


@pytest.mark.parametrize("value, expected", [(None, "/tmp/bk-default"), ("", "/tmp/bk-default"), ("/srv/b", "/srv/b")])
def test_colon_dash_default_follows_the_shell(tmp_path, monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("BK_TEST_DIR", raising=False)
    else:
        monkeypatch.setenv("BK_TEST_DIR", value)
    assert str(load_config(write(tmp_path)).source("db").local_dir) == expected


def test_fullwidth_digits_are_no_date():
    p = NamePattern("trixtech_%Y%m%d_%H%M%S.dump")
    assert p.timestamp("trixtech_20240501_020000.dump") == datetime(2024, 5, 1, 2, tzinfo=timezone.utc)
    assert p.timestamp("trixtech_２０２４0501_020000.dump") is None


def test_name_timezone_reads_the_wall_clock_of_the_source(tmp_path):
    config = load_config(write(tmp_path, name_zone="name_timezone: Europe/Berlin"))
    ts = config.source("db").pattern.timestamp("trixtech_20240701_020000.dump")
    assert ts == datetime(2024, 7, 1, 0, tzinfo=timezone.utc)  # 02:00 CEST
    assert ts.astimezone(ZoneInfo("Europe/Berlin")).hour == 2


def test_new_retention_keys(tmp_path):
    policy = load_config(write(tmp_path, retention="{keep_daily: 7, lock_kept: compliance, hold_discovery: objects, "
                                                   "future_tolerance_hours: 6}")).source("db").retention
    assert (policy.lock_kept, policy.hold_discovery, policy.future_tolerance_hours) == ("COMPLIANCE", "objects", 6.0)
    defaults = load_config(write(tmp_path)).source("db").retention
    assert (defaults.lock_kept, defaults.hold_discovery, defaults.future_tolerance_hours) == (None, "inventory", 1.0)
    for bad, key in (("{lock_kept: forever}", "lock_kept"), ("{hold_discovery: guess}", "hold_discovery"),
                     ("{future_tolerance_hours: -1}", "future_tolerance_hours")):
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, retention=bad))
        assert f"retention.{key}" in str(info.value)
