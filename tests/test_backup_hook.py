"""BackupHook: the configuration, bucket and state directory the operators share."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow.sdk.exceptions import AirflowFailException
from backup_airflow.hooks import BackupHook

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "include" / "config" / "backups.yaml"


def test_an_unknown_source_fails_at_once_naming_the_configured_ones():
    hook = BackupHook(CONFIG)
    with pytest.raises(AirflowFailException) as err:
        hook.check_source("no-such-source")
    assert "no-such-source" in str(err.value)
    assert all(s.name in str(err.value) for s in hook.config.sources)
    hook.check_source(hook.config.sources[0].name)  # a configured one passes


def test_an_invalid_configuration_fails_without_retry_naming_the_file(tmp_path):
    bad = tmp_path / "backups.yaml"
    bad.write_text("sources: [\n")
    with pytest.raises(AirflowFailException, match="invalid backup configuration"):
        BackupHook(bad).config


def test_config_is_read_once_and_the_state_directory_comes_from_it(tmp_path):
    hook = BackupHook(CONFIG)
    assert hook.config is hook.config
    assert hook.state.root == Path(hook.config.state_dir)
