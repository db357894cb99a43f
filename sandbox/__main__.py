"""``python -m sandbox up|down|status`` (what ``make up``, ``make down`` and ``make status`` run)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from backupkit.config import ConfigError
    from sandbox import stack

    parser = argparse.ArgumentParser(prog="python -m sandbox",
                                     description="The embedded sandbox: PostgreSQL, loopback S3, backup history, Airflow.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start everything (idempotent) and serve the Airflow UI")
    p_up.add_argument("--days", type=int, default=stack.HISTORY_DAYS,
                      help="nights of backup history to generate when there is none (default %(default)s)")
    p_up.add_argument("--timeout", type=float, default=stack.HEALTH_TIMEOUT,
                      help="seconds to wait for the Airflow API server (default %(default)s)")
    sub.add_parser("down", help="stop Airflow, the S3 endpoint and PostgreSQL (data is kept)")
    sub.add_parser("status", help="what runs, on which ports")
    args = parser.parse_args(argv)
    layout = stack.Layout()
    try:
        if args.command == "up":
            return stack.up(layout, days=args.days, timeout=args.timeout)
        if args.command == "down":
            return stack.down(layout)
        return stack.status(layout)
    except (ConfigError, RuntimeError, TimeoutError, OSError) as exc:
        print(f"sandbox {args.command} failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
