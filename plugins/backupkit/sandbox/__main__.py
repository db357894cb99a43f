"""``python -m backupkit.sandbox up|down|status`` (what ``make up``, ``make down`` and ``make status`` run).

Airflow's plugin loader executes every ``.py`` file under ``plugins/`` as a top-level
module named after the file, so this file also runs there under the name ``__main__``,
with Airflow's own command line in ``sys.argv``. The command therefore runs only when
started as ``python -m backupkit.sandbox`` (package ``backupkit.sandbox``), never on a
plain ``__name__ == "__main__"``, which would parse ``airflow scheduler`` and exit.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from backupkit.config import ConfigError
    from backupkit.sandbox import stack

    parser = argparse.ArgumentParser(prog="python -m backupkit.sandbox",
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


if __name__ == "__main__" and __package__ == "backupkit.sandbox":
    sys.exit(main())
