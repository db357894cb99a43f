"""``python -m sandbox app settle``: close a rehearsed emergency restore in the sandbox.

After ``backup_restore`` in replace mode the booking app runs on ``trixtech_restored_<time>``
and the previous database is kept, as the runbook wants. Both are then databases without a
backup source, and the quarterly audit rightly fails on them (``coverage.databases_protected``).
In production a DBA decides what happens next; in the sandbox this command does what one
usually would: with the app scaled down, it renames the database the app uses to the
configured name (``trixtech``), drops the previous one and any other ``trixtech_restored_*``
left by rejected or rolled-back replaces, points the app back at ``trixtech`` and scales it
up again. The backups then protect what the app uses.
"""

from __future__ import annotations

from typing import Any

from backupkit.config import Config
from backupkit.pgserver import LocalPostgres
from backupkit.restore.local_platform import LocalAppPlatform
from backupkit.restore.scratch import check_identifier
from backupkit.restore.conninfo import point_setting_at, setting_database


def settle(config: Config, pg: LocalPostgres, *, database: str, say=print, timeout: float = 120) -> dict[str, Any]:
    app = config.restore.app
    platform = LocalAppPlatform(app)
    ns, deployments = app.namespace, list(app.deployments)
    settings = platform.read_settings(ns, deployments)
    in_use = {setting_database(v) for v in settings.values()}
    if len(in_use) != 1:
        raise RuntimeError(f"the deployments use different databases ({', '.join(map(str, sorted(in_use)))}): "
                           "settle them by hand")
    current = check_identifier(in_use.pop() or "")
    leftovers = [d for d in pg.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{database}\\_restored\\_%'")
                 .split() if d != current]
    if current == database and not leftovers:
        say(f"nothing to settle: the application uses {database!r} and no restored database is left")
        return {"renamed": None, "dropped": []}
    replicas = {d: platform.get_replicas(ns, d) for d in deployments}
    dropped: list[str] = []
    if current != database:
        for d in deployments:
            platform.scale(ns, d, 0)
        for d in deployments:
            platform.wait_for_replicas(ns, d, 0, timeout)
        pg.psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        dropped.append(database)
        pg.psql(f'ALTER DATABASE "{current}" RENAME TO "{database}"')
        for target, value in settings.items():
            platform.write_setting(ns, target, point_setting_at(value, current, database))
        for d in deployments:
            platform.scale(ns, d, replicas[d])
        for d in deployments:
            platform.wait_for_replicas(ns, d, replicas[d], timeout)
        say(f"the application's database {current!r} is now {database!r} (the previous {database!r} was dropped)")
    for db in leftovers:
        pg.psql(f'DROP DATABASE IF EXISTS "{check_identifier(db)}" WITH (FORCE)')
        dropped.append(db)
        say(f"dropped {db!r} (left by an earlier replace)")
    return {"renamed": current if current != database else None, "dropped": dropped}


__all__ = ["settle"]
