"""``backupctl``: the runbook's hand-run procedures as one command.

Exit codes: 0 all good, 1 a problem was found (one line per problem), 2 usage or
configuration error. Each sub-command lives in ``backupkit.commands.<name>`` and
registers itself through ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from backupkit.commands import EXIT_USAGE, UsageError
from backupkit.config import ConfigError
from backupkit.pgbin import PgBinaryNotFound

COMMANDS = ("verify", "inventory", "retention", "wal")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backupctl", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="configuration file (default: $BACKUPKIT_CONFIG or include/config/backups.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"backupkit.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"backupkit.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors already
        return int(exc.code or 0)
    try:
        return int(args.run(args) or 0)
    except (ConfigError, UsageError, PgBinaryNotFound) as exc:
        print(f"backupctl: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
