"""``backupctl retention``: what the retention policy keeps and deletes, and why.

``retention plan`` prints the plan for a configured source (its local backups, their
verification state and the hold list) or for a list of timestamps, so a team can try a
policy change on a list of dates before adopting it. It never touches a backup.
``retention sweep`` applies a source's policy (a dry run unless ``--apply``); ``retention
hold`` / ``release`` set and lift holds the sweeps see without asking S3 per object
(:mod:`backupkit.retention.holds`).

Sub-commands are registered from ``SUBCOMMANDS``; the helpers here (policy options,
candidates of a source, verification states, printing) are shared with the other
``retention`` sub-commands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from backupkit import clock
from backupkit.catalog import local_backups, s3_key_for
from backupkit.commands import EXIT_OK, EXIT_PROBLEM, UsageError
from backupkit.config import Config, RetentionPolicy, Source, load_config
from backupkit.retention.plan import Candidate, Plan, plan_retention
from backupkit.retention.policy import Duration, describe_policy, policy_is_empty, policy_zone

RULE_OPTIONS = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
_PERIOD = {"keep_hourly": "hour", "keep_daily": "day", "keep_weekly": "ISO week", "keep_monthly": "month",
           "keep_yearly": "year"}


# --- argument types -------------------------------------------------------------------


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _duration(text: str) -> str:
    try:
        Duration.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def _zone(text: str) -> str:
    try:
        policy_zone(RetentionPolicy(timezone=text))
    except Exception:
        raise argparse.ArgumentTypeError(f"unknown time zone {text!r}") from None
    return text


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


# --- shared helpers -------------------------------------------------------------------


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--keep-*`` rules and guard-rail overrides (restic's option names)."""
    rules = parser.add_argument_group("rules (given any, they replace the source's configured rules)")
    for option in RULE_OPTIONS:
        what = "the N newest backups" if option == "keep_last" else (
            f"the newest backup of each of the last N {_PERIOD[option]}s that have one")
        rules.add_argument(f"--{option.replace('_', '-')}", dest=option, type=_count, metavar="N", help=what)
    rules.add_argument("--keep-within", dest="keep_within", type=_duration, metavar="DURATION",
                       help="keep everything within this duration of the newest verified backup, e.g. 1y6m2d3h")
    rules.add_argument("--timezone", type=_zone, metavar="TZ", help="time zone of the periods (default: UTC or the source's)")
    guards = parser.add_argument_group("guard rails (default: the source's, else 0.5 and 1)")
    guards.add_argument("--max-delete-fraction", type=_fraction, metavar="F",
                        help="refuse when more than this share of the backups would be deleted")
    guards.add_argument("--min-keep", type=_count, metavar="N", help="refuse when fewer than N backups would remain")


def policy_from_args(args: argparse.Namespace, base: RetentionPolicy) -> RetentionPolicy:
    """``base`` with the command-line rules (all of them, if any is given) and overrides."""
    given = {name: getattr(args, name) for name in (*RULE_OPTIONS, "keep_within") if getattr(args, name) is not None}
    policy = base
    if given:
        cleared = {name: 0 for name in RULE_OPTIONS} | {"keep_within": None}
        policy = replace(base, **(cleared | given))
    for name in ("timezone", "max_delete_fraction", "min_keep"):
        if getattr(args, name) is not None:
            policy = replace(policy, **{name: getattr(args, name)})
    return policy


def verification_states(config: Config, source: Source, names: Iterable[str]) -> dict[str, str]:
    """``passed`` / ``failed`` / ``unverified`` per backup name, from the verification state store.

    Backups never read in full, and all of them when there is no state store yet, are
    ``unverified``: the plan then keeps them (see :mod:`backupkit.retention.plan`).
    The store is only read, never created, so planning stays side-effect free.
    """
    names = list(names)
    states = dict.fromkeys(names, "unverified")
    from backupkit.state import VerificationState

    if not config.state.verification_db.is_file():
        return states
    prefix = f"{source.name}/"
    with VerificationState(config.state_dir) as store:
        records = store.records(prefix)
    for name in names:
        record = records.get(prefix + name)
        if record is not None:
            states[name] = record.verdict
    return states


def held_reason(config: Config, source: Source, name: str) -> str | None:
    """Why a backup is on hold per the configured hold list (file name or S3 key), if it is."""
    if name in config.hold_list or s3_key_for(source, name) in config.hold_list:
        return "on the configured hold list"
    return None


def local_candidates(config: Config, source: Source) -> list[Candidate]:
    """The source's local backups as plan candidates (timestamps from their names)."""
    found = local_backups(source)
    states = verification_states(config, source, (b.name for b in found))
    return [Candidate(b.name, b.timestamp, states[b.name], b.size, held_reason(config, source, b.name))
            for b in found]


def read_timestamps(path: str) -> list[Candidate]:
    """One ISO-8601 timestamp per line (naive means UTC); blank lines and ``#`` comments skipped."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"--timestamps: cannot read {path}: {exc.strerror or exc}") from None
    where = "stdin" if path == "-" else path
    seen: dict[str, int] = {}
    candidates = []
    for lineno, line in enumerate(text.splitlines(), 1):
        value = line.strip()
        if not value or value.startswith("#"):
            continue
        try:
            ts = datetime.fromisoformat(value)
        except ValueError:
            raise UsageError(f"{where}: line {lineno}: not an ISO-8601 timestamp: {value!r}") from None
        if value in seen:
            raise UsageError(f"{where}: line {lineno}: {value!r} repeats line {seen[value]}")
        seen[value] = lineno
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        candidates.append(Candidate(value, ts, "passed"))
    return candidates


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def print_plan(plan: Plan, *, as_json: bool, show_names: bool, out=None) -> None:
    """The plan as a table (oldest first) or as a JSON list; timestamps in the policy's zone."""
    out = out or sys.stdout
    zone = policy_zone(plan.policy)
    if as_json:
        rows = [{"timestamp": d.timestamp.astimezone(zone).isoformat(), "name": d.name, "action": d.action,
                 "reasons": list(d.reasons), "verified": d.verified} for d in plan.decisions]
        json.dump(rows, out, indent=2)
        out.write("\n")
        return
    out.write(f"policy: {describe_policy(plan.policy)}\n")
    width = max((len(d.name) for d in plan.decisions), default=0)
    for d in plan.decisions:
        name = f"  {d.name:<{width}}" if show_names else ""
        out.write(f"{d.timestamp.astimezone(zone).isoformat()}  {d.action:<6}{name}  {', '.join(d.reasons)}\n")
    s = plan.summary
    out.write(f"{s.total} backups: keep {s.keep}, delete {s.delete}, held {s.held}"
              + (f", {_size(s.bytes_to_free)} to free" if s.bytes_to_free else "")
              + (f"; {s.not_verified} not verified" if s.not_verified else "") + "\n")


def report_violations(plan: Plan) -> int:
    """Print guard-rail violations to stderr; the exit code for the plan."""
    for v in plan.violations:
        print(f"refused: {v}", file=sys.stderr)
    return EXIT_PROBLEM if plan.refused else EXIT_OK


# --- retention plan -------------------------------------------------------------------


def register_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="print keep/delete/held and the reasons for every backup; touches nothing",
                       description=run_plan.__doc__)
    add_policy_arguments(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--source", metavar="NAME", help="a configured source: its local backups and policy")
    what.add_argument("--timestamps", metavar="FILE",
                      help="one ISO-8601 timestamp per line ('-' for stdin); each counts as verified")
    p.add_argument("--json", action="store_true", help="print a JSON list of {timestamp, name, action, reasons}")
    p.set_defaults(run=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    """Print the retention plan. Exit 0 when printed, 1 when guard rails refuse it, 2 on usage errors."""
    if args.source:
        config = load_config(args.config)
        source = config.source(args.source)
        policy = policy_from_args(args, source.retention)
        candidates = local_candidates(config, source)
    elif args.timestamps:
        policy = policy_from_args(args, RetentionPolicy())
        if policy_is_empty(policy):
            raise UsageError("retention plan: give at least one --keep-* rule")
        candidates = read_timestamps(args.timestamps)
    else:
        raise UsageError("retention plan: give --source NAME, or --timestamps FILE with at least one --keep-* rule")
    plan = plan_retention(candidates, policy)
    print_plan(plan, as_json=args.json, show_names=bool(args.source))
    return report_violations(plan)


# --- retention sweep ------------------------------------------------------------------


def register_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="apply the retention policy to a source's local and S3 backups "
                                     "(dry run unless --apply)", description=run_sweep.__doc__)
    p.add_argument("--source", required=True, metavar="NAME", help="the configured source to sweep")
    p.add_argument("--apply", action="store_true", help="delete; without it, a dry run that changes nothing")
    p.add_argument("--json", action="store_true", help="print the sweep report (and every decision) as JSON")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for another sweep of the source to finish (default 60)")
    p.set_defaults(run=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    """Sweep one source: print the plan and what was (or would be) deleted.

    Exit 0 done, 1 refused by a guard rail or something could not be done, 2 usage errors.
    """
    import os
    import tempfile
    import uuid

    from backupkit.commands.inventory import make_client
    from backupkit.retention.audit import AuditLog
    from backupkit.retention.sweep import SweepError, sweep_source
    from backupkit.state import VerificationState
    from backupkit.storage.objectstore import Bucket

    config = load_config(args.config)
    config.source(args.source)  # unknown source: usage error before touching S3
    client = make_client(args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL"))
    run_id = f"cli-{clock.now():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="backupctl-sweep-") as scratch:
        # A dry run must not create the state store; without one every backup is unverified.
        have_state = args.apply or config.state.verification_db.is_file()
        with VerificationState(config.state_dir if have_state else scratch) as state:
            try:
                report = sweep_source(config, args.source, bucket=Bucket(client, config.bucket), state=state,
                                      dry_run=not args.apply, lock_timeout=args.wait,
                                      run_id=run_id, audit=AuditLog(config.state_dir),
                                      triggered_by=_os_user())
            except SweepError as exc:
                report = exc.report
    if args.json:
        out = report.to_dict()
        out["decisions"] = [d.to_dict() for d in report.plan.decisions] if report.plan else []
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        if report.plan is not None:
            print_plan(report.plan, as_json=False, show_names=True)
        for h in report.held:
            print(f"held: {h['name']}: {h['reason']}")
        for lk in report.locks:
            print(f"{'would lock' if report.dry_run else 'locked'}: {lk['key']}: {lk['mode']} until {lk['until']}"
                  + (f" (was {lk['previous_mode']} until {lk['previous_until']})" if lk["previous_until"] else ""))
        if report.dry_run:
            print(f"dry run: would delete {len(report.would_delete)} backups ({_size(report.bytes_to_free)}); "
                  f"nothing was changed (use --apply to delete)")
        elif not report.refused:
            print(f"deleted {len(report.deleted)} backups, freed {_size(report.bytes_freed)}"
                  + (f"; finished {len(report.finished_pending)} interrupted deletions"
                     if report.finished_pending else "")
                  + (f"; audit: {report.audit_mirror or report.audit_log}" if report.deleted else ""))
    for v in report.violations:
        print(f"refused: {v}", file=sys.stderr)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for e in report.errors:
        where = e.get("key") or e.get("artifact") or args.source
        print(f"error: {where}: {e.get('code') + ': ' if e.get('code') else ''}{e['message']}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_PROBLEM


# --- retention hold / release -------------------------------------------------------------


def register_hold(sub: argparse._SubParsersAction) -> None:
    for name, helptext, func in (("hold", "hold backups: no sweep deletes them until released", run_hold),
                                 ("release", "release holds set with 'retention hold'", run_release)):
        p = sub.add_parser(name, help=helptext, description=func.__doc__)
        p.add_argument("--source", required=True, metavar="NAME", help="the configured source")
        p.add_argument("backups", nargs="+", metavar="BACKUP", help="backup file names")
        if name == "hold":
            p.add_argument("--reason", required=True, help="why (a case number, a ticket): shown in every sweep")
            p.add_argument("--legal-hold", action="store_true",
                           help="also put an S3 legal hold on the objects (object-lock bucket), so S3 itself "
                                "refuses to destroy them")
        p.add_argument("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
        p.set_defaults(run=func)


def _backup_keys(bucket, source: Source, name: str) -> list[str]:
    """The S3 keys of one backup: the object (every object of a directory dump) and its companions."""
    from backupkit.catalog import Catalog
    from backupkit.storage.localfs import MANIFEST_SUFFIX, SIDECAR_SUFFIX

    backup = next((b for b in Catalog(source, bucket).remote() if b.name == name), None)
    if backup is None:
        raise UsageError(f"{bucket.uri(s3_key_for(source, name))}: no such backup of {source.name} in S3")
    keys = [o.key for o in bucket.objects(backup.key + "/")] if backup.is_dir else [backup.key]
    return keys + ([backup.key + SIDECAR_SUFFIX] if backup.s3.sidecar else []) + \
        ([backup.key + MANIFEST_SUFFIX] if backup.s3.manifest else [])


def _hold_bucket(args: argparse.Namespace):
    import os

    from backupkit.commands.inventory import make_client
    from backupkit.storage.objectstore import Bucket

    config = load_config(args.config)
    source = config.source(args.source)
    return Bucket(make_client(args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")), config.bucket), source


def run_hold(args: argparse.Namespace) -> int:
    """Hold backups of a source: a hold record under holds/SOURCE/ (what sweeps read), the hold tag
    on each object and, with --legal-hold, an S3 legal hold. Exit 0 done, 2 usage errors."""
    import getpass

    from backupkit.retention.holds import set_hold

    bucket, source = _hold_bucket(args)
    for name in args.backups:
        key = set_hold(bucket, source.name, name, _backup_keys(bucket, source, name), reason=args.reason,
                       by=getpass.getuser(), legal_hold=args.legal_hold)
        print(f"held: {name}: {args.reason} ({bucket.uri(key)})")
    return EXIT_OK


def run_release(args: argparse.Namespace) -> int:
    """Release holds set with 'retention hold'. Exit 0 done, 1 a backup had no hold, 2 usage errors."""
    from backupkit.retention.holds import release_hold

    bucket, source = _hold_bucket(args)
    code = EXIT_OK
    for name in args.backups:
        if release_hold(bucket, source.name, name, _backup_keys(bucket, source, name)):
            print(f"released: {name}")
        else:
            print(f"{name}: no hold recorded", file=sys.stderr)
            code = EXIT_PROBLEM
    return code


# --- registration ---------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [register_plan, register_sweep, register_hold]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("retention", help="retention plans (what the policy keeps and why)",
                                   description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="retention_command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)


def _os_user() -> str:
    """The operating-system user running backupctl, for the audit records (``backupctl (alice)``)."""
    import getpass

    try:
        return f"backupctl ({getpass.getuser()})"
    except (KeyError, OSError):  # no passwd entry (containers with an arbitrary uid)
        return f"backupctl (uid {os.getuid()})"
