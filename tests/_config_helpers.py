"""Pieces of the test configurations several suites share: the production-like database source,
the file set, the state/metrics/alerting settings (all from the environment), and short scratch
directories. One copy, so a change to the configuration's shape is made once for every suite.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

# The file set and the settings read from the environment (a block of top-level YAML keys).
FILE_SET_AND_STATE_YAML = """file_sets:
  - name: trixtech-files
    local_dir: ${BACKUP_ROOT}/files
    s3_prefix: files/
    pattern: files_%Y%m%d_%H%M%S.tar.gz
    paths: [opt/trixtech/config, opt/trixtech/uploads]
verification: {state_dir: "${BACKUP_STATE_DIR}"}
metrics: {pushgateway_url: "${BACKUP_PUSHGATEWAY_URL:-}"}
alerting: {webhook_conn_id: "${BACKUP_WEBHOOK_CONN_ID:-}"}
"""


def short_dir(prefix: str = "bk-") -> Path:
    """A short directory for local scratch servers (PostgreSQL's socket path has at most 107
    bytes; pytest's temporary paths are too long). The caller removes it."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture
def scratch_base():
    """A short scratch directory for one test (import this fixture into the test module), removed after it."""
    d = short_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def trixtech_db_yaml(database: str) -> str:
    """The production-like custom-format source ``trixtech-db`` dumping ``database`` (an item of ``databases:``)."""
    return f"""  - name: trixtech-db
    database: {database}
    conn_id: trixtech_app_db
    dump_format: custom
    local_dir: ${{BACKUP_ROOT}}/database
    s3_prefix: database/
    pattern: trixtech_%Y%m%d_%H%M%S.dump
    restore: {{key_tables: [users, bookings, services], jobs: 2}}
"""


__all__ = ["FILE_SET_AND_STATE_YAML", "scratch_base", "short_dir", "trixtech_db_yaml"]
