"""``python -m sandbox up|down|status|defect|heal|app settle`` (what the Makefile's targets run)."""

from __future__ import annotations

import argparse
import sys


def _defects(layout):
    from sandbox import stack
    from sandbox.defects import Defects

    config, client, _ = stack.running_sandbox(layout)
    return Defects(layout.root / "defects", config, client)


def main(argv: list[str] | None = None) -> int:
    from backupkit.config import ConfigError
    from sandbox import stack
    from sandbox.defects import DEFECTS, DefectError, describe

    parser = argparse.ArgumentParser(prog="python -m sandbox",
                                     description="The embedded sandbox: PostgreSQL, loopback S3, backup history, the "
                                                 "booking app, Airflow.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start everything (idempotent) and serve the Airflow UI")
    p_up.add_argument("--days", type=int, default=stack.HISTORY_DAYS,
                      help="nights of backup history to generate when there is none (default %(default)s)")
    p_up.add_argument("--timeout", type=float, default=stack.HEALTH_TIMEOUT,
                      help="seconds to wait for the Airflow API server (default %(default)s)")
    sub.add_parser("down", help="stop Airflow, the app, the S3 endpoint and PostgreSQL (data is kept)")
    sub.add_parser("status", help="what runs, on which ports")
    p_def = sub.add_parser("defect", help="switch on a realistic defect in the running sandbox (`--list`: which)")
    p_def.add_argument("name", nargs="?", choices=sorted(DEFECTS), metavar="NAME",
                       help="; ".join(f"{d.name}: {d.what}" for d in DEFECTS.values()))
    p_def.add_argument("--source", help="the source to damage (default: the defect's own)")
    p_def.add_argument("--list", action="store_true", help="the defects and which are active")
    sub.add_parser("heal", help="undo every active defect exactly")
    p_app = sub.add_parser("app", help="the booking application: `settle` after a rehearsed replace")
    p_app.add_argument("action", choices=["settle"])
    args = parser.parse_args(argv)
    layout = stack.Layout()
    try:
        if args.command == "up":
            return stack.up(layout, days=args.days, timeout=args.timeout)
        if args.command == "down":
            return stack.down(layout)
        if args.command == "status":
            return stack.status(layout)
        if args.command == "defect":
            defects = _defects(layout)
            if args.list or not args.name:
                print("defects (make defect NAME=... / python -m sandbox defect NAME; make heal undoes them all):")
                print("\n".join(describe(defects.active())))
                return 0
            record = defects.inject(args.name, args.source)
            print(f"defect {args.name} on: {record['what']} ({', '.join(record.get('backups', [])) or '-'}); "
                  "`make heal` undoes it")
            return 0
        if args.command == "heal":
            healed = _defects(layout).heal()
            print("healed: " + (", ".join(d["name"] for d in healed) if healed else "nothing was active"))
            return 0
        if args.command == "app":
            from sandbox.appctl import settle

            config, _, pg = stack.running_sandbox(layout)
            settle(config, pg, database=stack.DATABASE)
            return 0
    except (ConfigError, DefectError, RuntimeError, TimeoutError, OSError, ValueError) as exc:
        print(f"sandbox {args.command} failed: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
