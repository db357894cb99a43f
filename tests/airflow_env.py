"""A throwaway Airflow installation for the tests: its own home, this repo's dags/ and plugins/.

Import this module before anything imports ``airflow``: Airflow reads ``AIRFLOW_HOME`` and the
metadata database URL when it is first imported. :func:`configure` also re-points an Airflow
that some other test module imported earlier, so the order of test modules does not matter.

``ensure_db()`` runs ``airflow db migrate`` once per test session (a few seconds on SQLite);
every DAG test reuses that database.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
PLUGINS = REPO / "plugins"

_home: Path | None = None
_migrated = False


def _cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def home() -> Path:
    """The session's AIRFLOW_HOME (created on first use, removed at exit)."""
    global _home
    if _home is None:
        _home = Path(tempfile.mkdtemp(prefix="backupkit-airflow-"))
        atexit.register(_cleanup, _home)
    return _home


def db_url() -> str:
    return f"sqlite:///{home() / 'airflow.db'}"


def settings_env() -> dict[str, str]:
    """The environment that makes Airflow use the throwaway home and this repository.

    Deliberately minimal, because it is exported to the whole test process: subprocesses other
    tests start (``airflow standalone`` of the sandbox) inherit it and set their own home; the
    database URL is therefore not exported (it follows ``AIRFLOW_HOME``), only passed to
    ``airflow db migrate`` and set in-process when Airflow was imported too early.
    """
    return {
        "AIRFLOW_HOME": str(home()),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }


def configure() -> dict[str, str]:
    """Export :func:`settings_env` into ``os.environ`` (and re-point an already imported Airflow)."""
    env = settings_env()
    os.environ.update(env)
    if str(PLUGINS) not in sys.path:
        sys.path.insert(0, str(PLUGINS))
    if "airflow.settings" in sys.modules:
        from airflow import settings
        from airflow.configuration import conf

        if settings.SQL_ALCHEMY_CONN != db_url():
            conf.set("database", "sql_alchemy_conn", db_url())
            settings.configure_vars()
            settings.reconfigure_orm()
    return env


def ensure_db() -> Path:
    """``airflow db migrate`` into the throwaway home, once per process; returns the home."""
    global _migrated
    env = configure()
    if not _migrated:
        cli = Path(sys.executable).parent / "airflow"
        proc = subprocess.run([str(cli), "db", "migrate"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, **env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url()})
        if proc.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-3000:]}")
        _migrated = True
    return home()


configure()

__all__ = ["REPO", "DAGS", "PLUGINS", "home", "db_url", "settings_env", "configure", "ensure_db"]
