"""The configuration: what is backed up, where, and what may be done to it.

``schema`` holds the dataclasses (every default once), ``reader`` the typed YAML access and
its errors, ``load`` the validation; each source kind reads its own keys (:mod:`backupkit.kinds`).
"""

from backupkit.config.load import load_config
from backupkit.config.reader import ConfigError
from backupkit.config.schema import (
    APP_PLATFORMS,
    APP_SETTING_KINDS,
    DEFAULT_CONFIG,
    DEFAULT_S3_PRICES,
    DRILL_HOUR_UTC,
    DUMP_FORMATS,
    REPO_ROOT,
    REREAD_FRACTION,
    RESTORE_BACKENDS,
    SSE_ALGORITHMS,
    Alerting,
    AppSwitch,
    Approvers,
    Config,
    Drill,
    LogSource,
    Reports,
    RestoreExpectations,
    RestoreSettings,
    RetentionPolicy,
    SmokeCheck,
    Source,
    Thresholds,
)

__all__ = ["load_config", "ConfigError", "APP_PLATFORMS", "APP_SETTING_KINDS", "DEFAULT_CONFIG", "DEFAULT_S3_PRICES", "DRILL_HOUR_UTC",
           "DUMP_FORMATS", "REPO_ROOT", "REREAD_FRACTION", "RESTORE_BACKENDS", "SSE_ALGORITHMS", "Alerting",
           "AppSwitch", "Approvers", "Config", "Drill", "LogSource", "Reports", "RestoreExpectations", "RestoreSettings",
           "RetentionPolicy", "SmokeCheck", "Source", "Thresholds"]
