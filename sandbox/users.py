"""The sandbox's named Airflow users (simple auth manager): an admin, an approver and a viewer.

Passwords are generated once and kept under ``.sandbox`` (``make down`` / ``make up`` keeps them):
``.sandbox/users.json`` for people and scripts (``{"admin": {"username", "password", "role"}, ...}``)
and ``.sandbox/airflow/passwords.json``, the file Airflow's simple auth manager reads
(``[core] simple_auth_manager_passwords_file``). Both are readable by the owner only.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

# Who the sandbox has: key -> (user name, simple auth manager role). The approver may trigger and answer
# Required Actions (role USER); the viewer only reads; the admin triggers (and may not approve its own
# replace: restore.four_eyes).
USERS = {"admin": ("admin", "ADMIN"), "approver": ("approver", "USER"), "viewer": ("viewer", "VIEWER")}
APPROVERS = "approver"  # restore.approvers.users of the sandbox (BACKUP_APPROVERS)


def users_file(root: Path) -> Path:
    return Path(root) / "users.json"


def passwords_file(root: Path) -> Path:
    return Path(root) / "airflow" / "passwords.json"


def ensure_users(root: Path) -> dict[str, dict[str, str]]:
    """The users with their passwords: the kept ones, a new password only for a user that has none."""
    path = users_file(root)
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    users: dict[str, dict[str, str]] = {}
    for key, (name, role) in USERS.items():
        old = known.get(key) if isinstance(known, dict) else None
        password = old.get("password") if isinstance(old, dict) and old.get("username") == name else None
        users[key] = {"username": name, "password": password or secrets.token_urlsafe(18), "role": role}
    if users != known:
        _write_private(path, users)
    _write_private(passwords_file(root), {u["username"]: u["password"] for u in users.values()})
    return users


def auth_env(root: Path) -> dict[str, str]:
    """Airflow's settings for these users (no more "every visitor is an admin")."""
    return {
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{n}:{r.lower()}" for n, r in USERS.values()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file(Path(root).resolve())),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "BACKUP_APPROVERS": APPROVERS,
    }


def banner_lines(users: dict[str, dict[str, str]]) -> str:
    return "\n".join(f"{'':15}{u['username']:<9} {u['password']}   ({u['role'].lower()})" for u in users.values())


def _write_private(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


__all__ = ["USERS", "APPROVERS", "ensure_users", "auth_env", "users_file", "passwords_file", "banner_lines"]
