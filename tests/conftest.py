"""Shared fixtures: a real PostgreSQL server with the booking database, real pg_dump
artifacts, and a real S3 API (moto server) on loopback. Nothing here is a mock."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))  # as Airflow does for plugins/
sys.path.insert(1, str(REPO))  # the development sandbox (top-level package `sandbox`)

# Airflow must never touch a real home or load examples while the tests run: point it at a
# throwaway AIRFLOW_HOME before any test module imports airflow.
import airflow_env  # noqa: E402,F401

from backupkit.pgserver import LocalPostgres  # noqa: E402
from sandbox.bookingdb import create_booking_db, pg_dump  # noqa: E402
from sandbox.s3server import MotoServer, create_production_bucket, reset  # noqa: E402

BUCKET = "trixtech-backups"


def pytest_configure(config):
    """A temporary directory of this session's own (unless ``--basetemp`` is given), the initdb
    template directory in it, and under ``faketime`` the wrapper's shared clock state opened to
    PostgreSQL's user (tests/_faketime.py).

    pytest's default keeps the newest three ``/tmp/pytest-of-USER/pytest-N`` and deletes the
    rest when a session starts: a second session running at the same time (another checkout,
    a benchmark) would delete this one's PostgreSQL data directories under it.
    """
    from _faketime import share_with_server_user

    share_with_server_user()
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        import tempfile

        config.option.basetemp = tempfile.mkdtemp(prefix="backupkit-tests-")
        config._backupkit_basetemp = config.option.basetemp
    if not hasattr(config, "workerinput"):
        # Servers without initdb arguments are copies of one initdb'ed cluster (backupkit.pgserver);
        # the workers inherit the variable.
        from backupkit.pgserver import INITDB_TEMPLATE_ENV

        os.environ.setdefault(INITDB_TEMPLATE_ENV, str(Path(config.option.basetemp).resolve() / "initdb-templates"))


def pytest_unconfigure(config):
    base = getattr(config, "_backupkit_basetemp", None)
    if base:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg(tmp_path_factory):
    """A running PostgreSQL 18 with the sample database ``trixtech`` (2000 users, 8000 bookings)."""
    server = LocalPostgres(tmp_path_factory.mktemp("pg") / "data")
    server.start()
    create_booking_db(server, "trixtech", scale=2000)
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def dumps(pg, tmp_path_factory):
    """Good dumps of ``trixtech`` in every format, made by the real pg_dump."""
    d = tmp_path_factory.mktemp("dumps")
    return {
        "custom": pg_dump(pg, "trixtech", d / "trixtech.dump", "custom"),
        "tar": pg_dump(pg, "trixtech", d / "trixtech.tar", "tar"),
        "directory": pg_dump(pg, "trixtech", d / "trixtech.dir", "directory"),
        "plain_gz": pg_dump(pg, "trixtech", d / "trixtech.sql.gz", "plain", gzip_plain=True),
        "plain": pg_dump(pg, "trixtech", d / "trixtech.sql", "plain", gzip_plain=False),
    }


@pytest.fixture(scope="session")
def moto_server():
    """The loopback S3 endpoint; its keys are the environment's AWS keys, as `.sandbox/env.sh` sets them,
    so code that builds its own client (backupctl) finds them through AWS's default chain."""
    from sandbox.s3server import REGION, SANDBOX_KEY, SANDBOX_SECRET

    server = MotoServer().start()
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", SANDBOX_KEY)
    mp.setenv("AWS_SECRET_ACCESS_KEY", SANDBOX_SECRET)
    mp.setenv("AWS_DEFAULT_REGION", REGION)
    yield server
    mp.undo()
    server.stop()


@pytest.fixture
def s3(moto_server):
    """A boto3 S3 client on a freshly reset loopback endpoint."""
    from sandbox.s3server import SANDBOX_KEY

    # Tests that run backupctl find the keys through AWS's default chain: say so here, at the cause,
    # when an earlier test or fixture removed them (delenv instead of MonkeyPatch.undo).
    assert os.environ.get("AWS_ACCESS_KEY_ID") == SANDBOX_KEY, \
        "the loopback S3 keys were removed from the environment by an earlier test or fixture"
    reset(moto_server.endpoint_url)
    return moto_server.client()


@pytest.fixture
def bucket(s3):
    """A production-like bucket: versioning, default encryption, object lock enabled."""
    create_production_bucket(s3, BUCKET)
    return BUCKET


@pytest.fixture(scope="session")
def wal_archives():
    """Real WAL archives (1 MB segments, a real PITR timeline 2, a second promotion): tests/_wal_archive.py."""
    from _wal_archive import build_wal_archives, wal_fixture_dir

    with wal_fixture_dir() as root:
        yield build_wal_archives(root)


@pytest.fixture(scope="session")
def wal_now(wal_archives):
    """The session archives' own "now" (when their last file was archived, on the tests' clock): their
    mtimes and commit times lie just before it, whenever in the session they were made."""
    return wal_archives.archived_at


@pytest.fixture(scope="session")
def now():
    """The session's one "now" (aware UTC): build histories and expectations from it."""
    from _clock import SESSION_NOW

    return SESSION_NOW
