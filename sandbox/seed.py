"""Day one of the sandbox looks like a maintained system: what its maintenance would have left.

A fresh history is 400 nights of backups that no retention ever touched, with no restore test
and no DR drill recorded, so the quarterly audit fails on it for reasons no real system has.
``make up`` therefore, once, when it generates a history:

* **prunes** each source as its nightly retention sweep would have (the product's
  :func:`~backupkit.retention.plan.plan_retention` with every backup taken as verified), before
  anything is uploaded, so neither disk nor bucket holds what the policy dropped;
* **records** the last three monthly restore tests (first Mondays, 09:40 UTC) and the latest
  annual DR drill (``drill.date``) through the product's own writers
  (:func:`~backupkit.results.record_restore_tests`, ``record_dr_drill``), every record
  marked as sandbox history: run ids ``sandbox-seed-...`` and a detail saying that nothing
  was run. Real runs of the DAGs append after them.

What was seeded is written to ``<state_dir>/sandbox-seed.json``. Nothing is seeded into an
existing history (a restart), and nothing is ever seeded over a defect: the audit still fails
on a stale history, a missing night or a damaged backup.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

from backupkit.catalog import local_backups
from backupkit.storage.localfs import MANIFEST_SUFFIX, sidecar_path
from backupkit.config import DRILL_HOUR_UTC, Config
from backupkit.results import record_dr_drill, record_restore_tests
from backupkit.retention.plan import Candidate, plan_retention
from backupkit.storage.statedir import StateDir

SEED_FILE = "sandbox-seed.json"
SEED_DETAIL = "sandbox seed: recorded by `make up` so day one looks maintained; nothing was run"
DRILL_SCENARIOS = ("database_corruption", "datacenter_loss", "ransomware", "failed_deployment")


def prune_like_retention(config: Config, *, now: datetime) -> dict[str, int]:
    """Delete the local backups (with sidecars and manifests) the source's policy drops at ``now``."""
    removed: dict[str, int] = {}
    for src in config.sources:
        backups = local_backups(src)
        cands = [Candidate(b.name, b.timestamp, "passed", b.size) for b in backups]
        plan = plan_retention(cands, src.retention, now=now)
        drop = {d.name for d in plan.planned_deletions()}
        for b in backups:
            if b.name in drop:
                for p in (b.path, sidecar_path(b.path), b.path.with_name(b.path.name + MANIFEST_SUFFIX)):
                    if p.is_dir():
                        shutil.rmtree(p)
                    elif p.exists():
                        p.unlink()
        removed[src.name] = len(drop)
    return removed


def first_mondays(now: datetime, count: int) -> list[datetime]:
    """The ``count`` most recent first-Monday 09:40 UTC instants not after ``now``, oldest first."""
    out: list[datetime] = []
    year, month = now.year, now.month
    while len(out) < count:
        day = datetime(year, month, 1, 9, 40, tzinfo=timezone.utc)
        day += timedelta(days=(0 - day.weekday()) % 7)
        if day <= now:
            out.append(day)
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return sorted(out)


def last_drill(config: Config, now: datetime) -> datetime:
    month, day = config.drill.month_day
    for year in (now.year, now.year - 1):
        when = datetime(year, month, day, DRILL_HOUR_UTC, 50, tzinfo=timezone.utc)
        if when <= now:
            return when
    raise ValueError("no drill date within a year")  # unreachable: 29 February is refused by the config


def seed_records(config: Config, *, now: datetime) -> dict:
    """Restore tests and a DR drill, as sandbox history (module docstring); none over existing files."""
    state = config.state_dir
    seeded: dict = {"restore_tests": [], "dr_drill": None}
    if not StateDir(state).restore_tests.exists():
        for when in first_mondays(now, 3):
            run_id = f"sandbox-seed-restore-test-{when:%Y-%m-%d}"
            night = when.replace(hour=2, minute=0)
            results = [{"source": s.name, "ok": True, "role": "newest", "backup": s.pattern.name_for(night),
                        "duration_seconds": 40.0, "detail": SEED_DETAIL} for s in config.sources]
            record_restore_tests(state, results, run_id=run_id, now=when)
            seeded["restore_tests"].append(run_id)
    if not StateDir(state).dr_drills.exists():
        when = last_drill(config, now)
        rto, rpo = config.drill.rto_target_minutes * 60, config.drill.rpo_target_hours * 3600
        scenarios = [{"name": n, "ok": True, "rto_seconds": round(rto / 4), "rto_target_seconds": rto,
                      "rpo_seconds": 7 * 3600 + 50 * 60, "rpo_target_seconds": rpo, "sandbox": True}
                     for n in DRILL_SCENARIOS]
        run_id = f"sandbox-seed-dr-drill-{when:%Y}"
        record_dr_drill(state, ok=True, scenarios=scenarios, run_id=run_id, now=when, detail=SEED_DETAIL)
        seeded["dr_drill"] = run_id
    return seeded


def seed(config: Config, *, now: datetime, say=print) -> dict:
    """Prune and record (module docstring); returns and saves what was done."""
    pruned = prune_like_retention(config, now=now)
    records = seed_records(config, now=now)
    report = {"sandbox": True, "seeded_at": now.isoformat(), "pruned_by_policy": pruned, **records}
    path = Path(config.state_dir) / SEED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    say(f"  as nightly retention would have: {sum(pruned.values())} backup(s) older than the policies not kept "
        f"({', '.join(f'{k} {v}' for k, v in pruned.items())})")
    say(f"  sandbox history recorded: {len(records['restore_tests'])} monthly restore test(s)"
        + (f", DR drill {records['dr_drill']}" if records["dr_drill"] else "") + f" (see {path})")
    return report


__all__ = ["seed", "prune_like_retention", "seed_records", "first_mondays", "last_drill", "SEED_DETAIL"]
